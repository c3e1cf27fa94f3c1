"""The JL projector (Alg. 1) against its materialised matrix: seed consistency, batch-split and block-size invariance."""

import math

import pytest
import torch

from gradtag.projection import Projector

NUM_PARAMS, PROJECT_DIM = 3000, 40


def make(seed=0, kind="gaussian", block_rows=700, chunk_rows=256, **kwargs):
    return Projector(NUM_PARAMS, PROJECT_DIM, seed, kind=kind, block_rows=block_rows, chunk_rows=chunk_rows, **kwargs)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_same_seed_same_matrix_across_instances_and_block_sizes(kind):
    reference = make(kind=kind).matrix()
    assert reference.shape == (NUM_PARAMS, PROJECT_DIM) and reference.dtype == torch.float32
    assert torch.equal(make(kind=kind).matrix(), reference)
    for block_rows in (1, 256, 1000, 5000):
        assert torch.equal(make(kind=kind, block_rows=block_rows).matrix(), reference)
    assert torch.equal(make(kind=kind, cache_bytes=0).matrix(), reference)


def test_different_seeds_and_kinds_differ():
    assert not torch.allclose(make(seed=0).matrix(), make(seed=1).matrix())
    assert not torch.allclose(make(kind="gaussian").matrix(), make(kind="rademacher").matrix())


def test_prefix_property():
    small = Projector(1000, PROJECT_DIM, 3, chunk_rows=256).matrix()
    large = Projector(5000, PROJECT_DIM, 3, chunk_rows=256).matrix()
    assert torch.equal(large[:1000], small)


def test_rademacher_entries():
    values = make(kind="rademacher").matrix()
    scale = torch.tensor(1 / math.sqrt(PROJECT_DIM), dtype=torch.float32)
    assert torch.all((values == scale) | (values == -scale))
    assert abs((values > 0).float().mean().item() - 0.5) < 0.02


def test_gaussian_moments():
    values = make().matrix().double()
    assert abs(values.mean().item()) < 0.01
    assert values.var().item() == pytest.approx(1 / PROJECT_DIM, rel=0.03)


def test_project_matches_matrix_and_batch_splits():
    projector = make()
    matrix = projector.matrix().double()
    grads = torch.randn(10, NUM_PARAMS, dtype=torch.float64)
    full = projector.project(grads)
    assert full.shape == (10, PROJECT_DIM) and full.dtype == torch.float64
    torch.testing.assert_close(full, grads @ matrix)
    split = torch.cat([projector.project(grads[:3]), projector.project(grads[3:4]), projector.project(grads[4:])])
    torch.testing.assert_close(split, full)
    fresh = make(block_rows=123).project(grads)
    torch.testing.assert_close(fresh, full)


def test_project_accepts_per_parameter_list():
    projector = make()
    shapes = [(50, 40), (50,), (7, 13, 10), (NUM_PARAMS - 2000 - 50 - 910,)]
    parts = [torch.randn(5, *shape, dtype=torch.float64) for shape in shapes]
    flat = torch.cat([part.reshape(5, -1) for part in parts], dim=1)
    torch.testing.assert_close(projector.project(parts), projector.project(flat))
    with pytest.raises(ValueError, match="num_params"):
        projector.project(parts[:2])


def test_expand_matches_matrix():
    projector = make()
    matrix = projector.matrix().double()
    w = torch.randn(PROJECT_DIM, dtype=torch.float64)
    torch.testing.assert_close(projector.expand(w), matrix @ w)
    w2 = torch.randn(PROJECT_DIM, 3, dtype=torch.float64)
    torch.testing.assert_close(projector.expand(w2), matrix @ w2)


def test_spec_round_trip():
    projector = make(seed=7, kind="rademacher")
    spec = projector.spec()
    assert set(spec) >= {"kind", "project_dim", "seed", "num_params", "block_rows", "chunk_rows", "dtype"}
    assert torch.equal(Projector.from_spec(spec).matrix(), projector.matrix())
    with pytest.raises(ValueError, match="scheme"):
        Projector.from_spec({**spec, "scheme": "other"})


def test_cache_respects_budget():
    projector = make(block_rows=1000, cache_bytes=1000 * PROJECT_DIM * 4)
    projector.matrix()
    assert sum(len(blocks) for blocks in projector._cache.values()) == 1


@pytest.mark.parametrize("bad", [dict(kind="sparse"), dict(seed=-1), dict(block_rows=0)])
def test_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        make(**bad)

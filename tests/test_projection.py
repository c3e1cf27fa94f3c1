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


# ---------------------------------------------------------------------------------------------------- structured
SHAPES = [(40, 30), (40,), (6, 40), (6,)]


def test_kronecker_products_match_its_matrix_and_the_spec_rebuilds_it():
    from gradtag.projection import KroneckerProjector, projector_from_spec

    projector = KroneckerProjector(SHAPES, PROJECT_DIM, seed=2, rank=6)
    matrix = projector.matrix(dtype=torch.float64)
    assert matrix.shape == (projector.num_params, PROJECT_DIM)
    grads = [torch.randn(7, *shape, dtype=torch.float64) for shape in SHAPES]
    flat = torch.cat([g.flatten(1) for g in grads], dim=1)
    torch.testing.assert_close(projector.project(grads), flat @ matrix)
    torch.testing.assert_close(projector.project(flat), flat @ matrix)
    w = torch.randn(PROJECT_DIM, 3, dtype=torch.float64)
    torch.testing.assert_close(projector.expand(w), matrix @ w)
    torch.testing.assert_close(projector.expand(w[:, 0]), matrix @ w[:, 0])
    rebuilt = projector_from_spec(projector.spec())
    assert torch.equal(rebuilt.matrix(), projector.matrix())
    assert not torch.equal(KroneckerProjector(SHAPES, PROJECT_DIM, seed=3, rank=6).matrix(), projector.matrix())
    # a side no wider than the rank is kept whole: the (6, 40) layer keeps its 6 outputs
    assert projector.sketch_sizes == [36, 40, 36, 6]


@pytest.mark.parametrize("structured", [False, True])
def test_factored_projection_equals_projecting_the_outer_products(structured):
    """project_layers((a, δ)) = Pᵀ vec(δ aᵀ): the per-node factoring is exact with the same P."""
    from gradtag.projection import KroneckerProjector

    if structured:
        projector = KroneckerProjector(SHAPES, PROJECT_DIM, seed=0, rank=5)
    else:
        projector = Projector(sum(math.prod(shape) for shape in SHAPES), PROJECT_DIM, 0, block_rows=333, chunk_rows=64)
    matrix = projector.matrix(dtype=torch.float64)
    inputs = [torch.randn(4, 30, dtype=torch.float64), torch.randn(4, 40, dtype=torch.float64)]
    errors = [torch.randn(4, 3, 40, dtype=torch.float64), torch.randn(4, 3, 6, dtype=torch.float64)]
    parts = [(inputs[0], errors[0]), errors[0], (inputs[1], errors[1]), errors[1]]
    outer = [errors[0].unsqueeze(-1) * inputs[0][:, None, None, :], errors[0]]
    outer += [errors[1].unsqueeze(-1) * inputs[1][:, None, None, :], errors[1]]
    flat = torch.cat([g.flatten(2) for g in outer], dim=2)  # (b, K, p)
    torch.testing.assert_close(projector.project_layers(parts), flat @ matrix)
    torch.testing.assert_close(projector.project_layers(outer), flat @ matrix)


def test_kronecker_preserves_norms_on_average():
    from gradtag.projection import KroneckerProjector

    projector = KroneckerProjector([(64, 96)], 200, seed=0, rank=16)
    grads = torch.randn(200, 64, 96, dtype=torch.float64)
    ratio = projector.project([grads]).norm(dim=1) / grads.flatten(1).norm(dim=1)
    assert abs(float((ratio**2).mean()) - 1) < 0.05 and float(ratio.std()) < 0.15

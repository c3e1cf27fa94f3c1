"""Per-sample output gradients and their projections against torch.autograd on a tiny SIGN (Sec. 3.1, Alg. 1)."""

import numpy as np
import pytest
import torch

from gradtag.gradients import (
    GRADIENT_METHODS,
    collect_projected_gradients,
    flat_params,
    group_pairs_by_node,
    jacobian_products,
    num_trainable_params,
    output_gradients,
    output_gradients_multi,
    set_flat_params,
    taylor_logits,
)
from gradtag.projection import KroneckerProjector, Projector
from models import build_model

IN_DIM, NUM_HOPS, NUM_TASKS, NUM_NODES, PROJECT_DIM = 8, 3, 6, 20, 16


def tiny_sign(batch_norm: bool, dtype=torch.float64, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("sign", IN_DIM, NUM_HOPS, NUM_TASKS, hop_width=8, head_width=4, dropout=0.3, batch_norm=batch_norm)
    model = model.to(dtype)
    if batch_norm:
        # Give the running statistics non-trivial values, so eval mode differs from the identity normalisation.
        with torch.no_grad():
            model.train()
            for _ in range(3):
                model(torch.randn(32, NUM_HOPS + 1, IN_DIM, dtype=dtype) * 2 + 1)
    model.train()  # the functions under test must switch to eval mode themselves
    return model


def node_features(dtype=torch.float64) -> torch.Tensor:
    return torch.randn(NUM_NODES, NUM_HOPS + 1, IN_DIM, generator=torch.Generator().manual_seed(1), dtype=dtype)


def reference_gradient(model, x_one, task) -> torch.Tensor:
    """∇θ logit_task(x_one) by plain autograd in eval mode, flattened in named_parameters order, (p,)."""
    model.eval()
    params = [param for param in model.parameters() if param.requires_grad]
    logit = model(x_one.unsqueeze(0))[0, task]
    grads = torch.autograd.grad(logit, params)
    model.train()
    return torch.cat([g.reshape(-1) for g in grads])


def pairs_fixture():
    """Pairs in scrambled order; nodes with 1 to 4 tasks, one duplicated pair, some nodes absent."""
    nodes = np.array([5, 2, 5, 9, 2, 5, 11, 0, 9, 5, 2, 17, 5])
    tasks = np.array([0, 3, 1, 5, 4, 2, 0, 1, 5, 3, 0, 2, 1])
    return nodes, tasks


def test_group_pairs_by_node_covers_every_pair_once():
    rng = np.random.default_rng(0)
    nodes = rng.integers(0, 30, 200)
    batches = group_pairs_by_node(nodes, batch_size=4)
    seen = np.concatenate([positions.reshape(-1) for _, positions in batches])
    assert np.array_equal(np.sort(seen), np.arange(len(nodes)))
    for node_ids, positions in batches:
        assert positions.shape[0] == len(node_ids) <= 4
        assert np.array_equal(nodes[positions], np.repeat(node_ids[:, None], positions.shape[1], axis=1))
        assert np.all(np.diff(positions, axis=1) > 0), "a node's pairs keep their input order"
    assert sum(len(node_ids) for node_ids, _ in batches) == len(np.unique(nodes))


@pytest.mark.parametrize("batch_norm", [False, True])
def test_output_gradients_match_autograd(batch_norm):
    model = tiny_sign(batch_norm)
    x = node_features()
    nodes, tasks = pairs_fixture()
    grads = output_gradients(model, x[nodes], torch.as_tensor(tasks))
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    assert len(grads) == len(names)
    for g, (name, param) in zip(grads, model.named_parameters(), strict=True):
        assert g.shape == (len(nodes), *param.shape), name
    flat = torch.cat([g.reshape(len(nodes), -1) for g in grads], dim=1)
    for i, (node, task) in enumerate(zip(nodes, tasks, strict=True)):
        torch.testing.assert_close(flat[i], reference_gradient(model, x[node], task))
    assert model.training, "the model's training flag must be restored"


@pytest.mark.parametrize("batch_norm", [False, True])
def test_shared_forward_matches_single(batch_norm):
    model = tiny_sign(batch_norm)
    x = node_features()[:4]
    tasks = torch.tensor([[0, 3, 5], [1, 1, 1], [2, 4, 0], [5, 0, 3]])
    grads, logits = output_gradients_multi(model, x, tasks)
    assert logits.shape == (4, NUM_TASKS)
    model.eval()
    torch.testing.assert_close(logits, model(x))
    for k in range(tasks.shape[1]):
        single = output_gradients(model, x, tasks[:, k])
        for multi_g, single_g in zip(grads, single, strict=True):
            torch.testing.assert_close(multi_g[:, k], single_g)


def test_frozen_parameters_are_skipped():
    model = tiny_sign(batch_norm=True)
    model.hops[0][0].weight.requires_grad_(False)
    x = node_features()[:3]
    grads = output_gradients(model, x, torch.tensor([0, 1, 2]))
    assert sum(g[0].numel() for g in grads) == num_trainable_params(model) == flat_params(model).numel()
    flat = torch.cat([g.reshape(3, -1) for g in grads], dim=1)
    torch.testing.assert_close(flat[1], reference_gradient(model, x[1], 1))


@pytest.mark.parametrize("kind", ["gaussian", "kronecker"])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("batch_norm", [False, True])
def test_collect_projected_gradients_matches_reference(batch_norm, method, kind):
    """Every gradient method, with the dense and the structured projector, equals Pᵀ · (autograd gradient)."""
    model = tiny_sign(batch_norm)
    x = node_features()
    nodes, tasks = pairs_fixture()
    if kind == "kronecker":
        projector = KroneckerProjector([p.shape for p in model.parameters()], PROJECT_DIM, seed=3, rank=3)
    else:
        projector = Projector(num_trainable_params(model), PROJECT_DIM, seed=3, block_rows=50, chunk_rows=32)
    matrix = projector.matrix(dtype=torch.float64)
    projected, logits = collect_projected_gradients(
        model, x, (nodes, tasks), projector, batch_size=2, progress=False, method=method
    )
    assert projected.shape == (len(nodes), PROJECT_DIM) and projected.dtype == np.float32
    assert logits.shape == (len(nodes),) and logits.dtype == np.float32
    model.eval()
    with torch.no_grad():
        all_logits = model(x)
    for i, (node, task) in enumerate(zip(nodes, tasks, strict=True)):
        expected = reference_gradient(model, x[node], task) @ matrix
        np.testing.assert_allclose(projected[i], expected.numpy(), rtol=1e-5, atol=1e-6)
        assert logits[i] == pytest.approx(all_logits[node, task].item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("method", ["factored", "shared"])
def test_paths_agree_in_float32(method):
    model = tiny_sign(batch_norm=True, dtype=torch.float32)
    x = node_features(torch.float32)
    rng = np.random.default_rng(0)
    nodes, tasks = rng.integers(0, NUM_NODES, 60), rng.integers(0, NUM_TASKS, 60)
    projector = Projector(num_trainable_params(model), PROJECT_DIM, seed=0)
    fast = collect_projected_gradients(model, x, (nodes, tasks), projector, batch_size=5, progress=False, method=method)
    simple = collect_projected_gradients(model, x, (nodes, tasks), projector, batch_size=7, progress=False, method="per_pair")
    np.testing.assert_allclose(fast[0], simple[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fast[1], simple[1], rtol=1e-5, atol=1e-6)


def test_factored_gradients_skip_frozen_parameters_and_refuse_unsupported_layers():
    model = tiny_sign(batch_norm=True)
    model.hops[0][0].weight.requires_grad_(False)
    x = node_features()
    nodes, tasks = pairs_fixture()
    projector = Projector(num_trainable_params(model), PROJECT_DIM, seed=1)
    factored = collect_projected_gradients(model, x, (nodes, tasks), projector, progress=False, method="factored")
    reference = collect_projected_gradients(model, x, (nodes, tasks), projector, progress=False, method="per_pair")
    np.testing.assert_allclose(factored[0], reference[0], rtol=1e-5, atol=1e-6)
    model.hops[0].append(torch.nn.LayerNorm(model.hops[0][0].out_features, dtype=torch.float64))
    projector = Projector(num_trainable_params(model), PROJECT_DIM, seed=1)
    with pytest.raises(ValueError, match="LayerNorm"):
        collect_projected_gradients(model, x, (nodes, tasks), projector, progress=False, method="factored")


def test_flat_params_round_trip():
    model = tiny_sign(batch_norm=True)
    theta = flat_params(model)
    assert theta.shape == (num_trainable_params(model),)
    set_flat_params(model, theta + 1)
    torch.testing.assert_close(flat_params(model), theta + 1)
    offset = 0
    for param in model.parameters():
        torch.testing.assert_close(param.detach().reshape(-1), theta[offset : offset + param.numel()] + 1)
        offset += param.numel()
    with pytest.raises(ValueError, match="entries"):
        set_flat_params(model, theta[:-1])


def test_first_order_expansion_in_projected_space():
    """logit(x; θ* + P w) = logit(x; θ*) + gᵀ w + O(‖w‖²) with g = Pᵀ ∇θ logit (Eq. 3 in projected form)."""
    model = tiny_sign(batch_norm=True)
    x = node_features()
    nodes, tasks = pairs_fixture()
    projector = Projector(num_trainable_params(model), PROJECT_DIM, seed=5)
    projected, base = collect_projected_gradients(model, x, (nodes, tasks), projector, progress=False)
    theta = flat_params(model)
    w = torch.randn(PROJECT_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w = w / w.norm()
    errors = []
    for step in (1e-2, 5e-3):
        set_flat_params(model, theta + projector.expand(step * w))
        model.eval()
        with torch.no_grad():
            moved = model(x)[torch.as_tensor(nodes), torch.as_tensor(tasks)].numpy()
        linear = base + step * projected.astype(np.float64) @ w.numpy()
        errors.append(np.abs(moved - linear).max())
        assert np.abs(moved - base).max() > 10 * errors[-1]
    set_flat_params(model, theta)
    # Halving the step divides a second-order remainder by about four (float32 logits limit the floor).
    assert errors[1] < errors[0] / 2.5


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batch-norm"])
def test_taylor_logits_match_autograd_hessian(batch_norm):
    # f, ∇f·Δ and Δᵀ∇²fΔ of every logit against an explicit autograd Hessian per logit (float64, eval mode)
    model = tiny_sign(batch_norm)
    x = node_features()[:5]
    base = flat_params(model)
    delta = torch.randn(base.numel(), generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.01
    value, slope, curvature = taylor_logits(model, base, delta, x, batch_size=2)
    assert value.shape == slope.shape == curvature.shape == (5, NUM_TASKS)

    model.eval()
    shapes = [param.shape for param in model.parameters()]

    def logits_at(vector):
        pieces, offset = {}, 0
        for (name, _), shape in zip(model.named_parameters(), shapes, strict=True):
            pieces[name] = vector[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        return torch.func.functional_call(model, pieces, (x,))

    jacobian = torch.autograd.functional.jacobian(logits_at, base)  # (5, T, p)
    torch.testing.assert_close(value, logits_at(base))
    torch.testing.assert_close(slope, jacobian @ delta)
    for sample, task in [(0, 0), (2, 3), (4, NUM_TASKS - 1)]:
        hessian = torch.autograd.functional.hessian(lambda v, s=sample, t=task: logits_at(v)[s, t], base)
        assert float(hessian.abs().max()) > 0  # products of weights across layers: a real second-order term
        torch.testing.assert_close(curvature[sample, task], delta @ hessian @ delta)
    # the second-order expansion is closer to the network at θ + Δ than the first-order one, for a small Δ (median:
    # a sample whose ReLU switches between θ and θ + Δ is beyond any expansion)
    small = delta / 10
    value, slope, curvature = taylor_logits(model, base, small, x)
    exact = logits_at(base + small)
    first, second = value + slope, value + slope + 0.5 * curvature
    assert (exact - second).abs().median() < 0.1 * (exact - first).abs().median()


def test_jacobian_products_are_the_slopes_along_each_direction():
    model = tiny_sign(batch_norm=True)
    x = node_features()
    base = flat_params(model)
    directions = torch.randn(3, base.numel(), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    products = jacobian_products(model, x, directions, batch_size=7)
    assert products.shape == (NUM_NODES, NUM_TASKS, 3)
    for k in range(3):
        torch.testing.assert_close(products[:, :, k], taylor_logits(model, base, directions[k], x)[1])
    torch.testing.assert_close(jacobian_products(model, x, directions, output=2), products[:, 2, :])

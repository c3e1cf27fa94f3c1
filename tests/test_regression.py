"""The batched subset regressions against references: sklearn, scipy L-BFGS, autograd and a hand-made Newton step."""

import numpy as np
import pytest
import torch

from gradtag.artifacts import UsageError
from gradtag.regression import (
    fit_subset_scipy,
    fit_subsets,
    fit_subsets_sklearn,
    linearized_logits,
    linearized_scores,
    mean_bce,
    prepare_tasks,
    task_statistics,
)
from gradtag.training import binary_f1

SUBSETS = [(0, 1), (2, 3, 4), (5,), (0, 2, 4, 5), (1, 3, 5, 0, 2)]
L2 = 0.05


def make_tasks(seed=0, n=6, d=12, zero_offsets=False):
    rng = np.random.default_rng(seed)
    G = [rng.normal(size=(int(rng.integers(40, 120)), d)).astype(np.float32) for _ in range(n)]
    offsets = [np.zeros(len(g)) if zero_offsets else rng.normal(-1.0, 1.0, size=len(g)) for g in G]
    labels = [(rng.random(len(g)) < 0.3).astype(np.float32) for g in G]
    return G, offsets, labels


def objective(data, subset, w):
    """L_S(w) written out plainly: the mean over tasks of each task's mean BCE, plus (λ/2)‖w‖²."""
    losses = [mean_bce(data.offsets[j] + data.gradients[j] @ w, data.labels[j]) for j in subset]
    return torch.stack(losses).mean() + 0.5 * L2 * w @ w


def test_task_statistics_match_autograd():
    data = prepare_tasks(*make_tasks())
    w0 = torch.zeros(data.project_dim, dtype=torch.float64)
    for j in range(data.n_tasks):

        def task_loss(w, j=j):
            return mean_bce(data.offsets[j] + data.gradients[j] @ w, data.labels[j])

        torch.testing.assert_close(data.grad[j], torch.func.grad(task_loss)(w0))
        torch.testing.assert_close(data.hess[j], torch.autograd.functional.hessian(task_loss, w0))
    grad, hess = task_statistics(*make_tasks())
    assert grad.dtype == torch.float64 and hess.shape == (6, 12, 12)


@pytest.mark.parametrize("solver", ["newton", "newton-cg"])
def test_newton_matches_sklearn_with_zero_offsets(solver):
    data = prepare_tasks(*make_tasks(zero_offsets=True))
    fit = fit_subsets(data, SUBSETS, L2, solver=solver)
    assert fit.converged.all()
    np.testing.assert_allclose(fit.weights.numpy(), fit_subsets_sklearn(data, SUBSETS, L2), atol=1e-5)


@pytest.mark.parametrize("solver", ["newton", "newton-cg"])
def test_newton_matches_scipy_with_offsets(solver):
    data = prepare_tasks(*make_tasks(seed=1))
    fit = fit_subsets(data, SUBSETS, L2, solver=solver)
    assert fit.converged.all() and (fit.n_iter >= 1).all()
    for row, subset in enumerate(SUBSETS):
        np.testing.assert_allclose(fit.weights[row].numpy(), fit_subset_scipy(data, subset, L2), atol=1e-5)
        gradient = torch.func.grad(lambda w, s=subset: objective(data, s, w))(fit.weights[row])
        assert gradient.abs().max() < 1e-8
        torch.testing.assert_close(fit.loss[row], objective(data, subset, fit.weights[row]))


def test_onestep_is_one_newton_step_by_hand():
    G, offsets, labels = make_tasks(seed=2)
    data = prepare_tasks(G, offsets, labels)
    fit = fit_subsets(data, SUBSETS, L2, solver="onestep")
    for row, subset in enumerate(SUBSETS):
        g, H = np.zeros(12), L2 * np.eye(12)
        for j in subset:
            X, p = G[j].astype(np.float64), 1 / (1 + np.exp(-offsets[j]))
            g += X.T @ (p - labels[j]) / len(X) / len(subset)
            H += X.T @ (X * (p * (1 - p))[:, None]) / len(X) / len(subset)
        np.testing.assert_allclose(fit.weights[row].numpy(), -np.linalg.solve(H, g), rtol=1e-10, atol=1e-12)
    assert (fit.n_iter == 1).all()


@pytest.mark.parametrize("solver", ["newton", "newton-cg", "onestep"])
def test_batch_size_does_not_change_results(solver):
    data = prepare_tasks(*make_tasks(seed=3))
    reference = fit_subsets(data, SUBSETS, L2, solver=solver, batch_size=len(SUBSETS)).weights
    for batch_size in (1, 2, 3):
        torch.testing.assert_close(fit_subsets(data, SUBSETS, L2, solver=solver, batch_size=batch_size).weights, reference)


def test_linearized_logits_is_the_direct_formula():
    rng = np.random.default_rng(4)
    G_val, offsets_val, W = rng.normal(size=(30, 8)), rng.normal(size=30), rng.normal(size=(3, 8))
    np.testing.assert_allclose(linearized_logits(G_val, offsets_val, W[0]).numpy(), offsets_val + G_val @ W[0])
    np.testing.assert_allclose(linearized_logits(G_val, offsets_val, W).numpy(), offsets_val[None] + W @ G_val.T)


def test_bad_input_is_a_usage_error():
    data = prepare_tasks(*make_tasks())
    with pytest.raises(UsageError):
        fit_subsets(data, [(0, 9)], L2)
    with pytest.raises(UsageError):
        fit_subsets(data, [(1, 1)], L2)
    with pytest.raises(UsageError):
        fit_subsets(data, [(0,)], L2, solver="lbfgs")
    with pytest.raises(UsageError):
        fit_subsets_sklearn(data, [(0,)], L2)
    G, offsets, labels = make_tasks()
    labels[0][0] = 2
    with pytest.raises(UsageError):
        prepare_tasks(G, offsets, labels)


def test_linearized_scores_per_subset_and_task():
    G, offsets, labels = make_tasks(seed=5)
    W = np.random.default_rng(5).normal(size=(len(SUBSETS), 12))
    scores = linearized_scores(G, offsets, labels, SUBSETS, W)
    assert sorted(scores) == sorted((row, j) for row, s in enumerate(SUBSETS) for j in s)
    for (row, task), (loss, f1, accuracy) in scores.items():
        z = offsets[task] + G[task].astype(np.float64) @ W[row]
        assert loss == pytest.approx(np.mean(np.logaddexp(0, z) - labels[task] * z), rel=1e-12)
        assert f1 == binary_f1(z > 0, labels[task] > 0.5)
        assert accuracy == pytest.approx(np.mean((z > 0) == (labels[task] > 0.5)), abs=0)
    alone = linearized_scores(G, offsets, labels, SUBSETS[1:2], W[1:2])  # a subset scored alone: the same bits
    assert all(alone[0, task] == scores[1, task] for task in SUBSETS[1])


def test_benchmark_runs_on_tiny_data(capsys):
    from benchmarks.bench_regression import get_args_parser, main

    main(
        get_args_parser().parse_args(
            ["--n-tasks", "8", "--subsets", "5", "--naive-subsets", "1", "--rows", "30", "60", "--project-dim", "6"]
        )
    )
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 8 |")]
    assert len(table) == 5


@pytest.mark.parametrize("solver", ["newton", "newton-cg", "onestep"])
def test_two_threads_give_the_one_thread_solution(solver):
    """Batched LU returned garbage pivots with 2 threads on this torch/MKL build; the Cholesky solves do not."""
    data = prepare_tasks(*make_tasks(seed=4, n=8, d=200))
    subsets = [tuple(sorted(np.random.default_rng(k).choice(8, 3, replace=False).tolist())) for k in range(64)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        reference = fit_subsets(data, subsets, L2, solver=solver).weights
        torch.set_num_threads(2)
        torch.testing.assert_close(fit_subsets(data, subsets, L2, solver=solver).weights, reference)
    finally:
        torch.set_num_threads(threads)


def test_newton_cg_matches_float64_newton_at_full_dimension():
    """newton-cg's float32 Hessian products and first phase must not move the answer: the same weights as Newton with
    explicit float64 Hessians (a solve per step) to 1e-6, and a float64 gradient under the tolerance."""
    data = prepare_tasks(*make_tasks(seed=6, n=8, d=200))
    subsets = [tuple(np.random.default_rng(k).choice(8, 4, replace=False).tolist()) for k in range(20)]
    fit = fit_subsets(data, subsets, L2, solver="newton-cg", tol=1e-10)
    reference = fit_subsets(data, subsets, L2, solver="newton", tol=1e-10)
    assert fit.converged.all() and reference.converged.all()
    assert (fit.weights - reference.weights).abs().max() < 1e-6
    for row, subset in enumerate(subsets[:3]):
        gradient = torch.func.grad(lambda w, s=subset: objective(data, s, w))(fit.weights[row])
        assert gradient.abs().max() < 1e-10


def test_newton_cg_with_a_coarse_tolerance_stays_float64():
    """A tolerance above the float32 phase's stops there; the weights and the test are still float64."""
    data = prepare_tasks(*make_tasks(seed=7))
    fit = fit_subsets(data, SUBSETS, L2, tol=1e-4)
    assert fit.weights.dtype == torch.float64 and fit.converged.all() and (fit.grad_norm <= 1e-4).all()
    for row, subset in enumerate(SUBSETS):
        np.testing.assert_allclose(fit.weights[row].numpy(), fit_subset_scipy(data, subset, L2), atol=1e-2)

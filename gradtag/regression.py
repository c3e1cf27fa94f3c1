"""Step 3 of Grad-TAG: one logistic regression per task subset on projected gradients (paper Eq. 3–4), batched.

For a subset ``S`` of tasks, with projected gradients ``G_j`` (N_j × d), base-model logits ``o_j`` (N_j,) used as a
fixed offset and binary labels ``y_j`` (N_j,), the fitted weights are

    ŵ_S = argmin_w  L_S(w),   L_S(w) = (1/|S|) Σ_{j∈S} (1/N_j) Σ_i BCE(y_ji, σ(o_ji + G_ji·w)) + (λ/2) ‖w‖².

Normalisation (our choice; the paper's Eq. 3 sums rows): each task's loss is the *mean* over its rows and the tasks of
``S`` are *averaged*, so every task weighs the same whatever its size and the data term is an average loss whatever
``|S|``. ``λ`` (``l2``) therefore has one meaning for every subset size; λ = 1e-2 … 1 is the range that worked in our
prototype, λ = 1e-3 over-fitted (FIDELITY §4).

The linearised score of task ``j ∈ S`` (Eq. 4) uses its validation rows: ``logits = o_j^val + G_j^val ŵ_S``.

Speed: the per-task statistics at ``w = 0`` (gradient and Hessian, :func:`task_statistics`) are computed once and
shared by every subset, so the one-step solution of a subset is one d × d solve. Full Newton is batched over many
subsets: for each task, the logits of every subset in the batch that holds it come from one matrix product. Solver
``newton`` forms each subset's Hessian at the current weights (all Gram matrices of a task in one more product);
``newton-cg`` never forms it and solves each Newton system by conjugate gradients on Hessian-vector products,
preconditioned with one matrix for all subsets, (mean over all tasks of H_j + λI)⁻¹ — same optimum, no d × d
factorisation per subset (those were most of the time; README, "Benchmarks").

All arithmetic is float64 on the device of the inputs (CPU or CUDA).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from gradtag.artifacts import UsageError
from gradtag.training import binary_f1

SOLVERS = ("newton", "newton-cg", "onestep")

# subsets fitted together by default: larger batches amortise the per-task products over more subsets (512 was 2x
# faster than 64 on the embedded default's gradients, README "Benchmarks"); memory grows with it only for "newton"
BATCH_SIZE = 512
_ARMIJO = 1e-4  # sufficient-decrease constant of the Newton line search
_MAX_HALVINGS = 30  # step halvings before a subset is declared stalled
_COARSE_TOL = 1e-6  # max|∇L_S| where newton-cg turns from float32 to float64: ~30x float32's rounding of the gradient
_GRAM_CHUNK = 2**24  # float64 elements (128 MiB) of the scaled-gradient buffer built per Hessian product


@dataclass(frozen=True)
class TaskData:
    """Training rows of every task, as float64 tensors on one device, with their statistics at ``w = 0``.

    gradients[j]: (N_j, d) projected gradients G_j; offsets[j]: (N_j,) base logits o_j; labels[j]: (N_j,) in {0, 1};
    row_weights[j]: (N_j,) non-negative, summing to 1 (uniform 1/N_j: the plain mean; class-balanced when the base model
    was trained with a balanced loss); grad: (n, d) per-task mean-loss gradients g_j; hess: (n, d, d) per-task
    mean-loss Hessians H_j (see :func:`task_statistics`); rows32[j]: the four row tensors of task j rounded to float32.
    starts: :func:`newton_cg_start`'s cache. Build it with :func:`prepare_tasks`.
    """

    gradients: list[torch.Tensor]
    offsets: list[torch.Tensor]
    labels: list[torch.Tensor]
    row_weights: list[torch.Tensor]
    grad: torch.Tensor
    hess: torch.Tensor
    rows32: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    starts: dict = field(default_factory=dict, repr=False, compare=False)  # newton-cg's starts by (λ, max_iter, tol)

    def rows(self, task: int, dtype: torch.dtype = torch.float64):
        """(G_j, o_j, y_j, r_j) of task j in float64 (the data) or float32 (a rounded copy for newton-cg's cheap work)."""
        if dtype == torch.float32:
            return self.rows32[task]
        return self.gradients[task], self.offsets[task], self.labels[task], self.row_weights[task]

    @property
    def n_tasks(self) -> int:
        return len(self.gradients)

    @property
    def project_dim(self) -> int:
        return self.grad.shape[1]

    @property
    def device(self) -> torch.device:
        return self.grad.device


class SubsetFit(NamedTuple):
    """Result of :func:`fit_subsets` for m subsets, rows in the order of the subsets given.

    weights: (m, d) float64 ŵ_S; loss: (m,) objective L_S(ŵ_S); grad_norm: (m,) max-abs gradient of L_S at ŵ_S;
    n_iter: (m,) int64 Newton steps taken (1 for ``onestep``); converged: (m,) bool, ``grad_norm <= tol``.
    """

    weights: torch.Tensor
    loss: torch.Tensor
    grad_norm: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor


def _as_float64(array, device=None) -> torch.Tensor:
    return torch.as_tensor(array, dtype=torch.float64, device=device)


def task_statistics(G_list, offsets_list, labels_list, row_weights=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task gradient and Hessian of the mean BCE loss at ``w = 0``, shared by every subset.

    G_list[j]: (N_j, d); offsets_list[j]: (N_j,); labels_list[j]: (N_j,) — numpy arrays or tensors, any float dtype.
    With p_j = σ(o_j) and row weights r_j (default 1/N_j):  g_j = G_jᵀ (r_j (p_j − y_j))  and
    H_j = G_jᵀ diag(r_j p_j (1 − p_j)) G_j (the weights make each task's loss a (weighted) mean). Returns ``grad``
    (n, d) and ``hess`` (n, d, d), float64, on the device of ``G_list[0]``.
    """
    grads, hessians = [], []
    device = G_list[0].device if isinstance(G_list[0], torch.Tensor) else None
    if row_weights is None:
        row_weights = [torch.full((len(G),), 1.0 / len(G), dtype=torch.float64) for G in G_list]
    for G, offsets, labels, r in zip(G_list, offsets_list, labels_list, row_weights, strict=True):
        G, offsets, labels, r = (_as_float64(x, device) for x in (G, offsets, labels, r))
        p = torch.sigmoid(offsets)
        grads.append(G.T @ (r * (p - labels)))
        hessians.append((G * (r * p * (1 - p))[:, None]).T @ G)
    return torch.stack(grads), torch.stack(hessians)


def prepare_tasks(G_list, offsets_list, labels_list, device: str | torch.device | None = None, row_weights_list=None) -> TaskData:
    """Check and convert the training rows of n tasks to float64 tensors on ``device``; compute their statistics.

    G_list[j]: (N_j, d) projected gradients; offsets_list[j]: (N_j,) base-model logits; labels_list[j]: (N_j,) binary
    labels; row_weights_list[j]: (N_j,) non-negative weights of the rows in task j's loss (default uniform; normalised
    here to sum to 1). Raises :class:`UsageError` on mismatched lengths, a varying d, an empty task, labels outside {0, 1} or
    non-finite values.
    """
    if not (len(G_list) == len(offsets_list) == len(labels_list)) or len(G_list) == 0:
        raise UsageError(
            f"need one gradient, offset and label array per task; got {len(G_list)}, {len(offsets_list)}, {len(labels_list)}"
        )
    if device is None and isinstance(G_list[0], torch.Tensor):
        device = G_list[0].device
    gradients, offsets, labels, row_weights = [], [], [], []
    dim = None
    for task, (G, o, y) in enumerate(zip(G_list, offsets_list, labels_list, strict=True)):
        G, o, y = (_as_float64(x, device) for x in (G, o, y))
        if G.ndim != 2 or o.shape != (len(G),) or y.shape != (len(G),) or len(G) == 0:
            raise UsageError(
                f"task {task}: gradients must be (N, d) with N > 0 and offsets, labels (N,); "
                f"got {tuple(G.shape)}, {tuple(o.shape)}, {tuple(y.shape)}"
            )
        dim = G.shape[1] if dim is None else dim
        if G.shape[1] != dim:
            raise UsageError(f"task {task}: projection dimension {G.shape[1]} differs from task 0's {dim}")
        if not (torch.isfinite(G).all() and torch.isfinite(o).all()):
            raise UsageError(f"task {task}: gradients or offsets hold NaN or inf; recompute step 2")
        if not ((y == 0) | (y == 1)).all():
            raise UsageError(f"task {task}: labels must be 0 or 1")
        r = torch.ones_like(y) if row_weights_list is None else _as_float64(row_weights_list[task], device)
        if r.shape != y.shape or not (r >= 0).all() or not r.sum() > 0:
            raise UsageError(f"task {task}: row weights must be (N,), non-negative and not all zero")
        gradients.append(G)
        offsets.append(o)
        labels.append(y)
        row_weights.append(r / r.sum())
    grad, hess = task_statistics(gradients, offsets, labels, row_weights)
    rows32 = [tuple(x.to(torch.float32) for x in rows) for rows in zip(gradients, offsets, labels, row_weights, strict=True)]
    return TaskData(gradients, offsets, labels, row_weights, grad, hess, rows32)


def check_subsets(subsets: Sequence[Sequence[int]], n_tasks: int) -> list[tuple[int, ...]]:
    """Return ``subsets`` as a list of tuples of ints; :class:`UsageError` on an empty list or subset, an index
    outside ``[0, n_tasks)`` or a repeated index."""
    checked = [tuple(int(task) for task in subset) for subset in subsets]
    if not checked:
        raise UsageError("no subset to fit")
    for number, subset in enumerate(checked):
        if not subset:
            raise UsageError(f"subset {number} is empty")
        if not all(0 <= task < n_tasks for task in subset):
            raise UsageError(f"subset {number} {subset} has a task index outside 0..{n_tasks - 1}")
        if len(set(subset)) != len(subset):
            raise UsageError(f"subset {number} {subset} repeats a task")
    return checked


def _holders(subsets: list[tuple[int, ...]], device) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Map each task to (rows of the subsets holding it, weight 1/|S| of the task in each)."""
    rows: dict[int, list[int]] = {}
    for row, subset in enumerate(subsets):
        for task in subset:
            rows.setdefault(task, []).append(row)
    return {
        task: (
            torch.tensor(idx, device=device),
            torch.tensor([1.0 / len(subsets[r]) for r in idx], dtype=torch.float64, device=device),
        )
        for task, idx in rows.items()
    }


def _loss_grad(data: TaskData, subsets: list[tuple[int, ...]], W: torch.Tensor, l2: float):
    """Objective L_S and its gradient for k subsets at weights W (k, d), in W's dtype (float64: exact; float32: the
    rounded rows of ``data.rows32``, for newton-cg's first phase): returns (k,) and (k, d)."""
    loss = 0.5 * l2 * (W * W).sum(1)
    grad = l2 * W
    for task, (rows, weight) in _holders(subsets, W.device).items():
        G, o, y, r = data.rows(task, W.dtype)
        weight = weight.to(W.dtype)
        z = o[:, None] + G @ W[rows].T  # (N_j, k): one column per subset holding the task
        bce = torch.logaddexp(z, torch.zeros_like(z)) - y[:, None] * z
        loss.index_add_(0, rows, weight * (r @ bce))
        grad.index_add_(0, rows, weight[:, None] * ((r[:, None] * (torch.sigmoid(z) - y[:, None])).T @ G))
    return loss, grad


def _hessian(data: TaskData, subsets: list[tuple[int, ...]], W: torch.Tensor, l2: float) -> torch.Tensor:
    """Hessian of L_S for k subsets at weights W (k, d): (k, d, d) float64, λI included."""
    k, d = W.shape
    hess = l2 * torch.eye(d, dtype=torch.float64, device=W.device).repeat(k, 1, 1)
    for task, (rows, weight) in _holders(subsets, W.device).items():
        G, o = data.gradients[task], data.offsets[task]
        p = torch.sigmoid(o[:, None] + G @ W[rows].T)
        s = p * (1 - p) * data.row_weights[task][:, None] * weight  # (N_j, k) curvature weights, task weight folded in
        chunk = max(1, _GRAM_CHUNK // (len(G) * d))
        for start in range(0, len(rows), chunk):
            part = s[:, start : start + chunk]
            scaled = (part[:, :, None] * G[:, None, :]).reshape(len(G), -1)  # (N_j, c·d)
            gram = (G.T @ scaled).reshape(d, part.shape[1], d).permute(1, 0, 2)  # one GEMM for c Gram matrices
            hess.index_add_(0, rows[start : start + chunk], gram)
    return hess


def _cholesky(hess: torch.Tensor, what: str) -> torch.Tensor:
    """Cholesky factors of k regularised logistic Hessians (k, d, d), symmetric positive definite for λ > 0.

    Cholesky rather than LU: the Hessians are SPD, and batched LU (``lu_factor_ex``) returns garbage pivots while
    reporting success on this torch/MKL build with 2 or more threads (``tests/test_regression.py`` checks both)."""
    factors, info = torch.linalg.cholesky_ex(hess)
    if (info != 0).any():
        raise UsageError(
            f"the regression Hessian {what} is not positive definite (a task's gradients span less than d); use a positive l2"
        )
    return factors


def _chol_solve(factors: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve with the factors of :func:`_cholesky` for one right-hand side per subset: rhs (k, d) → (k, d)."""
    return torch.cholesky_solve(rhs[:, :, None], factors)[:, :, 0]


def _solve(hess: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    return _chol_solve(_cholesky(hess, "at the current weights"), rhs)


def _membership(data: TaskData, subsets: list[tuple[int, ...]]) -> torch.Tensor:
    """(k, n) weights 1/|S| of each subset's tasks: a subset's mean of per-task statistics is ``membership @ stats``."""
    membership = torch.zeros(len(subsets), data.n_tasks, dtype=torch.float64, device=data.device)
    for row, subset in enumerate(subsets):
        membership[row, list(subset)] = 1.0 / len(subset)
    return membership


def _shared_system(data: TaskData, subsets: list[tuple[int, ...]], l2: float):
    """Cholesky factors of mean_{j∈S} H_j + λI (k, d, d) and the gradient mean_{j∈S} g_j (k, d) at w = 0, for k subsets."""
    n, d = data.n_tasks, data.project_dim
    membership = _membership(data, subsets)
    hess = (membership @ data.hess.reshape(n, d * d)).reshape(-1, d, d)
    hess += l2 * torch.eye(d, dtype=torch.float64, device=data.device)
    return _cholesky(hess, "at w = 0"), membership @ data.grad


def _curvature(data: TaskData, subsets: list[tuple[int, ...]], W: torch.Tensor):
    """Per task: (rows, G_j, c) in float32, c = r_j p(1 − p) / |S| at W (k, d), (N_j, k_j): ∇²L_S = Σ_j G_jᵀ diag(c) G_j + λI.

    float32 (the rounded rows of ``data.rows32``): the Hessian only shapes newton-cg's directions — the line search
    and the stopping test use the objective itself — and float32 products run at 2–3× the float64 rate on CPU."""
    curvature = []
    W = W.to(torch.float32)
    for task, (rows, weight) in _holders(subsets, W.device).items():
        G, o, _, r = data.rows32[task]
        p = torch.sigmoid(o[:, None] + G @ W[rows].T)
        curvature.append((rows, G, p * (1 - p) * r[:, None] * weight.to(torch.float32)))
    return curvature


def _hvp(curvature, V: torch.Tensor, l2: float) -> torch.Tensor:
    """Hessian-vector products ∇²L_S v for k subsets at once, V (k, d) → (k, d), without forming any Hessian."""
    out = l2 * V
    for rows, G, c in curvature:
        out.index_add_(0, rows, (c * (G @ V[rows].T)).T @ G)
    return out


def _shared_inverse(hess: torch.Tensor, l2: float, what: str) -> torch.Tensor:
    """(mean_j H_j + λI)⁻¹ over all n tasks' Hessians hess (n, d, d): (d, d), one preconditioner for every subset.

    A per-subset preconditioner (the subset's own Hessian) needs a d × d factorisation and two triangular solves per
    CG step for every subset, and those were most of step 3's time (README, "Benchmarks"); the shared one costs one
    factorisation per call and a matrix product per CG step for all subsets at once, for a few more CG steps."""
    d = hess.shape[-1]
    matrix = hess.mean(0) + l2 * torch.eye(d, dtype=torch.float64, device=hess.device)
    return torch.cholesky_inverse(_cholesky(matrix[None], what)[0])


def _all_tasks_inverse(data: TaskData, l2: float) -> torch.Tensor:
    """(mean_j H_j + λI)⁻¹ over all n tasks at w = 0: (d, d) float64 (:func:`_shared_inverse`)."""
    return _shared_inverse(data.hess, l2, "of all tasks at w = 0")


def _pcg(curvature, rhs: torch.Tensor, inverse: torch.Tensor, l2: float, rtol: torch.Tensor, max_iter: int) -> torch.Tensor:
    """Solve ∇²L_S x = rhs (k, d) by conjugate gradients preconditioned with ``inverse`` (d, d, symmetric positive
    definite: :func:`_shared_inverse`), per subset until ‖residual‖ ≤ rtol ‖rhs‖ (rtol (k,)), in the dtype of rhs."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    z = r @ inverse
    direction = z.clone()
    rz = (r * z).sum(1)
    target = rtol * rhs.norm(dim=1)
    for _ in range(max_iter):
        running = r.norm(dim=1) > target
        if not running.any():
            break
        product = _hvp(curvature, direction, l2)
        curvature_along = (direction * product).sum(1)
        alpha = torch.where(running, rz / torch.where(running, curvature_along, 1.0), 0.0)
        x += alpha[:, None] * direction
        r -= alpha[:, None] * product
        z = r @ inverse
        rz_new = (r * z).sum(1)
        beta = torch.where(running, rz_new / torch.where(running, rz, 1.0), 0.0)
        direction = z + beta[:, None] * direction
        rz = rz_new
    return x


def _onestep(data: TaskData, subsets: list[tuple[int, ...]], l2: float) -> torch.Tensor:
    """ŵ_S = −(mean_{j∈S} H_j + λI)⁻¹ mean_{j∈S} g_j for k subsets from the shared statistics: (k, d) float64."""
    factors, grad = _shared_system(data, subsets, l2)
    return -_chol_solve(factors, grad)


def _damped_newton(data: TaskData, subsets, W: torch.Tensor, l2: float, tol: float, max_iter: int, n_iter, direction):
    """Damped Newton for k subsets from W (k, d) until max|∇L_S| <= tol, in W's dtype; returns (W, loss, grad, n_iter).

    ``direction(subsets, W, grad, tol)`` gives the (approximate) Newton steps of the subsets not yet converged; each is
    backtracked (halving, Armijo) per subset, and a subset whose step cannot decrease the objective within
    ``_MAX_HALVINGS`` halvings stops where it is. n_iter (k,) int64 counts accepted steps (at most ``max_iter``).
    """
    loss, grad = _loss_grad(data, subsets, W, l2)
    stalled = torch.zeros(len(subsets), dtype=torch.bool, device=W.device)
    rounding = 1e-12 if W.dtype == torch.float64 else 1e-6  # relative rounding of the loss near the optimum
    for _ in range(max_iter):
        grad_norm = grad.abs().amax(1)
        active = ((grad_norm > tol) & ~stalled & (n_iter < max_iter)).nonzero().flatten()
        if len(active) == 0:
            break
        active_subsets = [subsets[i] for i in active.tolist()]
        step = direction(active_subsets, W[active], grad[active], tol)
        slope = (grad[active] * step).sum(1)
        base = loss[active]
        t = torch.ones(len(active), dtype=W.dtype, device=W.device)
        pending = torch.ones(len(active), dtype=torch.bool, device=W.device)
        for _ in range(_MAX_HALVINGS):
            idx = pending.nonzero().flatten()
            candidate = W[active[idx]] + t[idx, None] * step[idx]
            new_loss, new_grad = _loss_grad(data, [active_subsets[i] for i in idx.tolist()], candidate, l2)
            ok = new_loss <= base[idx] + _ARMIJO * t[idx] * slope[idx] + rounding * (1 + base[idx].abs())
            accept = active[idx[ok]]
            W[accept], loss[accept], grad[accept] = candidate[ok], new_loss[ok], new_grad[ok]
            n_iter[accept] += 1
            pending[idx[ok]] = False
            t[idx[~ok]] *= 0.5
            if not pending.any():
                break
        stalled[active[pending]] = True
    return W, loss, grad, n_iter


def _newton(data: TaskData, subsets: list[tuple[int, ...]], l2: float, max_iter: int, tol: float):
    """Damped Newton (IRLS) with explicit float64 Hessians for k subsets, from the one-step solution."""
    n_iter = torch.zeros(len(subsets), dtype=torch.int64, device=data.device)

    def direction(active_subsets, W, grad, tol):
        return -_solve(_hessian(data, active_subsets, W, l2), grad)

    return _damped_newton(data, subsets, _onestep(data, subsets, l2), l2, tol, max_iter, n_iter, direction)


class _Start(NamedTuple):
    """Where newton-cg linearises every subset: weights ``point`` (d,), each task's mean-loss gradient there ``grad``
    (n, d), and the shared preconditioner ``inverse`` (mean_j H_j(point) + λI)⁻¹ (d, d); float64."""

    point: torch.Tensor
    grad: torch.Tensor
    inverse: torch.Tensor


def newton_cg_start(data: TaskData, l2: float, max_iter: int = 50, tol: float = 1e-8) -> _Start:
    """newton-cg's linearisation point for every subset: the all-tasks solution ŵ_{all}, cached in ``data.starts``.

    Nearer each subset's optimum than w = 0, so one preconditioned gradient step from it saves about a Newton step per
    subset on the embedded default (README, "Benchmarks"); it costs one fit on all rows and one Gram matrix per task,
    once per (data, λ) — per-task work, which :func:`fit_subsets` computes on first use (call this first to count it
    apart from the per-subset work). Only the speed depends on it, not the optimum.
    """
    key = (float(l2), int(max_iter), float(tol))
    if key not in data.starts:
        data.starts[key] = _all_tasks_start(data, l2, max_iter, tol)
    return data.starts[key]


def _all_tasks_start(data: TaskData, l2: float, max_iter: int, tol: float) -> _Start:
    """:class:`_Start` at the all-tasks solution (itself fitted by newton-cg from w = 0); see :func:`newton_cg_start`."""
    at_zero = _Start(torch.zeros_like(data.grad[0]), data.grad, _all_tasks_inverse(data, l2))
    point = _newton_cg(data, [tuple(range(data.n_tasks))], l2, at_zero, max_iter, tol)[0][0]
    grad, hess = [], []  # the Hessians in float32: they only precondition, and were most of the time in float64
    for task in range(data.n_tasks):
        G, o, y, r = data.rows(task)
        grad.append(G.T @ (r * (torch.sigmoid(o + G @ point) - y)))
        G, o, _, r = data.rows32[task]
        p = torch.sigmoid(o + G @ point.to(torch.float32))
        hess.append((G * (r * p * (1 - p))[:, None]).T @ G)
    inverse = _shared_inverse(torch.stack(hess).double(), l2, "of all tasks at their joint solution")
    return _Start(point, torch.stack(grad), inverse)


def _newton_cg(data: TaskData, subsets: list[tuple[int, ...]], l2: float, start: _Start, max_iter: int, tol: float):
    """Inexact Newton for k subsets at once: each Newton system solved by float32 conjugate gradients on Hessian-vector
    products, preconditioned with ``start.inverse``, from one preconditioned gradient step at ``start.point``.

    Two phases: all in float32 (objective, gradient, line search) to max|∇L_S| <= ``_COARSE_TOL``, then in float64
    to ``tol`` — so the answer passes the same float64 test as a float64 solver, and only the last one or two
    steps pay for float64 objectives. CG stops at ‖residual‖ ≤ η ‖∇L_S‖ with the forcing term
    η = min(0.1, max(√max|∇L_S|, tol / (2‖∇L_S‖))): superlinear convergence, without solving a system more
    accurately than the gradient test needs (the next gradient is about the CG residual). Returns (W, loss, grad,
    n_iter) as :func:`_damped_newton`.
    """
    W = start.point - (_membership(data, subsets) @ start.grad + l2 * start.point) @ start.inverse
    inverse = start.inverse.to(torch.float32)
    n_iter = torch.zeros(len(subsets), dtype=torch.int64, device=data.device)

    def direction(active_subsets, W, grad, tol):
        forcing = torch.maximum(grad.abs().amax(1).sqrt(), 0.5 * tol / grad.norm(dim=1)).clamp(max=0.1)
        curvature = _curvature(data, active_subsets, W)
        rhs = -grad.to(torch.float32)
        return _pcg(curvature, rhs, inverse, l2, forcing.to(torch.float32), max_iter=data.project_dim).to(W.dtype)

    if tol < _COARSE_TOL:
        coarse = _damped_newton(data, subsets, W.to(torch.float32), l2, _COARSE_TOL, max_iter, n_iter, direction)
        W = coarse[0].to(torch.float64)
    return _damped_newton(data, subsets, W, l2, tol, max_iter, n_iter, direction)


def fit_subsets(
    data: TaskData,
    subsets: Sequence[Sequence[int]],
    l2: float,
    solver: str = "newton-cg",
    max_iter: int = 50,
    tol: float = 1e-8,
    batch_size: int = BATCH_SIZE,
) -> SubsetFit:
    """Fit ŵ_S (Eq. 3) for every subset, ``batch_size`` subsets at a time; see the module docstring for L_S.

    data: :class:`TaskData` of the n tasks' training rows; subsets: m sequences of task indices; l2: λ ≥ 0;
    solver: ``"onestep"`` — one Newton step from w = 0 with the shared per-task statistics,
    ŵ_S = −(mean_{j∈S} H_j + λI)⁻¹ mean_{j∈S} g_j (a d × d solve per subset); ``"newton"`` — damped Newton (IRLS)
    with explicit float64 Hessians to ``max|∇L_S| <= tol`` (float64), warm-started from the one-step solution;
    ``"newton-cg"`` — the same optimum to the same float64 test, started from the all-tasks solution, each Newton
    system solved by float32 conjugate gradients on Hessian-vector products preconditioned with the all-task
    Hessian there, and the first Newton steps taken in float32 (:func:`_newton_cg`; no d × d Hessian formed or
    factorised per subset; the fast exact solver). Both Newton solvers take at most ``max_iter`` steps per subset.
    Returns a :class:`SubsetFit` (weights (m, d) float64 and convergence info); the batch size changes only speed.
    """
    if solver not in SOLVERS:
        raise UsageError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if not l2 >= 0:
        raise UsageError(f"l2 must be >= 0, got {l2}")
    if batch_size < 1 or max_iter < 0 or not tol > 0:
        raise UsageError(f"need batch_size >= 1, max_iter >= 0, tol > 0; got {batch_size}, {max_iter}, {tol}")
    subsets = check_subsets(subsets, data.n_tasks)
    start = newton_cg_start(data, l2, max_iter, tol) if solver == "newton-cg" else None
    parts = []
    for first in range(0, len(subsets), batch_size):
        batch = subsets[first : first + batch_size]
        if solver == "onestep":
            W = _onestep(data, batch, l2)
            loss, grad = _loss_grad(data, batch, W, l2)
            n_iter = torch.ones(len(batch), dtype=torch.int64, device=W.device)
        elif solver == "newton":
            W, loss, grad, n_iter = _newton(data, batch, l2, max_iter, tol)
        else:
            W, loss, grad, n_iter = _newton_cg(data, batch, l2, start, max_iter, tol)
        parts.append((W, loss, grad.abs().amax(1), n_iter))
    W, loss, grad_norm, n_iter = (torch.cat(column) for column in zip(*parts, strict=True))
    return SubsetFit(W, loss, grad_norm, n_iter, grad_norm <= tol)


def linearized_logits(G_val, offsets_val, w) -> torch.Tensor:
    """Linearised logits of Eq. 4: ``o^val + G^val w``.

    G_val: (N, d); offsets_val: (N,); w: (d,) → (N,), or (m, d) for m subsets → (m, N). Arrays or tensors; float64
    tensor on the device of ``G_val``.
    """
    G = _as_float64(G_val)
    offsets = _as_float64(offsets_val, G.device)
    w = _as_float64(w, G.device)
    if w.ndim == 1:
        return offsets + G @ w
    # one product per subset: a subset's logits then do not depend on which other subsets share the call (a matrix
    # product's rounding does), so a sharded step 3 writes the same bytes as an unsharded one
    products = [G @ row for row in w]
    return offsets[None, :] + (torch.stack(products) if products else G.new_zeros((0, G.shape[0])))


def mean_bce(logits, labels) -> torch.Tensor:
    """Mean binary cross-entropy of logits (..., N) against labels (N,) in {0, 1}: (...,) float64."""
    z = _as_float64(logits)
    y = _as_float64(labels, z.device)
    return (torch.logaddexp(z, torch.zeros_like(z)) - y * z).mean(-1)


def linearized_scores(G_list, offsets_list, labels_list, subsets: Sequence[Sequence[int]], weights) -> dict:
    """Loss, F1 and accuracy of every task of every subset under its linearised model (Eq. 4), on one split.

    G_list[j]: (N_j, d), offsets_list[j], labels_list[j]: (N_j,) — task j's rows on the split, or None where task j
    has none (its scores are NaN); subsets: m subsets; weights: (m, d) ŵ_S in the same order. Returns
    ``{(subset index, task): (mean BCE, F1 and accuracy of logits > 0)}``. Each subset's logits come from its own product
    (:func:`linearized_logits`), so a subset's scores do not depend on which others are scored with it.
    """
    W = _as_float64(weights)
    if W.ndim != 2 or W.shape[0] != len(subsets):
        raise UsageError(f"weights must be (m, d) with m = {len(subsets)} subsets; got {tuple(W.shape)}")
    holders: dict[int, list[int]] = {}
    for row, subset in enumerate(subsets):
        for task in subset:
            holders.setdefault(task, []).append(row)
    scores = {}
    for task, rows in holders.items():
        if G_list[task] is None:
            scores.update({(row, task): (float("nan"),) * 3 for row in rows})
            continue
        logits = linearized_logits(G_list[task], offsets_list[task], W[rows])  # (k_j, N_j)
        losses = mean_bce(logits, labels_list[task]).cpu().numpy()
        positives = np.asarray(labels_list[task]) > 0.5
        predicted = (logits > 0).cpu().numpy()
        for index, row in enumerate(rows):
            accuracy = float(np.mean(predicted[index] == positives))
            scores[row, task] = (float(losses[index]), binary_f1(predicted[index], positives), accuracy)
    return scores


def _subset_rows(data: TaskData, subset: Sequence[int]):
    """Stacked numpy rows of a subset with per-row weights r_ji / |S|, so the weights sum to 1."""
    G = np.concatenate([data.gradients[j].cpu().numpy() for j in subset])
    offsets = np.concatenate([data.offsets[j].cpu().numpy() for j in subset])
    labels = np.concatenate([data.labels[j].cpu().numpy() for j in subset])
    weights = np.concatenate([data.row_weights[j].cpu().numpy() / len(subset) for j in subset])
    return G, offsets, labels, weights


def fit_subset_scipy(data: TaskData, subset: Sequence[int], l2: float, gtol: float = 1e-10) -> np.ndarray:
    """Reference ŵ_S for one subset by ``scipy.optimize.minimize`` (L-BFGS-B) on exactly L_S, offsets included.

    Slow (one fit per subset); used in tests and benchmarks. Returns (d,) float64.
    """
    from scipy.optimize import minimize

    (subset,) = check_subsets([subset], data.n_tasks)
    G, offsets, labels, weights = _subset_rows(data, subset)

    def objective(w):
        z = offsets + G @ w
        loss = weights @ (np.logaddexp(0.0, z) - labels * z) + 0.5 * l2 * w @ w
        return loss, G.T @ (weights * (1 / (1 + np.exp(-z)) - labels)) + l2 * w

    result = minimize(
        objective,
        np.zeros(G.shape[1]),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": gtol, "ftol": 1e-15, "maxiter": 20_000, "maxcor": 30},
    )
    return result.x


def fit_subsets_sklearn(data: TaskData, subsets: Sequence[Sequence[int]], l2: float, tol: float = 1e-10) -> np.ndarray:
    """Reference ŵ_S by one sklearn ``LogisticRegression(fit_intercept=False)`` per subset: (m, d) float64.

    sklearn has no offset, so every offset must be zero (else :class:`UsageError`). It minimises
    C Σ_i s_i BCE_i + ½‖w‖²; with row weights s_i = 1/(|S| N_j) and C = 1/λ this is L_S / λ, the same minimiser.
    """
    from sklearn.linear_model import LogisticRegression

    if any(bool(o.any()) for o in data.offsets):
        raise UsageError("the sklearn reference has no offset term; it needs all offsets zero (use fit_subset_scipy)")
    if not l2 > 0:
        raise UsageError(f"the sklearn reference needs l2 > 0, got {l2}")
    weights = []
    for subset in check_subsets(subsets, data.n_tasks):
        G, _, labels, row_weights = _subset_rows(data, subset)
        model = LogisticRegression(C=1.0 / l2, fit_intercept=False, solver="newton-cholesky", tol=tol, max_iter=1000)
        model.fit(G, labels, sample_weight=row_weights)
        weights.append(model.coef_[0])
    return np.stack(weights)

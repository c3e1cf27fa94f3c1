"""TAG (Fifty et al., NeurIPS 2021, "Efficiently identifying task groupings for multi-task learning"): inter-task
affinity from look-ahead updates during multitask training, a baseline beside Grad-TAG's estimates.

At a training step with batch B and weights θ = (θ_s shared, θ_h task-specific), task i's look-ahead takes one SGD step
on the shared parameters only, θ_s|i = θ_s − η ∇_{θ_s} L_i(θ; B), leaving every task-specific parameter as it is, and
the affinity of i onto j is the relative change of j's loss on the same batch (TAG, Sec. 3):

    Z_{i→j} = 1 − L_j(θ_s|i, θ_h; B) / L_j(θ_s, θ_h; B),

averaged over the training steps it is recorded at. Positive: a step on i lowers j's loss. η is the optimiser's
learning rate; as in TAG the look-ahead is a plain SGD step even though the model itself trains with Adam, so η ∇L_i is
not the step Adam takes. Z_ii is meaningful too (how much i's own step lowers its loss; positive for a small η).

The look-ahead is evaluated with :func:`torch.func.functional_call` on substituted parameters, so the model's weights
are never changed, and in eval mode (dropout off, batch norm on its running statistics): the numbers do not depend on
dropout masks, and recording draws no random numbers, so a run with TAG recorded trains the same θ* as one without.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.func import functional_call

from gradtag.flops import SampledFlops
from models.modes import eval_mode

# outputs of the model on a batch -> (per-task losses (n,), present (n,) bool): a task without samples in the batch
# must give a finite loss of 0 with zero gradient (e.g. a weighted sum over its rows divided by max(total weight, eps))
TaskLosses = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _call(model: torch.nn.Module, params: dict, inputs):
    if isinstance(inputs, dict):
        return functional_call(model, params, args=(), kwargs=inputs)
    return functional_call(model, params, args=tuple(inputs))


def lookahead_affinity(model: torch.nn.Module, inputs, task_losses: TaskLosses, shared: list[str], lr: float) -> torch.Tensor:
    """TAG's Z_{i→j} on one batch: (n, n) float64 on the CPU, ``Z[i, j]`` = Z_{i→j} (row: the task stepped on).

    Args:
        model: the multitask model, at the weights θ of the current step; not modified.
        inputs: the batch as the model's positional arguments (a tuple) or keyword arguments (a dict).
        task_losses: the model's outputs on ``inputs`` -> (losses (n,), present (n,) bool), the per-task training
            losses L_j on this batch (without weight decay) and which tasks have samples in it.
        shared: names (``model.named_parameters()``) of the shared parameters θ_s that the look-ahead moves; every
            other parameter is held fixed.
        lr: η, the look-ahead's SGD step size.

    A task absent from the batch gives NaN in its row (no step to take) and its column (no loss to compare), and so does
    a column whose loss is 0; callers average finite entries only (:class:`TagAverage`).
    """
    params = {name: param.detach() for name, param in model.named_parameters()}
    params.update(dict(model.named_buffers()))
    unknown = sorted(set(shared) - set(params))
    if unknown:
        raise ValueError(f"shared parameters {unknown[:5]} are not parameters of the model")
    with eval_mode(model):
        leaves = {name: params[name].clone().requires_grad_() for name in shared}
        losses, present = task_losses(_call(model, {**params, **leaves}, inputs))
        before = losses.detach().double().cpu()
        present = present.detach().cpu().bool()
        n = len(before)
        Z = torch.full((n, n), math.nan, dtype=torch.float64)
        for i in torch.nonzero(present).flatten().tolist():
            grads = torch.autograd.grad(losses[i], list(leaves.values()), retain_graph=True, allow_unused=True)
            stepped = {
                name: leaf.detach() if grad is None else leaf.detach() - lr * grad
                for (name, leaf), grad in zip(leaves.items(), grads, strict=True)
            }
            with torch.no_grad():
                after, _ = task_losses(_call(model, {**params, **stepped}, inputs))
            Z[i] = 1.0 - after.detach().double().cpu() / before
    Z[:, ~present | (before <= 0)] = math.nan
    return Z


class TagAverage:
    """TAG's average of Z over the recorded steps, entry by entry over the finite values (a task absent from a batch
    leaves that step out of its row and column only), and the cost of recording it.

    ``hook(...)`` gives the ``before_step(batch, step)`` callback of :func:`gradtag.training.run_schedule` that records
    every ``every``-th optimiser step (steps 0, every, 2·every, ...).
    """

    def __init__(self, num_tasks: int, every: int = 1):
        self.every = every
        self.total = np.zeros((num_tasks, num_tasks))
        self.counts = np.zeros((num_tasks, num_tasks), dtype=np.int64)
        self.steps = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.flops = SampledFlops()  # the look-aheads' FLOPs, counted at the first recorded step, per batch row

    def add(self, Z: torch.Tensor | np.ndarray) -> None:
        """Add one step's (n, n) Z (NaN entries skipped)."""
        Z = np.asarray(Z, dtype=np.float64)
        finite = np.isfinite(Z)
        self.total[finite] += Z[finite]
        self.counts += finite
        self.steps += 1

    def affinity(self) -> np.ndarray:
        """(n, n) float64, ``[i, j]`` = mean Z_{i→j} over the recorded steps; NaN where no step had both tasks."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.total / np.maximum(self.counts, 1), np.nan)

    def hook(self, model: torch.nn.Module, batch_losses, shared: list[str], lr: float):
        """The ``before_step(batch, step)`` callback: ``batch_losses(batch) -> (inputs, task_losses)`` turns a
        training batch into :func:`lookahead_affinity`'s arguments."""

        def before_step(batch, step: int) -> None:
            if step % self.every:
                return
            start, cpu_start = time.perf_counter(), time.process_time()
            inputs, task_losses = batch_losses(batch)
            with self.flops.measure(len(batch)):
                self.add(lookahead_affinity(model, inputs, task_losses, shared, lr))
            self.seconds += time.perf_counter() - start
            self.cpu_seconds += time.process_time() - cpu_start

        return before_step

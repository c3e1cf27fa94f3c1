"""Step 3 without the projection: the strong-penalty limit of the subset regressions, computed exactly at θ*.

For a large L2 strength λ every solver of :mod:`gradtag.regression` gives ŵ_S → −(1/λ) ∇_w L_S(0) = −(1/λ) Pᵀ ∇θ L_S(θ*)
(the regression's gradient at w = 0 is the projected gradient of the subset's training loss), so the estimate moves θ*
by Δ_S = P ŵ_S ≈ −(1/λ) P Pᵀ ∇θ L_S(θ*). P Pᵀ is the identity only up to the Johnson–Lindenstrauss error: inner
products of projected gradients are off by about 1/√d of the product of their norms, and on real graphs that noise,
not the linearisation, is what separates the estimate from the fine-tuned truth (README, "Measured levers").

:class:`ExactStep` computes the same limit with no projection:

    Δ_S = −(1/λ) ∇θ L_S(θ*),   L_S = mean_{k∈S} L_k   (the regression's normalisation, :mod:`gradtag.regression`),

with L_k task k's (class-balanced if θ* was) mean training BCE, and scores task j ∈ S by the linearised logits of
Eq. 4, o_j + J_j Δ_S = o_j − (1/λ) mean_{k∈S} J_j ∇θ L_k, J_j the exact Jacobian of task j's logits on its samples. The
products J_j ∇θ L_k (one forward-mode pass per task and direction, :func:`gradtag.gradients.jacobian_products`) are
shared by every subset and every λ, so a λ grid costs nothing more. Cost: n backward passes (the task gradients) plus
n × (samples scored) forward-mode products; memory n floats per scored sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from gradtag.flops import count_flops
from gradtag.gradients import batched_logits, flat_params, jacobian_products
from gradtag.regression import mean_bce
from gradtag.training import binary_f1, task_loss_gradients


def record_scores(scores: dict, split: str, task: int, holders: Sequence[int], logits: torch.Tensor, labels) -> None:
    """Add loss, F1 and accuracy of ``logits`` (m_j, N) — task ``task``'s logits on ``split`` under each of the subsets
    ``holders`` (m_j indices) — against ``labels`` (N,) to ``scores[(subset index, task)]``."""
    losses = mean_bce(logits, labels).cpu().numpy()
    predicted = (logits > 0).cpu().numpy()
    labels = labels > 0.5
    for row, index in enumerate(holders):
        entry = scores.setdefault((index, task), {})
        entry[f"{split}_loss"] = float(losses[row])
        entry[f"{split}_f1"] = binary_f1(predicted[row], labels)
        entry[f"{split}_accuracy"] = float(np.mean(predicted[row] == labels))


class ExactStep:
    """The shared products of the exact strong-penalty estimate for one base model (see the module docstring).

    Args:
        model: θ*, the network (left unchanged).
        dataset: its dataset (features, labels, splits).
        tasks: the tasks any subset holds; only these are differentiated and scored.
        balanced: whether θ* was trained with the class-balanced loss (then so is every L_k).
        device: where the products are computed.
        splits: the splits scored (memory: n float32 per sample of each).
        progress: show a tqdm bar over the (split, task) products.
    """

    def __init__(self, model, dataset, tasks: Sequence[int], balanced: bool, device, splits=("val",), progress=False):
        self.model, self.dataset, self.balanced, self.device, self.splits = model, dataset, balanced, device, splits
        self.tasks = list(tasks)
        self.column = {task: column for column, task in enumerate(self.tasks)}
        gradients = task_loss_gradients(model, dataset, self.tasks, balanced, device)  # (n, p)
        self.gradients = gradients.double()
        base = flat_params(model)
        self.base_norm = float(base.double().norm())
        self.outputs, self.products, self.labels = {}, {}, {}
        jobs = [(split, task) for split in splits for task in self.tasks]
        for split, task in tqdm(jobs, desc="exact-step products", disable=not progress):
            nodes = dataset.samples(task, split)
            x = dataset.features[nodes].to(device)
            self.outputs[split, task] = batched_logits(model, base, x)[:, task].double()
            self.products[split, task] = jacobian_products(model, x, gradients, output=task)  # (N, n) float32
            self.labels[split, task] = dataset.labels[nodes, task]

    def distances(self, subsets: Sequence[Sequence[int]], l2: float) -> np.ndarray:
        """(m,) ‖Δ_S‖ / ‖θ*‖ of every subset's move."""
        return np.array([float(self._mean_gradient(subset).norm()) / l2 / self.base_norm for subset in subsets])

    def _mean_gradient(self, subset: Sequence[int]) -> torch.Tensor:
        return self.gradients[[self.column[task] for task in subset]].mean(0)

    def scores(self, subsets: Sequence[Sequence[int]], l2: float) -> dict:
        """{(subset index, task): {"<split>_{loss,f1,accuracy}"}} of the linearised logits o_j + J_j Δ_S at λ = ``l2``."""
        if not l2 > 0:
            raise ValueError(f"the exact step needs λ > 0 (Δ_S = −∇L_S/λ), got {l2}")
        scores = {}
        for (split, task), products in self.products.items():
            holders = [index for index, subset in enumerate(subsets) if task in subset]
            if not holders:
                continue
            # (m_j, n) averaging weights: row i averages the columns of subset i's tasks
            averaging = torch.zeros(len(holders), len(self.tasks), dtype=torch.float64, device=products.device)
            for row, index in enumerate(holders):
                columns = [self.column[member] for member in subsets[index]]
                averaging[row, columns] = 1.0 / len(columns)
            logits = self.outputs[split, task][None, :] - (averaging @ products.double().T) / l2  # (m_j, N)
            record_scores(scores, split, task, holders, logits, self.labels[split, task])
        return scores


class SignStep:
    """An estimate shaped like the truth's optimiser: Δ_S = −η sign(ḡ_S), ḡ_S = mean_{k∈S} ∇θ L_k(θ*).

    The fine-tuned truth takes a few Adam steps; Adam's normalised update m̂/√v̂ is exactly sign(g) at its first step
    and stays close to it while the gradient keeps its direction, so its move is about −(steps · lr) sign(ḡ_S), where
    :class:`ExactStep` moves along −ḡ_S/λ. Scored like the exact step (linearised logits o_j + J_j Δ_S of Eq. 4 on the
    validation split), but Δ_S is not linear in the subset: J_j Δ_S takes one forward-mode product per subset holding
    j (m_j of them, where the exact step shares n per task). Uses an :class:`ExactStep`'s task gradients, logits and
    labels (same network, tasks and splits).
    """

    def __init__(self, exact: ExactStep):
        self.exact = exact

    def moves(self, subsets: Sequence[Sequence[int]], eta: float) -> torch.Tensor:
        """(m, p) float32 Δ_S of every subset."""
        return torch.stack([-eta * torch.sign(self.exact._mean_gradient(subset)) for subset in subsets]).float()

    def scores(self, subsets: Sequence[Sequence[int]], eta: float) -> dict:
        """{(subset index, task): {"<split>_{loss,f1,accuracy}"}} of o_j + J_j Δ_S with η = ``eta`` (steps × lr)."""
        moves = self.moves(subsets, eta)
        scores = {}
        for split, task in self.exact.products:
            holders = [index for index, subset in enumerate(subsets) if task in subset]
            if not holders:
                continue
            exact = self.exact
            x = exact.dataset.features[exact.dataset.samples(task, split)].to(exact.device)
            shift = jacobian_products(exact.model, x, moves[holders], output=task).double()  # (N, m_j)
            logits = self.exact.outputs[split, task][None, :] + shift.T
            record_scores(scores, split, task, holders, logits, self.exact.labels[split, task])
        return scores


def preparation_flops(model, dataset, tasks: Sequence[int], balanced: bool, device, splits=("val",), sampled: int = 2) -> int:
    """FLOPs of building :class:`ExactStep` for ``tasks`` (same arguments), without building it: the task gradients
    counted in full (n backward passes), the products counted for the first ``sampled`` tasks and scaled by the
    samples scored. Each sample's products cost the same whatever its task (n forward-mode passes through one
    network), so the count is the full build's up to rounding, at a fraction of its time — under the counter a full
    build takes several times as long as the build itself (n² products at 100 tasks: minutes)."""
    tasks = list(tasks)
    with count_flops() as counted:
        gradients = task_loss_gradients(model, dataset, tasks, balanced, device)
    total = counted.total
    base = flat_params(model)
    probed, probed_samples = 0, 0
    for split in splits:
        for task in tasks[:sampled]:
            x = dataset.features[dataset.samples(task, split)].to(device)
            with count_flops() as counted:
                batched_logits(model, base, x)
                jacobian_products(model, x, gradients, output=task)
            probed, probed_samples = probed + counted.total, probed_samples + len(x)
    scored = sum(len(dataset.samples(task, split)) for split in splits for task in tasks)
    return total + round(probed * scored / max(probed_samples, 1))

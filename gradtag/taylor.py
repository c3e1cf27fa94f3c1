"""The first-order Taylor expansion behind Grad-TAG (the paper's Table 1), measured where it is used.

:func:`taylor_residuals` compares a fine-tuned W's outputs with θ*'s expansion: f_W against f_θ* + ∇f_θ*·(W − θ*)
(and + ½ ΔᵀH Δ, Remark 3.1), over given samples, by exact forward-mode products (no projection).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gradtag.gradients import batched_logits, taylor_logits

METRICS = ("relative_distance", "residual_vs_change", "residual_second_order_vs_change", "residual_vs_output")


def taylor_residuals(
    model: nn.Module,
    base_params: torch.Tensor,
    tuned_params: torch.Tensor,
    x: torch.Tensor,
    tasks: torch.Tensor,
    batch_size: int = 4096,
    dtype: torch.dtype = torch.float64,
) -> dict:
    """How well the first-order expansion around θ* predicts the outputs of W (Eq. 3 of the paper, checked as in Table 1).

    With Δ = W − θ*, f_θ(x) the logit of sample x's own task, and the first-order prediction
    f̂(x) = f_θ*(x) + ∇θ f_θ*(x)·Δ, the sums run over the B samples:

    - ``residual_vs_change`` = Σ (f_W(x) − f̂(x))² / Σ (f_W(x) − f_θ*(x))²: the share of the change of the outputs
      (in squared norm) that the first-order term misses; → 0 like ‖Δ‖² as Δ → 0 (so its square root, the norm
      ratio, shrinks linearly in ‖Δ‖); 1 means the linear term explains nothing.
    - ``residual_second_order_vs_change``: the same with f̂ + ½ Δᵀ∇²f_θ*(x)Δ (Remark 3.1's second-order term, exact by
      forward-over-forward jvp): → 0 like ‖Δ‖⁴ where the network is smooth; what a second-order estimate could gain.
    - ``residual_vs_output`` = Σ (f_W(x) − f̂(x))² / Σ f_W(x)²: the error relative to the outputs themselves.
    - ``change_vs_output`` = Σ (f_W(x) − f_θ*(x))² / Σ f_W(x)²: how far the outputs moved at all (context).
    - ``relative_distance`` = ‖Δ‖ / ‖θ*‖ and ``distance`` = ‖Δ‖ (Euclidean norms over all trainable parameters).

    A ratio whose denominator is 0 is reported as 0 when its numerator is 0 too (Δ = 0: the expansion is exact).
    ∇f_θ*(x)·Δ is exact: a forward-mode ``torch.func.jvp`` of the functional model along Δ, for a whole batch at once.
    Everything is evaluated in eval mode (batch norm on running statistics, no dropout) and in ``dtype`` (float64 by
    default, so that round-off does not swamp the residual for a small Δ); ``model``'s own weights are not used.

    Args:
        model: maps (B, num_hops + 1, in_dim) to (B, T) logits; supplies the architecture and its buffers.
        base_params: (p,) θ*, the trainable parameters in ``named_parameters()`` order (as
            :func:`gradtag.gradients.flat_params` returns them).
        tuned_params: (p,) W, same order.
        x: (B, num_hops + 1, in_dim) float hop features of the samples (a node appears once per task it is scored for).
        tasks: (B,) int64 task index of each sample: whose logit is compared.
        batch_size: samples per jvp call (a memory knob; the result does not depend on it).
        dtype: floating dtype of the computation.

    Returns:
        dict of Python floats with the keys above, plus ``num_samples`` (int B).
    """
    device = base_params.device
    base_flat, tuned_flat = base_params.to(device, dtype), tuned_params.to(device, dtype)
    delta_flat = tuned_flat - base_flat
    x, own = x.to(device), tasks.to(device).long().reshape(-1, 1)
    # forward over forward: f, ∇f·Δ and Δᵀ∇²fΔ (the second-order term of Remark 3.1), each sample's own task
    f_base, linear, curvature = (
        term.gather(1, own).squeeze(1) for term in taylor_logits(model, base_flat, delta_flat, x, batch_size, dtype)
    )
    f_tuned = batched_logits(model, tuned_flat, x, batch_size, dtype).gather(1, own).squeeze(1)
    sums = {
        "residual": float((f_tuned - f_base - linear).pow(2).sum()),
        "residual_second": float((f_tuned - f_base - linear - 0.5 * curvature).pow(2).sum()),
        "change": float((f_tuned - f_base).pow(2).sum()),
        "output": float(f_tuned.pow(2).sum()),
    }

    def ratio(numerator: float, denominator: float) -> float:
        return numerator / denominator if denominator > 0 else (0.0 if numerator == 0 else float("inf"))

    distance = float(delta_flat.norm())
    return {
        "distance": distance,
        "relative_distance": ratio(distance, float(base_flat.norm())),
        "residual_vs_change": ratio(sums["residual"], sums["change"]),
        "residual_second_order_vs_change": ratio(sums["residual_second"], sums["change"]),
        "residual_vs_output": ratio(sums["residual"], sums["output"]),
        "change_vs_output": ratio(sums["change"], sums["output"]),
        "num_samples": len(x),
    }


def validation_pairs(dataset, subset: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, tasks): the hop features (B, num_hops + 1, in_dim) and task (B,) of every validation sample of the subset."""
    nodes = [dataset.samples(task, "val") for task in subset]
    owners = np.concatenate([np.full(len(samples), task) for task, samples in zip(subset, nodes, strict=True)])
    return dataset.features[np.concatenate(nodes)], torch.as_tensor(owners, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------------------- the script

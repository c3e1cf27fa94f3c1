"""Check the first-order Taylor expansion behind Grad-TAG (the paper's Table 1): is f_W ≈ f_θ* + ∇f_θ*·(W − θ*)?

Usage:
    python taylor_check.py --checkpoint saved/planted/all_seed0
    python taylor_check.py --checkpoint saved/planted/all_seed0 --subset-size 5 --num-subsets 5 --steps 10 25 50 100 200

Grad-TAG linearises the network around the base model θ* (Eq. 3). This script measures how good that is where it is
used: for ``--num-subsets`` random task subsets S (seeded by ``--seed``) it fine-tunes θ* on S for each of ``--steps``
optimiser steps (the checkpoint's own training settings, e.g. weight decay and batch size), and at each fine-tuned W
reports, over the validation samples of the tasks in S (see :func:`taylor_residuals`):

- relative distance   ‖W − θ*‖ / ‖θ*‖;
- residual vs change  Σ (f_W − f_θ* − ∇f_θ*·Δ)² / Σ (f_W − f_θ*)²   (Δ = W − θ*; the part of the change the
  first-order term misses);
- residual vs output  Σ (f_W − f_θ* − ∇f_θ*·Δ)² / Σ f_W²   (the paper's error relative to the outputs themselves).

The gradient term is exact (no projection): one forward-mode ``torch.func.jvp`` gives ∇f_θ*(x)·Δ for every sample.
The dataset is rebuilt from the checkpoint's config.json, so no data flag needs repeating. Prints a markdown table and
the averages per step count, and writes everything to ``<results-dir>/<dataset>_taylor.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from data import load_dataset
from gradtag.artifacts import UsageError, package_versions, read_config, run_main, weights_fingerprint, write_json
from gradtag.checks import POSITIVE, POSITIVE_INT, ArgumentParser
from gradtag.gradients import batched_logits, flat_params, taylor_logits
from gradtag.subsets import sample_subsets
from gradtag.training import TrainConfig, load_checkpoint, train_model
from steps.cli import add_folder_args, add_run_args, resolve_device, seed_everything

METRICS = ("relative_distance", "residual_vs_change", "residual_second_order_vs_change", "residual_vs_output")


# ---------------------------------------------------------------------------------------------------------- the math
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
def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="step-1 checkpoint folder θ*, e.g. saved/planted/all_seed0")
    parser.add_argument("--data-dir", default=None, help="where the dataset's files are, if not where step 1 found them")
    group = parser.add_argument_group("what to check")
    group.add_argument("--subset-size", type=POSITIVE_INT, default=5, help="tasks per random subset S")
    group.add_argument("--num-subsets", type=POSITIVE_INT, default=5, help="number of random subsets S (drawn with --seed)")
    group.add_argument(
        "--steps",
        type=POSITIVE_INT,
        nargs="+",
        default=[10, 25, 50, 100, 200],
        help="fine-tuning lengths: each subset is fine-tuned from θ* for each of these many optimiser steps",
    )
    group.add_argument(
        "--lr", type=POSITIVE, default=None, help="Adam learning rate of the fine-tuning (default: the checkpoint's own)"
    )
    group.add_argument(
        "--eval-batch-size", type=POSITIVE_INT, default=4096, help="samples per jvp call (memory knob; no effect on results)"
    )
    group.add_argument("--out", default=None, help="output JSON (default: <results-dir>/<dataset>_taylor.json)")
    group.add_argument("--overwrite", action="store_true", help="replace an existing output JSON instead of refusing")
    add_run_args(parser)
    add_folder_args(parser, "results")
    return parser


def validate(args: argparse.Namespace) -> None:
    if not (Path(args.checkpoint) / "config.json").is_file():
        raise UsageError(f"checkpoint {args.checkpoint} has no config.json; train it first with train_multitask.py")


def taylor_path(results_dir: str | Path, dataset: str) -> Path:
    """``<results-dir>/<dataset>_taylor.json``: this script's output."""
    return Path(results_dir) / f"{dataset}_taylor.json"


def fine_tuning_config(training: dict, steps: int, lr: float | None) -> TrainConfig:
    """The checkpoint's recorded training settings (weight decay, batch size, ...), for exactly ``steps`` steps."""
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    settings = {key: value for key, value in training.items() if key in known}
    settings["fixed_steps"] = steps
    if lr is not None:
        settings["lr"] = lr
    return TrainConfig(**settings)


def averages_by_steps(rows: list[dict], steps: list[int]) -> list[dict]:
    """Mean of each metric over the subsets, per step count (in the order of ``--steps``)."""
    return [
        {"steps": count, **{key: float(np.mean([row[key] for row in rows if row["steps"] == count])) for key in METRICS}}
        for count in steps
    ]


def print_table(rows: list[dict], averages: list[dict]) -> None:
    print(
        "| subset | steps | rel. distance ‖W−θ*‖/‖θ*‖ | residual vs change | 2nd-order residual vs change | residual vs output |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, row in [(row["subset"], row) for row in rows] + [("**average**", row) for row in averages]:
        ratios = " | ".join(f"{row[key]:.2e}" for key in METRICS[1:])
        print(f"| {label} | {row['steps']} | {row['relative_distance']:.4f} | {ratios} |")


def main(args: argparse.Namespace) -> None:
    validate(args)
    device = resolve_device(args.device)
    checkpoint = Path(args.checkpoint)
    checkpoint_config = read_config(checkpoint, "checkpoint")
    num_tasks = len(checkpoint_config["task_names"])
    if args.subset_size > num_tasks:
        raise UsageError(f"--subset-size {args.subset_size} exceeds the checkpoint's {num_tasks} tasks")
    out = Path(args.out) if args.out else taylor_path(args.results_dir, checkpoint_config["dataset"])
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    dataset = load_dataset(
        checkpoint_config["dataset"],
        args.data_dir or checkpoint_config["args"].get("data_dir"),
        **checkpoint_config["dataset_options"],
    )
    base_model, checkpoint_config = load_checkpoint(checkpoint, device, dataset)
    base_params = flat_params(base_model)
    steps = sorted(set(args.steps))

    # seeding: one --seed draws the subsets and seeds every fine-tuning run (data order and initial state)
    subsets = [list(subset) for subset in sample_subsets(dataset.num_tasks, args.num_subsets, args.subset_size, args.seed)]

    rows = []
    start = time.perf_counter()
    jobs = [(index, count) for index in range(len(subsets)) for count in steps]
    for index, count in tqdm(jobs, desc="fine-tune and expand", disable=args.no_progress):
        subset = subsets[index]
        model = copy.deepcopy(base_model)
        seed_everything(args.seed)
        train_model(model, dataset, subset, fine_tuning_config(checkpoint_config["training"], count, args.lr), device, args.seed)
        x, tasks = validation_pairs(dataset, subset)
        result = taylor_residuals(model, base_params, flat_params(model), x, tasks, batch_size=args.eval_batch_size)
        rows.append({"subset_id": index, "subset": " ".join(map(str, subset)), "steps": count, **result})
    seconds = time.perf_counter() - start

    averages = averages_by_steps(rows, steps)
    print_table(rows, averages)
    write_json(
        out,
        {
            "dataset": dataset.name,
            "dataset_fingerprint": dataset.fingerprint,
            "checkpoint": str(checkpoint),
            "checkpoint_fingerprint": weights_fingerprint(checkpoint / "model.pt"),
            "num_params": int(base_params.numel()),
            "subsets": subsets,
            "steps": steps,
            "training": {**vars(fine_tuning_config(checkpoint_config["training"], steps[-1], args.lr)), "fixed_steps": None},
            "samples": "validation samples of the tasks in each subset; f = the logit of the sample's own task",
            "definitions": {
                "relative_distance": "||W - θ*|| / ||θ*||",
                "residual_vs_change": "Σ (f_W - f_θ* - ∇f_θ*·(W - θ*))² / Σ (f_W - f_θ*)²",
                "residual_second_order_vs_change": "Σ (f_W - f_θ* - ∇f_θ*·Δ - ½ Δᵀ∇²f_θ*Δ)² / Σ (f_W - f_θ*)², Δ = W - θ*",
                "residual_vs_output": "Σ (f_W - f_θ* - ∇f_θ*·(W - θ*))² / Σ f_W²",
                "change_vs_output": "Σ (f_W - f_θ*)² / Σ f_W²",
            },
            "rows": rows,
            "averages": averages,
            "seed": args.seed,
            "seconds": seconds,
            "args": vars(args),
            "versions": package_versions(),
        },
    )
    print(
        f"Taylor check of {checkpoint}: {len(subsets)} subsets of {args.subset_size} tasks x {len(steps)} step counts "
        f"in {seconds:.1f}s; wrote {out}"
    )


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

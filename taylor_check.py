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

from gradtag.artifacts import run_main
from gradtag.checks import OUTPUT_FILE, POSITIVE, POSITIVE_INT, ArgumentParser
from gradtag.taylor import METRICS
from steps.cli import add_folder_args, add_run_args
from steps.taylor import TaylorJob, run


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
    group.add_argument("--out", default=None, type=OUTPUT_FILE, help="output JSON (default: <results-dir>/<dataset>_taylor.json)")
    group.add_argument("--overwrite", action="store_true", help="replace an existing output JSON instead of refusing")
    add_run_args(parser)
    add_folder_args(parser, "results")
    return parser


def print_table(rows: list[dict], averages: list[dict]) -> None:
    print(
        "| subset | steps | rel. distance ‖W−θ*‖/‖θ*‖ | residual vs change | 2nd-order residual vs change | residual vs output |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, row in [(row["subset"], row) for row in rows] + [("**average**", row) for row in averages]:
        ratios = " | ".join(f"{row[key]:.2e}" for key in METRICS[1:])
        print(f"| {label} | {row['steps']} | {row['relative_distance']:.4f} | {ratios} |")


def main(args: argparse.Namespace) -> None:
    record = run(TaylorJob.from_args(args))
    print_table(record["rows"], record["averages"])
    print(
        f"Taylor check of {args.checkpoint}: {len(record['subsets'])} subsets of {args.subset_size} tasks x "
        f"{len(record['steps'])} step counts in {record['seconds']:.1f}s; wrote {record['out']}"
    )


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

"""An estimate shaped like the truth's optimiser (Adam's sign-like step) against the exact gradient step, both scored
against a fine-tuned truth on the same subsets (no training: θ* and the truth CSV of an earlier run).

Usage:
    python -m benchmarks.sign_step --gradients gradients/dblp/all_seed0_d200 \
        --trained results/dblp_m200_a5_s0_finetune.csv --l2 0.01 0.1 1 --eta 0.015 0.05 --threads 1

For every setting it prints one markdown row: per-task ρ over the subsets holding each task, partner ρ over the rows
of T (Eq. 1) and the paper's orientation over its columns, all on the validation loss, against the truth; and the
seconds of the setting's scores (the exact step's shared products, built once, are timed in their own row). The
exact step is ``--solver exact-step`` at λ (:class:`gradtag.exact_step.ExactStep`), the sign step
:class:`gradtag.exact_step.SignStep` at η = Adam steps × lr (the truth's default: 15 × 1e-3 = 0.015).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from gradtag.artifacts import read_json, run_main
from gradtag.checks import POSITIVE, POSITIVE_INT, ArgumentParser
from gradtag.evaluation import comparison_report
from gradtag.exact_step import ExactStep, SignStep
from gradtag.results import read_results
from gradtag.scores import score_records
from steps.cli import resolve_device, use_threads
from steps.estimate import averaged_rows, load_base


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gradients", required=True, help="a step-2 folder: its config names θ* and the dataset")
    parser.add_argument("--trained", required=True, help="the fine-tuned truth CSV (train_multitask.py --subsets-file)")
    parser.add_argument("--l2", type=POSITIVE, nargs="+", default=[0.01, 0.1, 1.0], help="the exact step's λ values")
    parser.add_argument("--eta", type=POSITIVE, nargs="+", default=[0.015], help="the sign step's η values (steps × lr)")
    parser.add_argument("--max-subsets", type=POSITIVE_INT, default=400, help="score at most this many of the truth's subsets")
    parser.add_argument("--seed", type=int, default=0, help="which subsets are kept when there are more")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=POSITIVE_INT, default=1, help="torch threads")
    return parser


def main(args: argparse.Namespace) -> None:
    use_threads(args.threads)
    device = resolve_device(args.device)
    config = read_json(Path(args.gradients) / "config.json")
    dataset, model = load_base(config, device)
    meta = read_json(Path(args.trained).with_suffix(".json"))
    subsets = [tuple(subset) for subset in meta["subsets"]]
    keep = np.sort(np.random.default_rng(args.seed).permutation(len(subsets))[: args.max_subsets])
    kept = {int(index) for index in keep}
    truth = score_records([row for row in read_results(args.trained) if row["subset_id"] in kept], "loss")
    subsets = [subsets[index] for index in keep]
    num_tasks = dataset.num_tasks
    tasks = sorted({task for subset in subsets for task in subset})
    balanced = read_json(Path(config["checkpoint"]) / "config.json").get("training", {}).get("balanced", False)
    start = time.process_time()
    exact = ExactStep(model, dataset, tasks, balanced, device, ("val",))
    print(f"{args.trained}: {len(subsets)} of {len(meta['subsets'])} subsets, n = {num_tasks}; validation loss")
    print("| estimate | setting | ρ task/subsets | partner ρ (rows) | paper's ρ (columns) | CPU s |")
    print("|---|---|---|---|---|---|")
    print(f"| exact step's shared products | – | – | – | – | {time.process_time() - start:.1f} |")
    sign = SignStep(exact)
    settings = [("exact step", f"λ = {l2:g}", exact.scores, l2) for l2 in args.l2]
    settings += [("sign step", f"η = {eta:g}", sign.scores, eta) for eta in args.eta]
    for name, setting, scores, value in settings:
        start = time.process_time()
        estimate = score_records(averaged_rows([scores(subsets, value)], subsets), "loss")
        seconds = time.process_time() - start
        report = comparison_report(estimate, truth, num_tasks)
        figures = [report[key] for key in ("spearman_per_task_subsets", "spearman_per_task_rows", "spearman_per_task_columns")]
        print(f"| {name} | {setting} | " + " | ".join(f"{value:.3f}" for value in figures) + f" | {seconds:.1f} |")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

"""The truth's regime: how the fine-tuned truth, and the estimate's agreement with it, change with its length and lr.

Usage:
    python -m benchmarks.truth_regime --checkpoint saved/dblp/all_seed0 --subsets-file sampled_tasks/dblp_m200_a5_s0.txt \
        --estimated results/dblp_m200_a5_s0_estimate.csv --grid 5:1e-2 15:1e-2 50:1e-2 15:1e-3 50:1e-3 150:1e-3

The estimate is a first-order model of fine-tuning θ* on a subset (paper Sec. 3.1: the fine-tuned weights stay within
~10% of θ*). A truth trained far longer moves θ* by half its norm, where the first-order expansion misses a third of
the change (``taylor_check.py``); a truth so short that it barely moves has no partner effect to match. For every
(steps, lr) of ``--grid`` this trains the fine-tuned truth on every subset of ``--subsets-file`` from ``--checkpoint``
(``train_multitask.py --init-from``, the checkpoint's own data and training settings; resumable: CSVs in
``--results-dir`` named ``<subsets stem>_ft<steps>_lr<lr>.csv``) and prints one markdown row per setting:

- distance: ‖W − θ*‖ / ‖θ*‖ of the fine-tuned models, median [10th, 90th percentile];
- partner effect: share of tasks whose truth depends on their partners (F-test, p < 0.05,
  :func:`gradtag.evaluation.partner_effects`) — a truth counts only when it is a real training (moves θ* ≥ 5%) with
  a partner effect for most tasks;
- split-half ρ: the truth's T against itself over two halves of the subsets, Spearman–Brown-corrected to all of them
  (the ceiling any estimate can reach against it at this m);
- per-task ρ (over subsets, and over rows of T) of the estimate against it, for validation loss and F1;
- the truth's wall seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

import train_multitask
from benchmarks.vet_planted import run_step
from gradtag.artifacts import UsageError, read_json, run_main
from gradtag.evaluation import comparison_report, distance_summary, partner_effects, split_half_reliability
from gradtag.results import read_results
from gradtag.scores import score_records


def parse_setting(text: str) -> tuple[int, float]:
    """``STEPS:LR`` -> (steps, lr)."""
    try:
        steps, lr = text.split(":")
        setting = int(steps), float(lr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--grid entry {text!r}: write STEPS:LR, e.g. 15:1e-2") from None
    if setting[0] < 1 or setting[1] <= 0:
        raise argparse.ArgumentTypeError(f"--grid entry {text!r}: steps must be ≥ 1 and lr > 0")
    return setting


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="θ*: the step-1 checkpoint folder the truth fine-tunes")
    parser.add_argument("--subsets-file", required=True, help="the subsets the estimate was made on")
    parser.add_argument("--estimated", required=True, help="the estimate CSV (fit_linear_estimates.py) on those subsets")
    parser.add_argument(
        "--grid",
        nargs="+",
        type=parse_setting,
        default=[parse_setting(text) for text in ("5:1e-2", "15:1e-2", "50:1e-2", "15:1e-3", "50:1e-3", "150:1e-3")],
        help="fine-tuning settings STEPS:LR (Adam steps, learning rate) to train the truth with",
    )
    parser.add_argument("--results-dir", default="results/truth_regime", help="where the truth CSVs go (resumable)")
    parser.add_argument("--data-dir", default=None, help="dataset files, if not where step 1 found them")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="device for the trainings")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning batches and of the split halves")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch and BLAS threads (1: two competing threads on a shared 2-core machine spin)"
    )
    parser.add_argument("--verbose", action="store_true", help="show the trainings' own output")
    return parser


def truth_argv(checkpoint: Path, config: dict, args, steps: int, lr: float, name: str) -> list[str]:
    """train_multitask.py flags that fine-tune ``checkpoint`` with its own dataset and training settings."""
    argv = ["--dataset", config["dataset"], "--init-from", str(checkpoint), "--subsets-file", args.subsets_file]
    data_dir = args.data_dir or config["args"].get("data_dir")
    if data_dir:
        argv += ["--data-dir", str(data_dir)]
    for key, value in config["dataset_options"].items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    training = config["training"]
    argv += ["--weight-decay", str(training["weight_decay"]), "--batch-size", str(training["batch_size"])]
    argv += ["--balanced" if training["balanced"] else "--no-balanced"]
    argv += ["--fixed-steps", str(steps), "--lr", str(lr), "--results-dir", args.results_dir, "--results-name", name]
    return argv + ["--seed", str(args.seed), "--device", args.device, "--no-progress"]


def regime_row(truth_rows: list[dict], estimate_rows: list[dict], num_tasks: int, seed: int) -> dict:
    """The figures of one truth setting (see the module docstring)."""
    row = {"distance": distance_summary(truth_rows)}
    for score in ("loss", "f1"):
        truth, estimate = score_records(truth_rows, score), score_records(estimate_rows, score)
        report = comparison_report(estimate, truth, num_tasks)
        row[score] = {
            "partner_effect_share": partner_effects(truth, num_tasks).share_significant,
            "split_half_rows_full": split_half_reliability(truth, num_tasks, seed=seed).rows_full,
            "spearman_per_task_subsets": report["spearman_per_task_subsets"],
            "spearman_per_task_rows": report["spearman_per_task_rows"],
        }
    return row


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    checkpoint = Path(args.checkpoint)
    config = read_json(checkpoint / "config.json")
    estimate_rows = read_results(args.estimated)
    num_tasks = len(config["task_names"])
    subsets_stem = Path(args.subsets_file).stem
    estimate_meta = read_json(Path(args.estimated).with_suffix(".json"))
    if Path(estimate_meta["subsets_file"]).stem != subsets_stem:
        raise UsageError(f"--estimated {args.estimated} was made on {estimate_meta['subsets_file']}, not {args.subsets_file}")
    Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    log = Path(args.results_dir) / "truth_regime.log"
    table = []
    for steps, lr in args.grid:
        name = f"{subsets_stem}_ft{steps}_lr{lr:g}"
        seconds = run_step(train_multitask, truth_argv(checkpoint, config, args, steps, lr, name), log, args.verbose)
        csv_path = Path(args.results_dir) / f"{name}.csv"
        row = regime_row(read_results(csv_path), estimate_rows, num_tasks, args.seed)
        row.update(steps=steps, lr=lr, seconds=read_json(csv_path.with_suffix(".json"))["seconds"], wall=seconds)
        table.append(row)
        print(f"done {name} in {seconds:.1f}s", flush=True)
    estimate_split = {
        score: split_half_reliability(score_records(estimate_rows, score), num_tasks, seed=args.seed).rows_full
        for score in ("loss", "f1")
    }
    print_table(table, estimate_split, estimate_rows)


def print_table(table: list[dict], estimate_split: dict, estimate_rows: list[dict]) -> None:
    print(
        "| truth: Adam steps, lr | distance ‖W−θ*‖/‖θ*‖ median [p10, p90] | tasks with partner effect (loss / F1) "
        "| truth split-half ρ, all m (loss / F1) | per-task ρ subsets (loss / F1) | per-task ρ rows of T (loss / F1) | truth s |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in table:
        d = row["distance"]
        loss, f1 = row["loss"], row["f1"]
        print(
            f"| {row['steps']}, {row['lr']:g} | {d['median']:.3f} [{d['p10']:.3f}, {d['p90']:.3f}] "
            f"| {loss['partner_effect_share']:.2f} / {f1['partner_effect_share']:.2f} "
            f"| {loss['split_half_rows_full']:.3f} / {f1['split_half_rows_full']:.3f} "
            f"| {loss['spearman_per_task_subsets']:.3f} / {f1['spearman_per_task_subsets']:.3f} "
            f"| {loss['spearman_per_task_rows']:.3f} / {f1['spearman_per_task_rows']:.3f} | {row['seconds']:.1f} |"
        )
    moved = distance_summary(estimate_rows)
    moved_text = "–" if moved is None else f"{moved['median']:.3f}"
    print(
        f"estimate: split-half ρ (all m) {estimate_split['loss']:.3f} / {estimate_split['f1']:.3f} (loss / F1); "
        f"its implied move ‖P ŵ‖/‖θ*‖, median {moved_text}"
    )


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

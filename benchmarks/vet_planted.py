"""Vet the planted default: does its true affinity have group structure, and does the Grad-TAG estimate recover it?

Usage:
    python -m benchmarks.vet_planted                      # seeds 0 1 2, 100 subsets of size 5, folders in results/vet
    python -m benchmarks.vet_planted --seeds 0 1 --subsets 200 --scratch-seeds 3
    python -m benchmarks.vet_planted --seeds 0 --data-flags "--planted-noise 0.2" --base-flags "--epochs 100"

For every generator seed (``--planted-seed``) it runs the default pipeline through the scripts' ``main()`` functions,
in ``<work-dir>/seed<s>/`` (wiped first, so every run starts fresh):

1. ``train_multitask.py``: θ* on all tasks (the dataset's recommended model and training settings);
2. ``collect_gradients.py``: projected gradients of θ* (d = ``--project-dim``);
3. ``sample_subsets.py``: ``--subsets`` random subsets of size ``--subset-size``;
4. ``fit_linear_estimates.py``: the estimate f̂(S, j) (λ = ``--l2``);
5. ``train_multitask.py --init-from θ*``: truth B, θ* fine-tuned on each subset for a fixed number of steps — the
   quantity the linearisation approximates, and the truth the estimate is scored against;
6. optionally (``--scratch-seeds k``) truth A: each subset trained from scratch with k seeds (slow; for reference).

Scores are validation losses (higher affinity = lower loss). Per seed it prints a markdown table: θ* train/test
macro-F1 (and the trivial all-positive F1), the truth's group effect (change of -val loss per same-group partner in
S, within-task OLS, with its t statistic), the ARI against the planted groups of the SDP clustering (k = number of
groups, rows centred) of the true and of the estimated higher-order affinity T, the estimate-versus-truth figures
of :func:`gradtag.evaluation.comparison_report` (per-task Spearman over subsets and over rows of T, pooled Spearman
— labelled, it flatters —, relative distance on raw and row-centred T) and the wall time of every step.

Vet criterion (FIDELITY §1: a planted truth's structure depends on the generator seed, so check it on several): a
seed passes when the truth has group structure — ARI(true T, planted) ≥ ``--min-ari`` and group-effect t ≥
``--min-t`` — and the estimate recovers it: ARI(estimated T, planted) ≥ ``--min-ari``. The per-task Spearman
target (``--min-spearman``, over subsets) is reported beside it as a separate column.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import collect_gradients
import fit_linear_estimates
import sample_subsets
import train_multitask
from data import read_planted_groups
from gradtag.affinity import higher_order_affinity
from gradtag.artifacts import UsageError, read_json, run_main, write_json
from gradtag.clustering import cluster, prepare_affinity
from gradtag.evaluation import adjusted_rand, comparison_report, group_effect, per_task_spearman_subsets, seed_ceiling
from gradtag.results import read_results
from gradtag.scores import records_by_seed, score_records


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="generator seeds (--planted-seed) to vet")
    parser.add_argument("--subsets", type=int, default=100, help="number of random subsets m (truth and estimate)")
    parser.add_argument("--subset-size", type=int, default=5, help="tasks per subset a")
    parser.add_argument("--subsets-seed", type=int, default=0, help="seed of the subset sampling")
    parser.add_argument("--l2", type=float, default=0.1, help="L2 strength λ of the step-3 regressions")
    parser.add_argument("--project-dim", type=int, default=200, help="projection dimension d of step 2")
    parser.add_argument(
        "--scratch-seeds", type=int, default=0, help="also train truth A (from scratch) with this many seeds; 0 skips it"
    )
    parser.add_argument(
        "--data-flags",
        default="",
        help='extra dataset flags for every step, e.g. "--planted-noise 0.2" (explore a variant before writing it into DATASETS)',
    )
    parser.add_argument("--train-flags", default="", help='extra model/training flags for every training, e.g. "--head-width 4"')
    parser.add_argument("--base-flags", default="", help='extra flags for the θ* training only, e.g. "--epochs 100"')
    parser.add_argument("--finetune-flags", default="", help='extra flags for the truth-B fine-tuning only, e.g. "--lr 3e-3"')
    parser.add_argument("--min-ari", type=float, default=0.9, help="vet criterion: ARI of true and estimated T vs planted")
    parser.add_argument("--min-t", type=float, default=4.0, help="vet criterion: t statistic of the truth's group effect")
    parser.add_argument("--min-spearman", type=float, default=0.8, help="target for the per-task Spearman over subsets")
    parser.add_argument("--work-dir", default="results/vet", help="root of every artifact this script writes")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="device for every step")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and BLAS threads (1: on a shared 2-core machine, 2 threads competing with another process made "
        "the tiny model's steps ~20x slower)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the steps' own output instead of logging it")
    parser.add_argument(
        "--table-from",
        nargs="+",
        default=None,
        metavar="VET_JSON",
        help="run nothing: print one README table, a row per seed, from the vet.json files of earlier runs",
    )
    return parser


def print_seed_rows(paths: list[str]) -> None:
    """The README's vet table from saved ``vet.json`` files: one row per generator seed, in seed order."""
    outs = sorted((out for path in paths for out in read_json(path)["seeds"]), key=lambda out: out["seed"])
    print(
        "| generator seed | θ* test F1 (all-positive) | truth group effect per partner (t) | ARI true T | ARI estimated T "
        "| per-task ρ | passes |\n|---|---|---|---|---|---|---|"
    )
    for out in outs:
        print(
            f"| {out['seed']} | {out['theta_test_f1']:.3f} ({out['trivial_test_f1']:.3f}) | {out['effect_slope']:+.4f} "
            f"({out['effect_t']:.1f}) | {out['ari_true_b']:.2f} | {out['ari_est']:.2f} | "
            f"{out['vs_b_spearman_per_task_subsets']:.3f} | {'**yes**' if out['passes'] else 'no'} |"
        )


def run_step(module, argv: list[str], log: Path, verbose: bool) -> float:
    """Call ``module.main`` on parsed ``argv``; the step's prints go to ``log`` (appended). Returns wall seconds."""
    args = module.get_args_parser().parse_args(argv)
    start = time.perf_counter()
    if verbose:
        module.main(args)
    else:
        with open(log, "a") as fh, contextlib.redirect_stdout(fh):
            print(f"$ {module.__name__} {shlex.join(argv)}", flush=True)
            module.main(args)
    return time.perf_counter() - start


def true_t_ari(records, planted: list[list[int]], n: int) -> float:
    """ARI against the planted groups of the SDP clustering (k = number of groups) of the row-centred T of records.

    A pair no subset holds (likely with ~100 subsets of 5 out of 20 tasks) is NaN in T; it gets its row's mean.
    """
    T = higher_order_affinity(records, n)[0]
    T = np.where(np.isfinite(T), T, np.nanmean(T, axis=1, keepdims=True))  # pairs in no subset: the row's level
    return adjusted_rand(cluster(prepare_affinity(T), k=len(planted), method="sdp").groups, planted, n)


def vet_seed(seed: int, args) -> dict:
    """Run the pipeline for generator seed ``seed`` in ``<work-dir>/seed<seed>``; return its figures."""
    folder = Path(args.work_dir) / f"seed{seed}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    log = folder / "log.txt"
    data = ["--dataset", "planted", "--planted-seed", str(seed), "--data-dir", str(folder / "data")]
    data += shlex.split(args.data_flags)
    run = ["--device", args.device, "--no-progress"]
    train = shlex.split(args.train_flags)
    saved, subsets_file = folder / "saved", folder / "subsets.txt"
    checkpoint = saved / "planted" / "all_seed0"
    gradients = folder / "gradients" / "planted" / f"all_seed0_d{args.project_dim}"
    results = folder / "results"
    seconds = {}

    seconds["theta"] = run_step(
        train_multitask,
        data + run + train + ["--saved-dir", str(saved), "--overwrite"] + shlex.split(args.base_flags),
        log,
        args.verbose,
    )
    seconds["gradients"] = run_step(
        collect_gradients,
        ["--checkpoint", str(checkpoint), "--project-dim", str(args.project_dim), "--out", str(gradients)] + run,
        log,
        args.verbose,
    )
    run_step(
        sample_subsets,
        data[:4]
        + shlex.split(args.data_flags)
        + ["--num-subsets", str(args.subsets), "--subset-size", str(args.subset_size)]
        + ["--seed", str(args.subsets_seed), "--out", str(subsets_file), "--overwrite"],
        log,
        args.verbose,
    )
    seconds["estimate"] = run_step(
        fit_linear_estimates,
        ["--gradients", str(gradients), "--subsets-file", str(subsets_file), "--l2", str(args.l2)]
        + ["--results-dir", str(results), "--name", "subsets"]
        + run,
        log,
        args.verbose,
    )
    seconds["truth_b"] = run_step(
        train_multitask,
        data
        + run
        + train
        + ["--subsets-file", str(subsets_file), "--init-from", str(checkpoint)]
        + ["--results-dir", str(results), "--results-name", "finetune"]
        + shlex.split(args.finetune_flags),
        log,
        args.verbose,
    )
    if args.scratch_seeds:
        seconds["truth_a"] = run_step(
            train_multitask,
            data
            + run
            + train
            + ["--subsets-file", str(subsets_file), "--truth-seeds", str(args.scratch_seeds)]
            + ["--results-dir", str(results), "--results-name", "scratch"],
            log,
            args.verbose,
        )

    metrics = read_json(checkpoint / "metrics.json")
    n = len(metrics["tasks"])
    planted = read_planted_groups(folder / "data" / "planted_groups.txt", n)
    trivial = _trivial_f1(checkpoint)
    est = score_records(read_results(results / "subsets_estimate.csv"))
    truth_b = score_records(read_results(results / "finetune.csv"))
    effect = group_effect(truth_b, planted, n)
    out = {
        "seed": seed,
        "theta_train_f1": metrics["train"]["macro_f1"],
        "theta_test_f1": metrics["test"]["macro_f1"],
        "trivial_test_f1": trivial,
        "theta_epochs": metrics["epochs_run"],
        "effect_slope": effect.slope,
        "effect_t": effect.t_stat,
        "ari_true_b": true_t_ari(truth_b, planted, n),
        "ari_est": true_t_ari(est, planted, n),
        "est_effect_slope": group_effect(est, planted, n).slope,
        "truth_b_spread": float(np.std([score for _, _, score in truth_b])),
        **{f"vs_b_{key}": value for key, value in comparison_report(est, truth_b, n).items()},
        "seconds": seconds,
    }
    if args.scratch_seeds:
        rows = read_results(results / "scratch.csv")
        truth_a = score_records(rows)
        out["ari_true_a"] = true_t_ari(truth_a, planted, n)
        out["effect_t_a"] = group_effect(truth_a, planted, n).t_stat
        out["vs_a_spearman_per_task_subsets"] = per_task_spearman_subsets(est, truth_a).mean
        out["b_vs_a_spearman_per_task_subsets"] = per_task_spearman_subsets(truth_b, truth_a).mean
        if args.scratch_seeds >= 2:
            out["a_seed_ceiling"] = seed_ceiling(list(records_by_seed(rows).values())).mean
    out["passes"] = bool(out["ari_true_b"] >= args.min_ari and out["effect_t"] >= args.min_t and out["ari_est"] >= args.min_ari)
    out["spearman_target_met"] = bool(out["vs_b_spearman_per_task_subsets"] >= args.min_spearman)
    write_json(folder / "vet.json", out)
    return out


def _trivial_f1(checkpoint: Path) -> float:
    """Test macro-F1 of predicting every test node positive (the floor θ* must clear)."""
    from data import load_dataset

    config = read_json(checkpoint / "config.json")
    dataset = load_dataset(config["dataset"], config["args"]["data_dir"], **config["dataset_options"])
    f1s = []
    for task in range(dataset.num_tasks):
        positives = dataset.labels[dataset.samples(task, "test"), task]
        f1s.append(2 * positives.sum() / (positives.sum() + len(positives)))
    return float(np.mean(f1s))


def print_table(out: dict) -> None:
    s = out["seconds"]
    lines = [
        (
            "θ* macro-F1 train / test (trivial all-positive test)",
            f"{out['theta_train_f1']:.3f} / {out['theta_test_f1']:.3f} ({out['trivial_test_f1']:.3f})",
        ),
        ("θ* epochs run", f"{out['theta_epochs']}"),
        ("truth B: spread of -val loss (std over (S, j))", f"{out['truth_b_spread']:.4f}"),
        ("truth B group effect: slope per same-group partner (t)", f"{out['effect_slope']:+.4f} ({out['effect_t']:.1f})"),
        ("estimate group effect: slope", f"{out['est_effect_slope']:+.4f}"),
        ("ARI(true T, planted), truth B", f"{out['ari_true_b']:.2f}"),
        ("ARI(estimated T, planted)", f"{out['ari_est']:.2f}"),
        ("per-task Spearman vs B, over subsets", f"{out['vs_b_spearman_per_task_subsets']:.3f}"),
        ("per-task Spearman vs B, over rows of T", f"{out['vs_b_spearman_per_task_rows']:.3f}"),
        ("pooled Spearman vs B (flatters: task levels)", f"{out['vs_b_spearman_pooled']:.3f}"),
        (
            "relative distance vs B, raw / row-centred",
            f"{out['vs_b_relative_distance_raw']:.4f} / {out['vs_b_relative_distance_row_centered']:.3f}",
        ),
    ]
    if "ari_true_a" in out:
        lines += [
            ("truth A (scratch): ARI(true T, planted), group-effect t", f"{out['ari_true_a']:.2f}, {out['effect_t_a']:.1f}"),
            (
                "per-task Spearman over subsets: est vs A / B vs A",
                f"{out['vs_a_spearman_per_task_subsets']:.3f} / {out['b_vs_a_spearman_per_task_subsets']:.3f}",
            ),
        ]
        if "a_seed_ceiling" in out:
            lines.append(("truth A seed-to-seed per-task Spearman (ceiling)", f"{out['a_seed_ceiling']:.3f}"))
    times = ", ".join(f"{key} {value:.1f}" for key, value in s.items())
    lines += [("wall seconds", times), ("vet: passes / Spearman target met", f"{out['passes']} / {out['spearman_target_met']}")]
    print(f"\n### planted seed {out['seed']}\n\n| figure | value |\n|---|---|")
    for name, value in lines:
        print(f"| {name} | {value} |")


def main(args: argparse.Namespace) -> None:
    if args.table_from:
        print_seed_rows(args.table_from)
        return
    if args.subsets < 2 or args.subset_size < 2:
        raise UsageError("--subsets and --subset-size must be at least 2")
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    outs = []
    for seed in args.seeds:
        outs.append(vet_seed(seed, args))
        print_table(outs[-1])
    passed = [out["seed"] for out in outs if out["passes"]]
    print(
        f"\n{len(passed)} of {len(outs)} seeds pass (ARI of true-B and estimated T ≥ {args.min_ari}, group-effect t ≥ "
        f"{args.min_t}): {passed}; per-task Spearman ≥ {args.min_spearman} on "
        f"{[out['seed'] for out in outs if out['spearman_target_met']]}"
    )
    write_json(Path(args.work_dir) / "vet.json", {"args": vars(args), "seeds": outs})
    print(f"wrote {args.work_dir}/vet.json and seed<s>/ folders")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

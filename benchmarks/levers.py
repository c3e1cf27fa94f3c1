"""Measured levers of the estimate, one table: M, d, λ, scoring, solver, score and m, each against the fine-tuned truth.

Usage:
    python -m benchmarks.levers --work-dir results/levers/dblp20 \
        --data-flags "--dataset dblp --data-dir ../shared/data/dblp --num-tasks 20" \
        --model-flags "--hop-width 16 --head-width 16 --epochs 300 --patience 50 --balanced --weight-decay 1e-2" \
        --bases 5 --subsets 200 1000 2000 --calibrate 40 --k 5

Everything lives in ``--work-dir`` and every step resumes (checkpoints, gradient folders and truth CSVs already there
are kept), so a killed run picks up where it stopped and a second run only re-estimates. Prepared once:

- θ* for seeds 0 .. ``--bases``−1 (``train_multitask.py``, the given data and model flags), each with its health check;
- projected gradients of every base at d = 200, and of base 0 at every d of ``--dims``;
- ``max(--subsets)`` subsets of size ``--subset-size`` (seed 0; the first m lines are the subsets for m) and
  ``--calibrate`` other subsets (seed 1) to calibrate λ on;
- the fine-tuned truth (``train_multitask.py --init-from``, its defaults: 15 Adam steps at lr 1e-3) on the first
  ``min(--subsets)`` subsets and the calibration subsets from every base, and on the remaining subsets from base 0.

Then each row of the table changes one setting of the default (M = 1, d = 200, m = min(--subsets), λ calibrated on the
trained calibration subsets for validation loss, newton-cg, linearized scoring) and runs ``fit_linear_estimates.py``;
the "exact step" rows use ``--solver exact-step`` (the strong-λ limit without the projection, λ calibrated the same way).
An estimate over M bases is compared with the truth averaged over the same M θ*s (the target for M > 1); "θ* ceiling"
is the per-task ρ between the truths of those θ*s (how far one θ*'s truth predicts another's), and "split-half" the
truth's own T over two halves of its subsets (rows ρ, Spearman–Brown-corrected to all m): the ceilings to read every
ρ against. Cost: step 3's wall seconds (its sidecar) and the CPU seconds of the whole call (loading included).
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

import collect_gradients
import fit_linear_estimates
import sample_subsets
import train_multitask
from benchmarks.vet_planted import run_step
from gradtag.affinity import fill_uncovered
from gradtag.artifacts import read_json, run_main, write_json
from gradtag.clustering import cluster, prepare_affinity
from gradtag.evaluation import (
    adjusted_rand,
    comparison_report,
    distance_summary,
    partner_effects,
    seed_ceiling,
    split_half_reliability,
)
from gradtag.results import read_results, read_subsets, write_results, write_subsets
from gradtag.scores import affinity_matrix, records_by_seed, score_records


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True, help="folder for every artifact of the benchmark (resumable)")
    parser.add_argument("--data-flags", default="", help="dataset flags of train_multitask.py and sample_subsets.py")
    parser.add_argument("--model-flags", default="", help="model and training flags of θ* (train_multitask.py)")
    parser.add_argument("--bases", type=int, default=5, help="θ* seeds trained (the largest M of --ms)")
    parser.add_argument("--ms", nargs="+", type=int, default=[1, 3, 5], help="numbers of bases M to average")
    parser.add_argument("--dims", nargs="+", type=int, default=[100, 200, 400], help="projection dimensions d")
    parser.add_argument("--subsets", nargs="+", type=int, default=[200, 1000, 2000], help="numbers of subsets m")
    parser.add_argument("--subset-size", type=int, default=5, help="tasks per subset")
    parser.add_argument("--calibrate", type=int, default=40, help="separately trained subsets λ is calibrated on")
    parser.add_argument("--l2-values", nargs="+", type=float, default=[1e-2, 1e-1, 1.0, 10.0], help="fixed λ rows")
    parser.add_argument("--evals", nargs="+", default=["reconstructed", "second-order"], help="scorings compared with linearized")
    parser.add_argument(
        "--l2-grid",
        nargs="+",
        type=float,
        default=list(fit_linear_estimates.L2_GRID),
        help="λ values the calibration tries (fit_linear_estimates.py --l2-grid)",
    )
    parser.add_argument(
        "--kronecker-ranks", nargs="+", type=int, default=[16, 4], help="ranks of the structured-projection rows (d = 200)"
    )
    parser.add_argument("--k", type=int, default=5, help="groups for the ARI of estimated against true T")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="device of every step")
    parser.add_argument("--only", nargs="+", default=None, help="run only the rows with these labels")
    parser.add_argument("--prepare-only", action="store_true", help="build the artifacts, estimate nothing")
    parser.add_argument("--verbose", action="store_true", help="show the steps' own output")
    return parser


class Work:
    """Paths of the benchmark's artifacts inside ``--work-dir``."""

    def __init__(self, root: str | Path, dataset: str):
        self.root, self.dataset = Path(root), dataset
        self.log = self.root / "levers.log"

    def base(self, seed: int) -> Path:
        return self.root / "saved" / self.dataset / f"all_seed{seed}"

    def gradients(self, seed: int, dim: int, kronecker_rank: int | None = None) -> Path:
        suffix = "" if kronecker_rank is None else f"_kronecker{kronecker_rank}"
        return self.root / "gradients" / f"all_seed{seed}_d{dim}{suffix}"

    def subsets(self, m: int) -> Path:
        return self.root / "sampled_tasks" / f"subsets_m{m}.txt"

    @property
    def calibration_subsets(self) -> Path:
        return self.root / "sampled_tasks" / "calibration.txt"

    @property
    def results(self) -> Path:
        return self.root / "results"


def prepare(args, work: Work, data: list[str], model: list[str]) -> None:
    """Train, project, sample and fine-tune whatever ``work`` does not hold yet (see the module docstring)."""
    common = ["--device", args.device, "--no-progress"]
    folders = ["--saved-dir", str(work.root / "saved"), "--results-dir", str(work.results)]
    if not all((work.base(seed) / "model.pt").is_file() for seed in range(args.bases)):
        step(args, work, train_multitask, [*data, *model, *folders, "--runs", str(args.bases), "--overwrite", *common])
    for seed in range(args.bases):
        for dim in sorted(set(args.dims) | {200}) if seed == 0 else [200]:
            flags = ["--checkpoint", str(work.base(seed)), "--project-dim", str(dim), "--out", str(work.gradients(seed, dim))]
            step(args, work, collect_gradients, [*flags, *common])
    for rank in args.kronecker_ranks:  # the structured projection, base 0 at d = 200
        flags = ["--checkpoint", str(work.base(0)), "--out", str(work.gradients(0, 200, rank))]
        flags += ["--projection", "kronecker", "--kronecker-rank", str(rank)]
        step(args, work, collect_gradients, [*flags, *common])
    largest, smallest = max(args.subsets), min(args.subsets)
    sampled = [(work.subsets(largest), largest, 0), (work.calibration_subsets, args.calibrate, 1)]
    for path, count, seed in sampled:
        if not path.is_file():
            flags = ["--num-subsets", str(count), "--subset-size", str(args.subset_size), "--seed", str(seed)]
            step(args, work, sample_subsets, [*data, *flags, "--out", str(path)])
    subsets = read_subsets(work.subsets(largest), 10**9)
    for m in args.subsets:
        if not work.subsets(m).is_file():
            write_subsets(work.subsets(m), subsets[:m], header=f"the first {m} of {work.subsets(largest).name}")
    rest = work.root / "sampled_tasks" / "rest.txt"
    if largest > smallest and not rest.is_file():
        write_subsets(rest, subsets[smallest:], header=f"lines {smallest + 1}.. of {work.subsets(largest).name}")
    bases = [str(work.base(seed)) for seed in range(args.bases)]
    truths = [(work.subsets(smallest), bases, "truth_all_bases"), (work.calibration_subsets, bases, "calibration")]
    if largest > smallest:
        truths.append((rest, bases[:1], "truth_rest"))
    for path, init, name in truths:
        flags = ["--subsets-file", str(path), "--init-from", *init, "--results-name", name]
        step(args, work, train_multitask, [*data, *model, *folders, *flags, *common])


def step(args, work: Work, module, argv: list[str]) -> float:
    seconds = run_step(module, argv, work.log, args.verbose)
    print(f"  {module.__name__} done in {seconds:.1f}s", flush=True)
    return seconds


def truth_rows(work: Work, m: int, bases: int, smallest: int) -> list[dict]:
    """Truth rows on the first ``m`` subsets from bases 0 .. bases−1 (rows from the remaining subsets: base 0 only)."""
    rows = [row for row in read_results(work.results / "truth_all_bases.csv") if row["seed"] < bases]
    if m > smallest:
        keep = {" ".join(map(str, s)) for s in read_subsets(work.subsets(m), 10**9)}
        rows += [row for row in read_results(work.results / "truth_rest.csv") if row["subset"] in keep]
    return rows


def truth_seconds(work: Work, m: int, bases: int, smallest: int, trained_bases: int) -> float:
    """Wall seconds the fine-tuned truth took on the first ``m`` subsets from ``bases`` θ*s (from its sidecars,
    assuming every subset costs the same)."""
    seconds = read_json(work.results / "truth_all_bases.json")["seconds"] * bases / trained_bases
    if m > smallest:
        rest = len(read_subsets(work.root / "sampled_tasks" / "rest.txt", 10**9))
        seconds += read_json(work.results / "truth_rest.json")["seconds"] * (m - smallest) / rest
    return seconds


def calibration_file(work: Work, bases: int) -> Path:
    """The calibration truth restricted to bases 0 .. bases−1 (a CSV with its sidecar, for ``--calibrate-with``)."""
    path = work.results / f"calibration_M{bases}.csv"
    if not path.is_file():
        rows = [row for row in read_results(work.results / "calibration.csv") if row["seed"] < bases]
        write_results(path, rows)
        write_json(path.with_suffix(".json"), read_json(work.results / "calibration.json"))
    return path


def settings(args) -> list[dict]:
    """Rows of the table: the default and one change of it per row."""
    default = {"M": 1, "d": 200, "m": min(args.subsets), "flags": [], "calibrate": "loss"}
    rows = [{"label": "default", **default}]
    rows += [{**default, "label": f"λ = {l2:g} (fixed)", "flags": ["--l2", str(l2)], "calibrate": None} for l2 in args.l2_values]
    rows += [{**default, "label": "λ calibrated on F1", "calibrate": "f1"}]
    rows += [{**default, "label": f"d = {d}", "d": d} for d in args.dims if d != 200]
    rows += [{**default, "label": f"M = {M}", "M": M} for M in args.ms if M != 1]
    rows += [{**default, "label": f"{mode} scoring", "flags": ["--eval", mode]} for mode in args.evals]
    rows += [{**default, "label": "one Newton step", "flags": ["--solver", "onestep"]}]
    exact = {**default, "flags": ["--solver", "exact-step"]}
    rows += [{**exact, "label": "exact step (no projection)"}]
    rows += [{**exact, "label": f"exact step, M = {M}", "M": M} for M in args.ms if M != 1]

    rows += [{**default, "label": f"m = {m}", "m": m} for m in args.subsets if m != default["m"]]
    both = ["--calibrate-solvers", "exact-step", "newton-cg"]  # what the scripts do
    rows += [{**default, "label": f"solver and λ calibrated, M = {M}", "M": M, "flags": both} for M in args.ms]
    rows += [{**default, "label": f"Kronecker projection, rank {r}", "kronecker": r} for r in args.kronecker_ranks]
    # each row keeps its index in the full list: estimates are cached by it (row<index>), --only or not
    return [{**row, "index": index} for index, row in enumerate(rows) if args.only is None or row["label"] in args.only]


def estimate(args, work: Work, row: dict, index: int) -> tuple[list[dict], dict, float]:
    """Run step 3 for one setting; returns its rows, sidecar and the CPU seconds of the call."""
    name = f"row{index}"
    gradients = [str(work.gradients(seed, row["d"] if seed == 0 else 200, row.get("kronecker"))) for seed in range(row["M"])]
    if row["d"] != 200 and row["M"] > 1:
        raise ValueError("a setting changes one thing: d with M = 1")
    argv = ["--gradients", *gradients, "--subsets-file", str(work.subsets(row["m"])), "--name", name]
    argv += ["--results-dir", str(work.results / "estimates"), "--no-count-flops", "--device", args.device, "--no-progress"]
    if row["calibrate"]:
        argv += ["--calibrate-with", str(calibration_file(work, row["M"])), "--score", row["calibrate"]]
        argv += ["--l2-grid", *map(str, args.l2_grid)]
    argv += row["flags"]
    path = work.results / "estimates" / f"{name}_estimate.csv"
    record = path.with_name(f"{name}_call.json")  # a rerun with the same call reuses the estimate (and its timing)
    if path.is_file() and record.is_file() and read_json(record)["argv"] == argv:
        cpu = read_json(record)["cpu_seconds"]
    else:
        cpu = time.process_time()
        step(args, work, fit_linear_estimates, argv)
        cpu = time.process_time() - cpu
        write_json(record, {"argv": argv, "cpu_seconds": cpu})
    return read_results(path), read_json(path.with_suffix(".json")), cpu


def figures(estimate_rows: list[dict], truth: list[dict], num_tasks: int, k: int) -> dict:
    """Per score: per-task ρ over subsets and rows of T, row-centred distance; ARI of clustered T (loss)."""
    out = {}
    for score in ("loss", "f1"):
        est, true = score_records(estimate_rows, score), score_records(truth, score)
        out[score] = comparison_report(est, true, num_tasks)
    groups = []
    for rows in (estimate_rows, truth):
        affinity, _ = affinity_matrix(score_records(rows, "loss"), num_tasks, pairwise=False)
        groups.append(cluster(prepare_affinity(fill_uncovered(affinity)[0]), k, "sdp").groups)
    out["ari"] = adjusted_rand(groups[0], groups[1], num_tasks)
    return out


def main(args: argparse.Namespace) -> None:
    threadpool_limits(args.threads)
    torch.set_num_threads(args.threads)
    data, model = shlex.split(args.data_flags), shlex.split(args.model_flags)
    if max(args.ms) > args.bases:
        raise SystemExit(f"error: --ms {max(args.ms)} needs --bases ≥ {max(args.ms)}")
    work = Work(args.work_dir, train_multitask.get_args_parser().parse_args(data).dataset)
    work.root.mkdir(parents=True, exist_ok=True)
    print(f"preparing {work.root} (log: {work.log})", flush=True)
    prepare(args, work, data, model)
    if args.prepare_only:
        return
    num_tasks = len(read_json(work.base(0) / "config.json")["task_names"])
    smallest = min(args.subsets)
    table = []
    for row in settings(args):
        print(f"row {row['label']}", flush=True)
        estimate_rows, meta, cpu = estimate(args, work, row, row["index"])
        truth = truth_rows(work, row["m"], row["M"], smallest)
        result = figures(estimate_rows, truth, num_tasks, args.k)
        per_seed = records_by_seed(truth, "loss")
        result["ceiling"] = seed_ceiling(list(per_seed.values())).mean if len(per_seed) > 1 else None
        result["split_half"] = split_half_reliability(score_records(truth, "loss"), num_tasks).rows_full
        result["partner_effect"] = partner_effects(score_records(truth, "loss"), num_tasks).share_significant
        result["truth_distance"] = distance_summary(truth)["median"]
        result["truth_seconds"] = truth_seconds(work, row["m"], row["M"], smallest, args.bases)
        result.update(label=row["label"], l2=meta["l2"], seconds=meta["seconds"], cpu=cpu)
        table.append(result)
    write_json(work.root / "levers.json", table)
    print_table(table, args)


def print_table(table: list[dict], args) -> None:
    first = table[0]
    effect = first["partner_effect"]
    effect_text = "untestable (fewer subsets per task than partners)" if effect != effect else f"{effect:.0%} of tasks"
    print(
        f"\nthreads: {args.threads}; truth: fine-tuned θ* (train_multitask.py --init-from defaults), moving θ* by "
        f"{first['truth_distance']:.3f} of its norm (median), partner effect significant for {effect_text} (loss); "
        "per-task ρ and distance as in compare_affinities.py\n"
    )
    print(
        "| setting | λ | per-task ρ subsets (loss / F1) | per-task ρ rows of T (loss / F1) | distance row-centred (loss) "
        "| ARI est. vs true T | θ* ceiling ρ | truth split-half ρ rows | step 3 s (wall) | CPU s (call) "
        "| truth s (wall) | truth ÷ step 3 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in table:
        loss, f1 = row["loss"], row["f1"]
        ceiling = "–" if row["ceiling"] is None else f"{row['ceiling']:.3f}"
        print(
            f"| {row['label']} | {row['l2']:g} | {loss['spearman_per_task_subsets']:.3f} / {f1['spearman_per_task_subsets']:.3f} "
            f"| {loss['spearman_per_task_rows']:.3f} / {f1['spearman_per_task_rows']:.3f} "
            f"| {loss['relative_distance_row_centered']:.3f} | {row['ari']:.3f} | {ceiling} | {row['split_half']:.3f} "
            f"| {row['seconds']:.2f} | {row['cpu']:.1f} | {row['truth_seconds']:.1f} "
            f"| {row['truth_seconds'] / row['seconds']:.0f}x |"
        )


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

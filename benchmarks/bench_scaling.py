"""How steps 1-3 grow with the number of tasks, subsets and nodes: three doublings each, the exponent fitted.

Usage: python -m benchmarks.bench_scaling [--work-dir results/bench_scaling] [--threads 1]

On the embedded default's generator, from a base point (n = 20 tasks, m = 200 subsets of 5, N = 2,400 nodes), one
axis at a time is doubled twice: tasks n (planted tasks per group 5, 10, 20), subsets m (200, 400, 800) and nodes N
(2,400, 4,800, 9,600; 200-node cores as in the default). At every point each step runs as its own process: step 1
(θ*, a fixed 200 Adam steps so that convergence does not enter the timing), step 2 (projected gradients, d = 200) and
step 3 (newton-cg at λ = 0.1, no FLOP counting). Prints the seconds each step records for its own work (wall and CPU;
process start-up, imports and data loading excluded: they are the same at every point) and the process's peak
resident memory, and per axis the exponent b of time ≈ a · size^b (least squares on the three points; 1 = linear).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BASE = {"tasks": 20, "subsets": 200, "nodes": 2400}
AXES = {"tasks": (20, 40, 80), "subsets": (200, 400, 800), "nodes": (2400, 4800, 9600)}
STEPS = ("step 1", "step 2", "step 3")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", default="results/bench_scaling", help="folder for every point's artifacts")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads of every step")
    return parser


def peak_mb(argv: list[str], cwd: Path) -> float:
    """Run ``python argv`` from ``cwd``; its peak resident memory in MB."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.read().decode()[-500:]}")
    return usage.ru_maxrss / 1024


def recorded(path: Path) -> tuple[float, float]:
    """The wall and CPU seconds a step recorded for its own work in ``path`` (a JSON cost record)."""
    record = json.loads(path.read_text())
    return record["seconds"], record["cpu_seconds"]


def run_point(point: dict, folder: Path, threads: int) -> dict[str, tuple[float, float, float]]:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    data = ["--num-tasks", str(point["tasks"]), "--planted-nodes", str(point["nodes"]), "--data-dir", "planted"]
    threads_flag = ["--threads", str(threads), "--no-progress"]
    subsets = f"sampled_tasks/planted_m{point['subsets']}_a5_s0.txt"
    commands = {
        "step 1": [str(REPO / "train_multitask.py"), *data, "--fixed-steps", "200", *threads_flag],
        "step 2": [str(REPO / "collect_gradients.py"), "--checkpoint", "saved/planted/all_seed0", *threads_flag],
        "step 3": [
            str(REPO / "fit_linear_estimates.py"),
            *("--gradients", "gradients/planted/all_seed0_d200", "--subsets-file", subsets),
            *("--l2", "0.1", "--no-count-flops", *threads_flag),
        ],
    }
    records = {
        "step 1": folder / "saved" / "planted" / "all_seed0" / "metrics.json",
        "step 2": folder / "gradients" / "planted" / "all_seed0_d200" / "cost_shard0of1.json",
        "step 3": folder / "results" / f"planted_m{point['subsets']}_a5_s0_estimate.json",
    }
    results = {}
    for step in STEPS:
        if step == "step 3":
            peak_mb([str(REPO / "sample_subsets.py"), *data[:4], "--num-subsets", str(point["subsets"])], folder)
        peak = peak_mb(commands[step], folder)
        results[step] = (*recorded(records[step]), peak)
    return results


def exponent(sizes, times) -> float:
    return float(np.polyfit(np.log(sizes), np.log(times), 1)[0])


def main(args: argparse.Namespace) -> None:
    work = Path(args.work_dir).resolve()
    rows, slopes = [], {}
    for axis, sizes in AXES.items():
        per_step = {step: [] for step in STEPS}
        for size in sizes:
            point = {**BASE, axis: size}
            results = run_point(point, work / f"{axis}_{size}", args.threads)
            for step in STEPS:
                per_step[step].append(results[step][0])
                rows.append((axis, size, step, *results[step]))
        slopes[axis] = {step: exponent(sizes, per_step[step]) for step in STEPS}
    print(f"threads per step: {args.threads}; base point n = 20 tasks, m = 200 subsets, N = 2,400 nodes\n")
    print("| axis | size | step | wall s | CPU s | peak MB |\n|---|---|---|---|---|---|")
    for axis, size, step, wall, cpu, peak in rows:
        print(f"| {axis} | {size} | {step} | {wall:.2f} | {cpu:.2f} | {peak:.0f} |")
    print("\n| axis | exponent of step 1 | step 2 | step 3 |\n|---|---|---|---|")
    for axis, by_step in slopes.items():
        print(f"| {axis} | " + " | ".join(f"{by_step[step]:.2f}" for step in STEPS) + " |")


if __name__ == "__main__":
    main(get_args_parser().parse_args())

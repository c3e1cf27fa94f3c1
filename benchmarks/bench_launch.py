"""Wall and CPU time of the embedded default's fine-tuned truth run as shards: one process against the launchers.

Usage: python -m benchmarks.bench_launch [--subsets 200] [--shards 4] [--work-dir results/bench_launch]

Prepares θ* and ``--subsets`` subsets of the embedded default in ``--work-dir`` (once), then trains the fine-tuned
truth on them (``train_multitask.py --init-from``, the default 15 Adam steps) in each setting: one process, no shards;
``--shards`` shards through ``--launcher local`` and ``--launcher ray`` with 1 and with 2 workers. Every setting runs as
its own ``python train_multitask.py`` process (so its CPU seconds include its workers: a launcher's children, and for
Ray the local cluster it starts and stops), and its merged CSV is checked byte for byte against the single process's.
Prints a markdown table: wall seconds, CPU seconds, wall relative to one process, and the thread count (1 per shard).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subsets", type=int, default=200, help="subsets m of the truth")
    parser.add_argument("--shards", type=int, default=4, help="shards of the launched runs")
    parser.add_argument("--work-dir", default="results/bench_launch", help="folder for θ*, subsets and results")
    return parser


def run(argv: list[str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds (this child and everything it waited for) of ``python argv`` from ``cwd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(args: argparse.Namespace) -> None:
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    train = str(REPO / "train_multitask.py")
    subsets = f"sampled_tasks/planted_m{args.subsets}_a5_s0.txt"
    if not (work / "saved" / "planted" / "all_seed0" / "model.pt").exists():
        run([train, "--no-progress"], work)
    if not (work / subsets).exists():
        run([str(REPO / "sample_subsets.py"), "--num-subsets", str(args.subsets), "--subset-size", "5"], work)
    truth = [train, "--subsets-file", subsets, "--init-from", "saved/planted/all_seed0", "--no-progress", "--overwrite"]
    settings = {
        "one process": ["--results-name", "single"],
        "local, 1 worker": ["--results-name", "local1", "--launcher", "local", "--workers", "1"],
        "local, 2 workers": ["--results-name", "local2", "--launcher", "local", "--workers", "2"],
        "ray, 1 worker": ["--results-name", "ray1", "--launcher", "ray", "--workers", "1"],
        "ray, 2 workers": ["--results-name", "ray2", "--launcher", "ray", "--workers", "2"],
    }
    rows = []
    for label, flags in settings.items():
        shards = [] if label == "one process" else ["--num-shards", str(args.shards)]
        wall, cpu = run([*truth, *flags, *shards, "--threads-per-shard", "1"], work) if shards else run([*truth, *flags], work)
        same = (work / "results" / f"{flags[1]}.csv").read_bytes() == (work / "results" / "single.csv").read_bytes()
        rows.append((label, wall, cpu, same))
    print(
        f"Truth on the embedded default: {args.subsets} subsets × 15 Adam steps; launched runs: {args.shards} shards, "
        "1 torch thread per shard; one process: torch's default threads\n"
    )
    print("| setting | wall s | CPU s | wall ÷ one process | merged CSV = one process's |\n|---|---|---|---|---|")
    for label, wall, cpu, same in rows:
        print(f"| {label} | {wall:.1f} | {cpu:.1f} | {wall / rows[0][1]:.2f} | {'yes' if same else '**no**'} |")


if __name__ == "__main__":
    main(get_args_parser().parse_args())

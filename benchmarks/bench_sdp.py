"""Time the SDP of Alg. 2 (SCS) and its rounding on planted block matrices; print a markdown table.

Each size runs in a fresh process, so its peak resident memory (``getrusage``, includes ~150 MB of imports) is its own.
The planted matrix is 1 within a group and 0 across, plus Gaussian noise of std ``--noise``, tasks shuffled.

Usage:
    python benchmarks/bench_sdp.py --sizes 20 50 100 200 500
    python benchmarks/bench_sdp.py --sizes 100 --group-size 5 --noise 0.8 --json results/bench_sdp.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing the package

from gradtag.artifacts import run_main, write_json  # noqa: E402
from gradtag.clustering import groups_to_labels, round_sdp, sdp_cluster, symmetrize  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 50, 100, 200, 500], help="numbers of tasks n to time")
    parser.add_argument("--group-size", type=int, default=10, help="tasks per planted group; k = max(2, n // group-size)")
    parser.add_argument("--noise", type=float, default=0.5, help="std of the Gaussian noise added to the 0/1 block matrix")
    parser.add_argument("--seed", type=int, default=0, help="seed of the planted labels and the noise")
    parser.add_argument("--json", default=None, help="optional path to also save the rows as JSON")
    return parser


def planted_block_matrix(n: int, k: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(T (n, n) float64, labels (n,) int64)``: 1 within a planted group, 0 across, plus N(0, noise^2) entries."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % k)
    T = (labels[:, None] == labels[None, :]).astype(np.float64) + noise * rng.standard_normal((n, n))
    return T, labels


def bench_one(n: int, k: int, noise: float, seed: int) -> dict:
    """Solve and round one planted instance; runs in its own process (see ``main``)."""
    from sklearn.metrics import adjusted_rand_score

    T, labels = planted_block_matrix(n, k, noise, seed)
    start = time.perf_counter()
    X = sdp_cluster(T, k)
    solve_seconds = time.perf_counter() - start
    start = time.perf_counter()
    rounding = round_sdp(X, symmetrize(T), k)
    round_seconds = time.perf_counter() - start
    found = groups_to_labels(rounding.groups, n)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {
        "n": n,
        "k": k,
        "noise": noise,
        "solve_seconds": solve_seconds,
        "round_seconds": round_seconds,
        "peak_rss_mb": peak_mb,
        "exact_k": rounding.exact,
        "n_groups": len(rounding.groups),
        "lambda": rounding.lam,
        "ari": float(adjusted_rand_score(labels, found)),
    }


def main(args) -> list[dict]:
    rows = []
    print("| n | k | noise | SDP solve (s) | rounding (s) | peak RSS (MB) | groups | exact k | lambda * n | ARI |")
    print("|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|")
    context = multiprocessing.get_context("spawn")
    for n in args.sizes:
        k = max(2, n // args.group_size)
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            row = pool.submit(bench_one, n, k, args.noise, args.seed).result()
        rows.append(row)
        lam_n = f"{row['lambda'] * n:.2f}" if row["lambda"] is not None else "-"
        print(
            f"| {n} | {k} | {args.noise} | {row['solve_seconds']:.2f} | {row['round_seconds']:.2f} | "
            f"{row['peak_rss_mb']:.0f} | {row['n_groups']} | {row['exact_k']} | {lam_n} | {row['ari']:.3f} |",
            flush=True,
        )
    if args.json:
        write_json(args.json, {"args": vars(args), "rows": rows})
    return rows


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

"""Time the subset regressions of step 3 on synthetic data shaped like real projected gradients.

Usage: python -m benchmarks.bench_regression [--n-tasks 20 100] [--subsets 200] [--naive-subsets 3]

For each number of tasks n: n tasks of 200–2000 training rows, d = 200, m random subsets of size n/4. Times the
batched solvers of :func:`gradtag.regression.fit_subsets` (newton, newton-cg, onestep) on all m subsets, and two
naive paths on the first ``--naive-subsets`` subsets only, extrapolated to m (said so in the table): one scipy
L-BFGS fit per subset (the exact objective, offsets included) and newton-cg with batch size 1. Prints a markdown
table: seconds per subset, time relative to batched newton-cg, and the largest coefficient difference from the
batched explicit-Hessian Newton weights. Thread count is fixed (``--threads``): on a shared machine, BLAS threads
competing with other processes make timings swing by 10× or more.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from gradtag.regression import fit_subset_scipy, fit_subsets, prepare_tasks


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-tasks", type=int, nargs="+", default=[20, 100], help="numbers of tasks to benchmark")
    parser.add_argument("--subsets", type=int, default=200, help="subsets m fitted by the batched solvers")
    parser.add_argument("--naive-subsets", type=int, default=3, help="subsets fitted one by one, then extrapolated to m")
    parser.add_argument("--project-dim", type=int, default=200, help="projection dimension d")
    parser.add_argument("--rows", type=int, nargs=2, default=[200, 2000], help="min and max training rows per task")
    parser.add_argument("--l2", type=float, default=0.1, help="L2 strength λ on the mean-normalised objective")
    parser.add_argument("--batch-size", type=int, default=64, help="subsets per batch of the batched solvers")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and subsets")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (1: stable on a shared machine)")
    return parser


def synthetic_tasks(n: int, d: int, rows: tuple[int, int], rng: np.random.Generator):
    """n tasks with float32 gradients (N_j, d), base logits around −1.5 and labels from a shared-plus-own signal."""
    shared = rng.normal(size=d) / np.sqrt(d)
    G_list, offsets_list, labels_list = [], [], []
    for _ in range(n):
        size = int(rng.integers(rows[0], rows[1] + 1))
        G = rng.normal(size=(size, d)).astype(np.float32)
        offsets = rng.normal(-1.5, 1.0, size=size).astype(np.float32)
        w_true = shared + rng.normal(size=d) / np.sqrt(d)
        labels = (rng.random(size) < 1 / (1 + np.exp(-(offsets + G @ w_true)))).astype(np.float32)
        G_list.append(G)
        offsets_list.append(offsets)
        labels_list.append(labels)
    return G_list, offsets_list, labels_list


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def bench(n: int, args, rng: np.random.Generator) -> list[dict]:
    data, prep_s = timed(lambda: prepare_tasks(*synthetic_tasks(n, args.project_dim, tuple(args.rows), rng), args.device))
    subsets = [tuple(sorted(rng.choice(n, size=max(1, n // 4), replace=False).tolist())) for _ in range(args.subsets)]
    few = subsets[: args.naive_subsets]
    newton, newton_s = timed(lambda: fit_subsets(data, subsets, args.l2, "newton", batch_size=args.batch_size))
    cg, cg_s = timed(lambda: fit_subsets(data, subsets, args.l2, "newton-cg", batch_size=args.batch_size))
    onestep, onestep_s = timed(lambda: fit_subsets(data, subsets, args.l2, "onestep", batch_size=args.batch_size))
    single, single_s = timed(lambda: fit_subsets(data, few, args.l2, "newton-cg", batch_size=1))
    scipy_w, scipy_s = timed(lambda: np.stack([fit_subset_scipy(data, subset, args.l2) for subset in few]))
    W = newton.weights.cpu().numpy()
    m, k = len(subsets), len(few)
    rows_per_subset = np.mean([sum(len(data.gradients[j]) for j in s) for s in subsets])
    print(
        f"n={n}: statistics {prep_s:.2f} s; {rows_per_subset:.0f} rows per subset; newton steps "
        f"{newton.n_iter.float().mean():.1f} mean / {newton.n_iter.max()} max (newton-cg {cg.n_iter.float().mean():.1f} / "
        f"{cg.n_iter.max()}); all converged: {bool(newton.converged.all() and cg.converged.all())}; "
        f"one-step objective gap max {float((onestep.loss - newton.loss).max()):.2e}"
    )
    extrapolated = f"{k} subsets, extrapolated"

    def row(method, seconds, subsets_timed, weights, note=""):
        diff = float(np.abs(weights.cpu().numpy() - W[: len(weights)]).max())
        return {"n": n, "method": method, "per": seconds / subsets_timed, "diff": diff, "note": note}

    return [
        row(f"newton-cg, batched ({args.batch_size})", cg_s, m, cg.weights),
        row(f"newton (explicit Hessians), batched ({args.batch_size})", newton_s, m, newton.weights, "diff reference"),
        row(f"onestep, batched ({args.batch_size})", onestep_s, m, onestep.weights),
        row("newton-cg, one subset at a time", single_s, k, single.weights, extrapolated),
        row("scipy L-BFGS per subset (naive)", scipy_s, k, torch.from_numpy(scipy_w), extrapolated),
    ]


def main(args) -> None:
    rng = np.random.default_rng(args.seed)
    results = []
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with threadpool_limits(args.threads):
            for n in args.n_tasks:
                results += bench(n, args, rng)
    finally:
        torch.set_num_threads(previous_threads)
    print(
        f"\nd={args.project_dim}, m={args.subsets} subsets of size n/4, {args.rows[0]}–{args.rows[1]} rows per task, "
        f"λ={args.l2}, tol 1e-8 on max|∇L_S|, device {args.device}, {args.threads} thread(s) for torch and BLAS\n"
    )
    print("| n | method | ms per subset | s for all m | time ÷ batched newton-cg | max abs coef diff vs batched newton | note |")
    print("|---|---|---|---|---|---|---|")
    for row in results:
        base = next(r["per"] for r in results if r["n"] == row["n"] and r["method"].startswith("newton-cg, batched"))
        print(
            f"| {row['n']} | {row['method']} | {row['per'] * 1e3:.1f} | {row['per'] * args.subsets:.1f} | "
            f"{row['per'] / base:.2f} | {row['diff']:.1e} | {row['note']} |"
        )


if __name__ == "__main__":
    main(get_args_parser().parse_args())

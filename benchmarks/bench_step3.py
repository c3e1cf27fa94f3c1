"""Step 3's regressions on real projected gradients: our batched solvers against scikit-learn one subset at a time.

Usage: python -m benchmarks.bench_step3 --gradients gradients/planted/all_seed0_d200 [--subsets 200 2000] [--threads 1 2]

Reads a step-2 folder (the training rows of every task), draws ``--subsets`` random subsets of ``--subset-size`` tasks
and times, per thread count: ``fit_subsets`` (newton-cg, the default) at batch sizes 64 (the default) and 512, and
scikit-learn's ``LogisticRegression`` with its defaults (lbfgs, C = 1/λ, no intercept) fitted one subset at a time on
the same rows — what a user would write. sklearn takes no offset (the base model's logits), so it solves a different
problem; the table gives its time, not its answers. It is run on the first ``--sklearn-subsets`` subsets and
extrapolated to m (said so). Prints wall and CPU seconds per subset and the ratio to sklearn, and, on those first
subsets, the largest difference of our weights and of our validation scores (mean BCE, Eq. 4) from the float64
explicit-Hessian Newton solver (``solver="newton"``), the exactness check of newton-cg's float32 work.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from gradtag.checkpoints import gradient_file
from gradtag.regression import fit_subsets, linearized_scores, prepare_tasks
from gradtag.subsets import sample_subsets


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gradients", required=True, help="a step-2 folder (collect_gradients.py)")
    parser.add_argument("--subsets", type=int, nargs="+", default=[200, 2000], help="numbers of subsets m")
    parser.add_argument("--subset-size", type=int, default=5, help="tasks per subset")
    parser.add_argument("--sklearn-subsets", type=int, default=50, help="subsets sklearn fits (then extrapolated to m)")
    parser.add_argument("--l2", type=float, default=0.1, help="λ (the embedded default's calibrated value)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch and BLAS thread counts")
    return parser


def load_rows(folder: str, split: str = "train"):
    G, offsets, labels, task = [], [], [], 0
    while gradient_file(folder, task, "train", "gradients").is_file():
        exists = gradient_file(folder, task, split, "gradients").is_file()
        G.append(np.load(gradient_file(folder, task, split, "gradients")) if exists else None)
        offsets.append(np.load(gradient_file(folder, task, split, "outputs")) if exists else None)
        labels.append(np.load(gradient_file(folder, task, split, "labels")) if exists else None)
        task += 1
    return G, offsets, labels


def max_differences(data, validation, subsets, weights, l2: float) -> tuple[float, float]:
    """Largest |Δw| and |Δ validation loss| of ``weights`` (for ``subsets``) from the explicit float64 Newton fit."""
    reference = fit_subsets(data, subsets, l2, solver="newton").weights
    ours, theirs = (linearized_scores(*validation, subsets, w) for w in (weights, reference))
    scores = max((abs(ours[key][0] - theirs[key][0]) for key in ours if np.isfinite(ours[key][0])), default=0.0)
    return float((weights - reference).abs().max()), scores


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def sklearn_fits(G, labels, subsets, l2: float) -> None:
    from sklearn.linear_model import LogisticRegression

    for subset in subsets:
        X = np.concatenate([G[task] for task in subset])
        y = np.concatenate([labels[task] for task in subset])
        LogisticRegression(C=1.0 / l2, fit_intercept=False).fit(X, y)


def main(args: argparse.Namespace) -> None:
    G, offsets, labels = load_rows(args.gradients)
    validation = load_rows(args.gradients, "val")
    data = prepare_tasks(G, offsets, labels)
    sklearn_fits(G, labels, [(0, 1)], args.l2)  # warm-up: sklearn's first fit pays one-off import and setup costs
    fit_subsets(data, [(0, 1)], args.l2)
    rows = sum(len(g) for g in G)
    print(f"{args.gradients}: n = {len(G)} tasks, {rows} training rows, d = {G[0].shape[1]}, λ = {args.l2}\n")
    print(
        "| threads | m | method | wall s / subset | CPU s / subset | sklearn ÷ this (wall) | max Δw, max Δ val loss vs newton |"
        "\n|---|---|---|---|---|---|---|"
    )
    for threads in args.threads:
        torch.set_num_threads(threads)
        with threadpool_limits(threads):
            for m in args.subsets:
                subsets = sample_subsets(len(G), m, args.subset_size, seed=0)
                few = subsets[: args.sklearn_subsets]
                sk_wall, sk_cpu = timed(lambda few=few: sklearn_fits(G, labels, few, args.l2))
                sk_wall, sk_cpu = sk_wall / len(few), sk_cpu / len(few)
                results = [("scikit-learn, one subset at a time (extrapolated)", sk_wall, sk_cpu, "")]
                for batch in (64, 512):
                    fits = []
                    wall, cpu = timed(lambda s=subsets, b=batch, f=fits: f.append(fit_subsets(data, s, args.l2, batch_size=b)))
                    dw, dscore = max_differences(data, validation, few, fits[0].weights[: len(few)], args.l2)
                    results.append((f"ours, newton-cg, batch {batch}", wall / m, cpu / m, f"{dw:.1e}, {dscore:.1e}"))
                for name, wall, cpu, differences in results:
                    print(
                        f"| {threads} | {m} | {name} | {wall * 1e3:.2f} ms | {cpu * 1e3:.2f} ms | {sk_wall / wall:.1f}x "
                        f"| {differences} |"
                    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())

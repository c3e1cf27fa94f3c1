"""Step 4: group tasks by their affinity matrix with the SDP of Alg. 2 (or a baseline) and save the groups.

Reads the ``(n, n)`` affinity matrix of step 3 (higher = more affinity), clusters it into ``k`` groups, and writes
the groups file (same format as sampled_tasks: one group per line), a sidecar JSON ``<out stem>.json`` describing the
run, and a heatmap ``<out stem>.png`` with the tasks ordered by group.

Usage:
    python run_clustering.py --affinity results/affinity.npy --k 10 --out results/groups_k10.txt
    python run_clustering.py --affinity T.npy --k 3 --method spectral --out groups.txt --compare-methods --planted true.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from data import read_planted_groups
from gradtag.affinity import fill_uncovered
from gradtag.artifacts import UsageError, fingerprint, run_main, write_json, write_subsets
from gradtag.checks import POSITIVE, POSITIVE_INT, ArgumentParser
from gradtag.clustering import (
    METHODS,
    average_density,
    cluster,
    plot_affinity_heatmap,
    prepare_affinity,
    symmetrize,
)
from gradtag.evaluation import adjusted_rand


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("input")
    data.add_argument("--affinity", required=True, help="(n, n) task affinity matrix (.npy) from step 3; higher = more affinity")
    data.add_argument(
        "--planted",
        default=None,
        help="optional known groups file (one group per line); reports the adjusted Rand index against it",
    )

    method = parser.add_argument_group("clustering")
    method.add_argument("--k", type=POSITIVE_INT, required=True, help="number of groups, 1 <= k <= n")
    method.add_argument(
        "--method",
        default="sdp",
        choices=sorted(METHODS),
        help="sdp: Alg. 2 SDP relaxation + threshold rounding; spectral / kmeans: sklearn baselines",
    )
    method.add_argument(
        "--center",
        default="rows",
        choices=["rows", "none"],
        help="rows: subtract each row's mean (each task's level) before clustering, so that groups follow "
        "affinity rather than task difficulty; none: cluster the (symmetrised) raw matrix",
    )
    method.add_argument(
        "--temperature",
        type=POSITIVE,
        default=None,
        help="if given, cluster exp(T / temperature) as in the paper's code (after centring); default: off",
    )
    method.add_argument(
        "--rounding",
        default="greedy",
        choices=["greedy", "components"],
        help="SDP rounding at threshold lambda: greedy (paper's code) or connected components",
    )
    method.add_argument("--seed", type=int, default=0, help="seed of the k-means inits in spectral and kmeans")
    method.add_argument(
        "--compare-methods",
        action="store_true",
        help="also run the other methods and print/store their Eq. 7 objective (groups written: --method)",
    )

    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, help="groups file to write; the JSON summary goes beside it as <stem>.json")
    out.add_argument("--heatmap", default=None, help="heatmap PNG path (default: beside --out, <stem>.png)")
    out.add_argument("--overwrite", action="store_true", help="replace existing output files instead of refusing")
    return parser


def load_affinity(path: str | Path) -> np.ndarray:
    """Load and check the affinity matrix: a finite, real, square 2-D ``.npy`` array; returns it as float64."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"affinity file {path} does not exist; run step 3 (task affinity) first")
    try:
        T = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UsageError(f"{path} is not a loadable .npy array ({type(err).__name__}); pass the .npy file step 3 wrote") from None
    if not isinstance(T, np.ndarray) or T.dtype.kind not in "biuf":
        raise UsageError(f"{path} holds {getattr(T, 'dtype', type(T))} data; the affinity must be a real numeric array")
    if T.ndim != 2 or T.shape[0] != T.shape[1] or T.shape[0] == 0:
        raise UsageError(f"{path} has shape {T.shape}; the affinity must be a non-empty square (n, n) matrix")
    T = T.astype(np.float64)
    bad = np.argwhere(np.isinf(T))
    if bad.size:
        i, j = bad[0]
        raise UsageError(f"{path} has {len(bad)} infinite entries (first at [{i}, {j}] = {T[i, j]}); fix step 3's output")
    try:
        T, filled = fill_uncovered(T)
    except UsageError as err:
        raise UsageError(f"{path}: {err}; add subsets holding every task") from None
    if filled:  # step 3's rule for pairs no subset covers: NaN in T, given its row's mean here and in compare
        print(f"note: {filled} entries of {path} are NaN (pairs no subset covers); clustering gives them their row's mean")
    return T


def output_paths(args) -> tuple[Path, Path, Path]:
    """The groups file, its JSON sidecar and the heatmap, refusing collisions and (without --overwrite) existing files."""
    out = Path(args.out)
    summary = out.with_suffix(".json")
    heatmap = Path(args.heatmap) if args.heatmap else out.with_suffix(".png")
    if len({out.resolve(), summary.resolve(), heatmap.resolve()}) != 3:
        raise UsageError(f"--out {out} collides with its summary {summary} or heatmap {heatmap}; use a .txt name for --out")
    for path in (out, summary, heatmap):
        if path.is_dir():
            raise UsageError(f"{path} is a directory; --out and --heatmap name files")
        if path.exists() and not args.overwrite:
            raise UsageError(f"{path} already exists; pass --overwrite to replace it")
    return out, summary, heatmap


def format_groups(groups) -> str:
    return "\n".join(f"  group {index}: {' '.join(map(str, group))}" for index, group in enumerate(groups))


def main(args) -> dict:
    T = load_affinity(args.affinity)
    n = T.shape[0]
    if not 1 <= args.k <= n:
        raise UsageError(f"--k {args.k} is out of range; it must be between 1 and the number of tasks n={n}")
    out, summary_path, heatmap_path = output_paths(args)
    planted = read_planted_groups(args.planted, n) if args.planted else None

    S = prepare_affinity(T, center=args.center, temperature=args.temperature)
    methods = [args.method] + ([m for m in sorted(METHODS) if m != args.method] if args.compare_methods else [])
    results = {method: cluster(S, args.k, method=method, seed=args.seed, rounding=args.rounding) for method in methods}
    main_result = results[args.method]

    comparison = {}
    for method, result in results.items():
        comparison[method] = {
            "objective": result.objective,
            "objective_input": average_density(symmetrize(T), result.groups),
            "seconds": round(result.seconds, 4),
            "n_groups": len(result.groups),
            "groups": result.groups,
        }
        if planted is not None:
            comparison[method]["ari"] = adjusted_rand(result.groups, planted, n)

    lam_text = f"{main_result.lam:.6g}" if main_result.lam is not None else "none"
    transform = f"center={args.center} temperature={args.temperature if args.temperature is not None else 'off'}"
    header = (
        f"groups from run_clustering.py: method={args.method} k={args.k} lambda={lam_text} exact_k={main_result.exact} "
        f"{transform}\naffinity={args.affinity}"
    )
    summary = {
        "affinity": str(args.affinity),
        "affinity_fingerprint": fingerprint(T),
        "n": n,
        "k": args.k,
        "method": args.method,
        "center": args.center,
        "temperature": args.temperature,
        "rounding": args.rounding,
        "seed": args.seed,
        "groups": main_result.groups,
        "n_groups": len(main_result.groups),
        "exact_k": main_result.exact,
        "lambda": main_result.lam,
        "message": main_result.message,
        "objective": main_result.objective,
        "objective_note": "objective: Eq. 7 average density of the clustered (centred/exp'd) matrix; "
        "objective_input: of the symmetrised input",
        "solve_seconds": round(main_result.seconds, 4),
        "methods": comparison,
        "groups_file": str(out),
        "heatmap": str(heatmap_path),
    }
    if planted is not None:
        summary["planted"] = str(args.planted)
        summary["ari"] = comparison[args.method]["ari"]

    write_subsets(out, main_result.groups, header=header)
    write_json(summary_path, summary)
    plot_affinity_heatmap(
        S, main_result.groups, heatmap_path, title=f"{args.method}, k={args.k}, {transform}, Eq. 7 = {main_result.objective:.4g}"
    )

    print(
        f"clustering: {args.method} k={args.k} n={n} groups={len(main_result.groups)} exact_k={main_result.exact} "
        f"lambda={lam_text} objective={main_result.objective:.6g} seconds={main_result.seconds:.2f} -> wrote {out}, "
        f"{summary_path}, {heatmap_path}"
    )
    if not main_result.exact:
        print(f"warning: {main_result.message}")
    print(format_groups(main_result.groups))
    if len(results) > 1 or planted is not None:
        for method, row in comparison.items():
            ari = f" ari={row['ari']:.4f}" if "ari" in row else ""
            print(
                f"method {method:<8} objective={row['objective']:.6g} n_groups={row['n_groups']} "
                f"seconds={row['seconds']:.2f}{ari}"
            )
    return summary


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

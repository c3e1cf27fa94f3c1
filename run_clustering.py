"""Step 4: group tasks by their affinity matrix with the SDP of Alg. 2 (or a baseline) and save the groups.

Reads the ``(n, n)`` affinity matrix of step 3 (higher = more affinity), clusters it into ``k`` groups, and writes
the groups file (same format as sampled_tasks: one group per line), a sidecar JSON ``<out stem>.json`` describing the
run, and a heatmap ``<out stem>.png`` with the tasks ordered by group. With ``--data-map`` instead (STG-MTL), it
clusters the tasks' data-map features of a step-1 checkpoint trained with ``--record-data-map`` by fuzzy c-means (or
k-means), writes the groups (each task in its group of highest membership) and the (k, n) memberships
``<out stem>_memberships.npy``, for ``train_multitask.py --task-weights``.

Usage:
    python run_clustering.py --affinity results/affinity.npy --k 10 --out results/groups_k10.txt
    python run_clustering.py --affinity T.npy --k 3 --method spectral --out groups.txt --compare-methods --planted true.txt
    python run_clustering.py --data-map saved/planted/all_seed0 --k 4 --out results/planted_dm_groups.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradtag.artifacts import run_main
from gradtag.checks import OUTPUT_FILE, POSITIVE, POSITIVE_INT, ArgumentParser
from gradtag.clustering import METHODS
from gradtag.datamaps import FEATURES, FUZZINESS
from steps.cluster import DATA_MAP_METHODS, ClusterJob, run


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("input")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--affinity", help="(n, n) task affinity matrix (.npy) from step 3; higher = more affinity")
    source.add_argument(
        "--data-map",
        metavar="CHECKPOINT",
        help="instead of --affinity: a step-1 checkpoint folder trained with --record-data-map (or its data_map.npz); "
        "tasks are clustered on their data-map features (STG-MTL)",
    )
    data.add_argument(
        "--planted",
        default=None,
        help="optional known groups file (one group per line); reports the adjusted Rand index against it",
    )

    method = parser.add_argument_group("clustering")
    method.add_argument("--k", type=POSITIVE_INT, required=True, help="number of groups, 1 <= k <= n")
    method.add_argument(
        "--method",
        default=None,
        choices=sorted({*METHODS, *DATA_MAP_METHODS}),
        help="--affinity: sdp (default; Alg. 2 SDP relaxation + threshold rounding), spectral / kmeans (sklearn "
        "baselines); --data-map: fuzzy (default; fuzzy c-means, STG-MTL) or kmeans (0/1 memberships)",
    )
    method.add_argument(
        "--fuzziness",
        type=POSITIVE,
        default=FUZZINESS,
        help=f"fuzzy c-means' fuzziness m > 1 (default {FUZZINESS}, STG-MTL's); memberships harden to 0/1 as m -> 1",
    )
    method.add_argument(
        "--data-map-features",
        default="mean",
        choices=list(FEATURES),
        help="task features of a data map: mean (STG-MTL: the task's mean confidence and mean variability over its "
        "samples) or quantiles (those plus the deciles of both: the shape of the task's data map)",
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
    method.add_argument("--seed", type=int, default=0, help="seed of the k-means inits in spectral, kmeans and fuzzy")
    method.add_argument(
        "--compare-methods",
        action="store_true",
        help="also run the other methods and print/store their Eq. 7 objective (groups written: --method)",
    )

    out = parser.add_argument_group("output")
    out.add_argument(
        "--out", required=True, type=OUTPUT_FILE, help="groups file to write; the JSON summary goes beside it as <stem>.json"
    )
    out.add_argument("--heatmap", default=None, type=OUTPUT_FILE, help="heatmap PNG path (default: beside --out, <stem>.png)")
    out.add_argument("--overwrite", action="store_true", help="replace existing output files instead of refusing")
    return parser


def format_groups(groups) -> str:
    return "\n".join(f"  group {index}: {' '.join(map(str, group))}" for index, group in enumerate(groups))


def main(args: argparse.Namespace) -> dict:
    summary, comparison = run(ClusterJob.from_args(args))
    lam = "none" if summary["lambda"] is None else f"{summary['lambda']:.6g}"
    print(
        f"clustering: {summary['method']} k={args.k} n={summary['n']} groups={summary['n_groups']} exact_k={summary['exact_k']} "
        f"lambda={lam} objective={summary['objective']:.6g} seconds={summary['solve_seconds']:.2f} -> wrote "
        f"{summary['groups_file']}, {Path(summary['groups_file']).with_suffix('.json')}, {summary['heatmap']}"
    )
    if "memberships_file" in summary:
        print(f"memberships (k, n) -> {summary['memberships_file']}")
    source = args.affinity or args.data_map
    if not summary.get("structured", True):
        print(f"warning: {source} {summary['message']}", file=sys.stderr)
    elif not summary["exact_k"]:
        print(f"warning: {source}: {summary['message']}", file=sys.stderr)
    elif summary.get("repaired"):
        print(f"note: {source}: {summary['message']}")
    if summary.get("singletons"):
        print(f"note: tasks {' '.join(map(str, summary['singletons']))} form groups of their own (the matrix puts them apart)")
    print(format_groups(summary["groups"]))
    if len(comparison) > 1 or "ari" in summary:
        for method, row in comparison.items():
            ari = f" ari={row['ari']:.4f}" if "ari" in row else ""
            print(
                f"method {method:<8} objective={row['objective']:.6g} n_groups={row['n_groups']} "
                f"seconds={row['seconds']:.2f}{ari}"
            )
    return summary


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

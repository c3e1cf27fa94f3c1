"""Eq. 1's mean against the additive affinity, from an estimate CSV and its truth CSV (no training).

Usage:
    python -m benchmarks.affinity_definitions --estimated results/planted_m200_a5_s0_estimate.csv \
        --trained results/planted_m200_a5_s0_finetune.csv --k 4 --planted datasets/planted/planted_groups.txt
    python -m benchmarks.affinity_definitions --estimated ... --trained ... --k 5 --l2 0 0.1 1 10 100   # the ridge's λ

For each definition of T (``mean``: Eq. 1; ``additive``: ridge partner effects, :func:`gradtag.affinity.
additive_affinity`, at each ``--l2``) and each score it prints one markdown row: the truth's split-half per-task ρ
over rows of T (5 random halvings; Spearman–Brown-corrected to all m in brackets), the estimate's own split-half, the
estimate's per-task ρ over rows of T against the truth's, the ARI between the SDP groups (k, rows centred, as
``run_clustering.py``) of the truth's two halves (the clustering's ceiling), of the estimated and the true T, and of
each against ``--planted`` when given.
"""

from __future__ import annotations

import argparse
from functools import partial

from data import read_planted_groups
from gradtag.affinity import ADDITIVE_L2, additive_affinity, fill_uncovered, higher_order_affinity
from gradtag.artifacts import read_json, run_main
from gradtag.checks import NONNEGATIVE, POSITIVE_INT
from gradtag.clustering import cluster, prepare_affinity
from gradtag.evaluation import adjusted_rand, rows_spearman, split_half_reliability
from gradtag.results import read_results
from gradtag.scores import score_records


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--estimated", required=True, help="estimate CSV (fit_linear_estimates.py)")
    parser.add_argument("--trained", required=True, help="truth CSV on the same subsets (train_multitask.py --subsets-file)")
    parser.add_argument("--k", type=POSITIVE_INT, required=True, help="groups for the SDP clustering")
    parser.add_argument("--planted", default=None, help="known groups file, to score both clusterings against")
    parser.add_argument("--scores", nargs="+", default=["loss", "f1"], help="scores to compare")
    parser.add_argument("--l2", type=NONNEGATIVE, nargs="+", default=[ADDITIVE_L2], help="the additive ridge's λ values")
    parser.add_argument("--seed", type=int, default=0, help="seed of the halvings and the clustering")
    return parser


def cluster_filled(T, k: int, seed: int) -> list[list[int]]:
    """SDP groups of a filled T (n, n), rows centred, as run_clustering.py makes them."""
    return cluster(prepare_affinity(T), k, "sdp", seed).groups


def groups_of(table, n: int, affinity_fn, k: int, seed: int) -> list[list[int]]:
    """SDP groups of the T that ``affinity_fn`` builds from ``table``."""
    return cluster_filled(fill_uncovered(affinity_fn(table, n)[0])[0], k, seed)


def main(args: argparse.Namespace) -> None:
    n = len(read_json(args.trained.rsplit(".", 1)[0] + ".json")["task_names"])
    estimate_rows, truth_rows = read_results(args.estimated), read_results(args.trained)
    planted = read_planted_groups(args.planted, n) if args.planted else None
    definitions = [("mean", "–", higher_order_affinity)] + [
        ("additive", f"{l2:g}", partial(additive_affinity, l2=l2)) for l2 in args.l2
    ]
    print(f"{args.trained} vs {args.estimated}: n = {n}, SDP k = {args.k}")
    print(
        "| score | T | λ | truth split-half ρ rows (all m) | estimate split-half ρ rows (all m) | ρ rows est vs truth "
        "| truth split-half ARI | ARI est/truth |" + (" ARI truth/planted | ARI est/planted |" if planted else "")
    )
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if planted else ""))
    for score in args.scores:
        estimate, truth = score_records(estimate_rows, score), score_records(truth_rows, score)
        for name, l2, affinity_fn in definitions:
            cluster_fn = partial(cluster_filled, k=args.k, seed=args.seed)
            halves = [
                split_half_reliability(
                    side, n, seed=args.seed, cluster_fn=cluster_fn if side is truth else None, affinity_fn=affinity_fn
                )
                for side in (truth, estimate)
            ]
            rho = rows_spearman(estimate, truth, n, affinity_fn).mean
            groups = [groups_of(side, n, affinity_fn, args.k, args.seed) for side in (estimate, truth)]
            cells = [f"{half.rows:.3f} ({half.rows_full:.3f})" for half in halves]
            cells += [f"{rho:.3f}", f"{halves[0].ari:.3f}", f"{adjusted_rand(groups[0], groups[1], n):.3f}"]
            if planted:
                cells += [f"{adjusted_rand(groups[1], planted, n):.3f}", f"{adjusted_rand(groups[0], planted, n):.3f}"]
            print(f"| {score} | {name} | {l2} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

"""Compare estimated with true task affinities (and vet a truth on its own), with metrics that do not flatter.

Usage:
    python compare_affinities.py --estimated results/planted_m200_a5_s0_estimate.csv \
        --trained results/planted_m200_a5_s0_finetune.csv results/planted_m200_a5_s0_scratch.csv \
        --planted datasets/planted/planted_groups.txt
    python compare_affinities.py --trained results/planted_m200_a5_s0_scratch.csv --planted ...   # vet check only

For each truth (a ``train_multitask.py --subsets-file`` CSV: fine-tuned θ* or from scratch) and each score (validation
loss, validation F1) it reports: per-task Spearman over the subsets holding the task, averaged over tasks; per-task
Spearman over the rows of T (paper App. C.2.2); pooled Spearman over all (S, j), labelled pooled; relative distance
‖T − T*‖²_F / ‖T*‖²_F on raw and on row-centred T; the truth's own seed-to-seed Spearman (the ceiling of any
estimate) when it has ≥ 2 seeds; the group effect of the truth (change of task j's score per same-group partner in S,
per-task fixed effects); the ARI of the SDP-clustered estimated and true T against the planted groups and each
other; and the wall time of each side. Writes the report as JSON (``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from data import read_planted_groups
from gradtag.affinity import fill_uncovered
from gradtag.artifacts import UsageError, check_compatible, read_json, read_results, run_main, write_json
from gradtag.checks import POSITIVE_INT, ArgumentParser
from gradtag.clustering import cluster, prepare_affinity
from gradtag.evaluation import (
    adjusted_rand,
    comparison_report,
    distance_summary,
    group_effect,
    partner_effects,
    seed_ceiling,
    split_half_reliability,
)
from gradtag.flops import format_flops
from gradtag.scores import SCORES, affinity_matrix, is_pairwise, records_by_seed, score_records


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--estimated", default=None, help="estimate CSV from fit_linear_estimates.py (omit to vet a truth)")
    parser.add_argument("--trained", nargs="+", required=True, help="truth CSVs from train_multitask.py --subsets-file")
    parser.add_argument("--planted", default=None, help="known grouping (groups file) to score clusterings against")
    parser.add_argument("--k", type=POSITIVE_INT, default=None, help="number of groups to cluster into (default: planted count)")
    parser.add_argument("--scores", nargs="+", default=["loss", "f1"], choices=sorted(SCORES), help="scores to compare")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clustering")
    parser.add_argument("--out", default=None, help="report JSON (default: beside the first truth, *_report.json)")
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="compare an estimate with a truth of other subsets (on the (subset, task) scores they share) or of other "
        "θ*s; refused without it, since a few shared scores give a meaningless ρ",
    )
    return parser


def base_fingerprints(meta: dict) -> list[str] | None:
    """Fingerprints of the θ*s behind a results file (sorted): an estimate's bases, a fine-tuned truth's starts;
    None for a truth from scratch or a file written before they were recorded."""
    if "bases" in meta:
        return sorted(base["checkpoint_fingerprint"] for base in meta["bases"])
    init = meta.get("init")
    if not init:
        return None
    return sorted(base["init_fingerprint"] for base in (init if isinstance(init, list) else [init]))


def check_same_experiment(estimate: tuple, truth: tuple, path: str, allow_partial: bool) -> str:
    """Refuse (unless ``allow_partial``) a truth of other subsets or other θ*s than the estimate; returns the line
    saying how many (subset, task) scores the two share."""
    (est_rows, est_meta), (rows, meta) = estimate, truth
    shared = {(row["subset"], row["task"]) for row in est_rows} & {(row["subset"], row["task"]) for row in rows}
    line = f"estimate vs {path}: {len(shared)} shared (subset, task) scores of {len(est_rows)} estimated"
    if allow_partial:
        return line
    if sorted(map(tuple, est_meta["subsets"])) != sorted(map(tuple, meta["subsets"])):
        raise UsageError(
            f"{path} was trained on other subsets than the estimate {est_meta.get('subsets_file')} ({len(shared)} of "
            f"{len(est_rows)} scores shared); train the truth on the estimate's subsets file or pass --allow-partial"
        )
    est_bases, truth_bases = base_fingerprints(est_meta), base_fingerprints(meta)
    if est_bases is not None and truth_bases is not None and est_bases != truth_bases:
        raise UsageError(
            f"{path} was fine-tuned from other θ* weights than the estimate's bases; fine-tune from the estimate's "
            "checkpoints (--init-from) or pass --allow-partial"
        )
    return line


def load_side(path: str) -> tuple[list[dict], dict]:
    """Rows of a results CSV and its identity sidecar (same name, .json)."""
    rows = read_results(path)
    meta = read_json(Path(path).with_suffix(".json"))
    return rows, meta


def clustered(records, num_tasks: int, pairwise: bool, k: int, seed: int) -> list[list[int]]:
    affinity, _ = affinity_matrix(records, num_tasks, pairwise)
    affinity, filled = fill_uncovered(affinity)
    if filled:
        print(f"note: {filled} entries of T have no covering subset; clustering uses their row means")
    return cluster_matrix(affinity, k, seed)


def cluster_matrix(affinity, k: int, seed: int) -> list[list[int]]:
    """The SDP groups of a filled (n, n) T, rows centred: how every T in the report is clustered."""
    return cluster(prepare_affinity(affinity), k, "sdp", seed).groups


def reliability(rows, records, num_tasks: int, pairwise: bool, k, seed) -> dict:
    """What a side's T is worth on its own: how far its models moved (``distance``), its split-half agreement (the
    ceiling at this m; not defined for pairwise files, one subset per entry) and its partner effects."""
    report = {"distance": distance_summary(rows)}
    if not pairwise:
        cluster_fn = (lambda T: cluster_matrix(T, k, seed)) if k is not None else None
        report["split_half"] = split_half_reliability(records, num_tasks, seed=seed, cluster_fn=cluster_fn)._asdict()
    effects = partner_effects(records, num_tasks)
    report["partner_effect_share"], report["partner_effect_tasks_tested"] = effects.share_significant, effects.n_tested
    return report


def truth_agreement(paths: list[str], truths: list, score: str, num_tasks: int) -> list[dict]:
    """Per-task ρ between every two truths on their shared (subset, task) scores: truths fine-tuned from different θ*
    seeds, or for different lengths, agree only so far — the ceiling for any single-θ* estimate (FIDELITY §6)."""
    agreement = []
    for a, b in itertools.combinations(range(len(truths)), 2):
        report = comparison_report(score_records(truths[a][0], score), score_records(truths[b][0], score), num_tasks)
        agreement.append({"a": paths[a], "b": paths[b], **report})
    return agreement


def truth_report(rows, meta, score: str, num_tasks: int, planted, k, seed) -> dict:
    records = score_records(rows, score)
    subsets = [tuple(subset) for subset in meta["subsets"]]
    report = {"seeds": sorted({row["seed"] for row in rows}), "seconds": meta.get("seconds"), "flops": meta.get("flops")}
    report.update(reliability(rows, records, num_tasks, is_pairwise(subsets), k, seed))
    per_seed = records_by_seed(rows, score)
    if len(per_seed) >= 2:
        report["seed_ceiling_spearman_per_task"] = seed_ceiling(list(per_seed.values())).mean
    if planted is not None:
        effect = group_effect(records, planted, num_tasks)
        report.update(group_effect_slope=effect.slope, group_effect_t=effect.t_stat)
    if k is not None:
        report["groups"] = clustered(records, num_tasks, is_pairwise(subsets), k, seed)
        if planted is not None:
            report["ari_vs_planted"] = adjusted_rand(report["groups"], planted, num_tasks)
    return report


def main(args: argparse.Namespace) -> None:
    truths = [load_side(path) for path in args.trained]
    estimate = load_side(args.estimated) if args.estimated else None
    first_meta = truths[0][1]
    num_tasks = len(first_meta["task_names"])
    for (_, meta), path in zip(truths[1:] + ([estimate] if estimate else []), args.trained[1:] + [args.estimated], strict=False):
        check_compatible(meta, path, dataset=first_meta["dataset"], dataset_fingerprint=first_meta["dataset_fingerprint"])
    planted = read_planted_groups(args.planted, num_tasks) if args.planted else None
    k = args.k or (len(planted) if planted else None)
    if k is not None and not 1 <= k <= num_tasks:
        raise UsageError(f"--k {k} must lie in 1..{num_tasks}")
    overlap = (
        [
            check_same_experiment(estimate, truth, path, args.allow_partial)
            for truth, path in zip(truths, args.trained, strict=True)
        ]
        if estimate
        else []
    )

    report = {"estimated": args.estimated, "trained": args.trained, "k": k, "by_score": {}}
    lines = []
    for score in args.scores:
        by_truth = {}
        est_records = score_records(estimate[0], score) if estimate else None
        est_groups = None
        if estimate:
            report.setdefault("estimate_reliability", {})[score] = reliability(
                estimate[0], est_records, num_tasks, is_pairwise(estimate[1]["subsets"]), k, args.seed
            )
        if estimate and k is not None:
            est_groups = clustered(est_records, num_tasks, is_pairwise(estimate[1]["subsets"]), k, args.seed)
        for path, (rows, meta) in zip(args.trained, truths, strict=True):
            entry = truth_report(rows, meta, score, num_tasks, planted, k, args.seed)
            if estimate:
                entry.update(comparison_report(est_records, score_records(rows, score), num_tasks))
                if est_groups is not None:
                    entry["ari_estimate_vs_truth"] = adjusted_rand(est_groups, entry["groups"], num_tasks)
            by_truth[path] = entry
            lines.append(table_row(score, Path(path).stem, entry))
        report["by_score"][score] = {
            "truths": by_truth,
            "truth_agreement": truth_agreement(args.trained, truths, score, num_tasks),
        }
        if est_groups is not None:
            report["by_score"][score]["estimate_groups"] = est_groups
            if planted is not None:
                report["by_score"][score]["estimate_ari_vs_planted"] = adjusted_rand(est_groups, planted, num_tasks)
    if estimate:
        report["estimate_seconds"] = estimate[1].get("seconds")
        report["estimate_flops"] = estimate[1].get("flops")
        report["estimate_one_off"] = estimate[1].get("one_off")
    out = Path(args.out) if args.out else Path(args.trained[0]).with_name(Path(args.trained[0]).stem + "_report.json")
    write_json(out, report)
    for line in overlap:
        print(line)
    print_table(report, lines)
    print(f"wrote {out}")


COLUMNS = [
    ("ρ task/subsets", "spearman_per_task_subsets"),
    ("ρ task/rows", "spearman_per_task_rows"),
    ("ρ pooled", "spearman_pooled"),
    ("dist raw", "relative_distance_raw"),
    ("dist centred", "relative_distance_row_centered"),
    ("ceiling ρ", "seed_ceiling_spearman_per_task"),
    ("effect (t)", None),
    ("ARI true/planted", "ari_vs_planted"),
    ("ARI est/true", "ari_estimate_vs_truth"),
    ("truth s", "seconds"),
]


def table_row(score: str, truth: str, entry: dict) -> str:
    cells = []
    for _, key in COLUMNS:
        if key is None:
            slope, t_stat = entry.get("group_effect_slope"), entry.get("group_effect_t")
            cells.append("–" if slope is None else f"{slope:+.4f} ({t_stat:.1f})")
        else:
            value = entry.get(key)
            cells.append("–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value))
    return f"| {score} | {truth} | " + " | ".join(cells) + " |"


def print_table(report: dict, lines: list[str]) -> None:
    print("| score | truth | " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    print("\n".join(lines))
    for score, entry in report["by_score"].items():
        if "estimate_ari_vs_planted" in entry:
            print(f"ARI of the clustered estimate ({score}) vs planted: {entry['estimate_ari_vs_planted']:.3f}")
    print_reliability(report)
    print_agreement(report)
    print_costs(report)


def print_agreement(report: dict) -> None:
    """Truth against truth (a ceiling for the estimate): per-task ρ over subsets and over rows of T."""
    pairs = [(score, pair) for score, entry in report["by_score"].items() for pair in entry["truth_agreement"]]
    if not pairs:
        return
    print("| score | truth A | truth B | ρ task/subsets | ρ task/rows |")
    print("|---|---|---|---|---|")
    for score, pair in pairs:
        print(
            f"| {score} | {Path(pair['a']).stem} | {Path(pair['b']).stem} | {pair['spearman_per_task_subsets']:.3f} "
            f"| {pair['spearman_per_task_rows']:.3f} |"
        )


def print_reliability(report: dict) -> None:
    """Each side on its own: its models' move from θ* (first-order regime: ≲ 0.10–0.15), the split-half agreement of
    its T (rows ρ between halves, Spearman–Brown-corrected to all subsets, and ARI) and its share of tasks whose score
    depends on their partners (F-test, p < 0.05). Read every estimate-versus-truth ρ against the truth's ceiling here."""
    print("| score | side | distance median [p10, p90] | split-half ρ rows (all m) | split-half ARI | partner effect |")
    print("|---|---|---|---|---|---|")
    for score, entry in report["by_score"].items():
        sides = [(Path(path).stem, truth) for path, truth in entry["truths"].items()]
        if score in report.get("estimate_reliability", {}):
            sides.append(("estimate", report["estimate_reliability"][score]))
        for name, side in sides:
            print(
                f"| {score} | {name} | {_distance_cell(side.get('distance'))} | {_split_cells(side.get('split_half'))} | "
                f"{side['partner_effect_share']:.2f} of {side['partner_effect_tasks_tested']} |"
            )


def _distance_cell(summary: dict | None) -> str:
    return "–" if summary is None else f"{summary['median']:.3f} [{summary['p10']:.3f}, {summary['p90']:.3f}]"


def _split_cells(split: dict | None) -> str:
    if split is None:
        return "– | –"
    ari = "–" if split["ari"] is None else f"{split['ari']:.3f}"
    return f"{split['rows']:.3f} ({split['rows_full']:.3f}) | {ari}"


def print_costs(report: dict) -> None:
    """Wall time and FLOPs (``gradtag.flops``) of the estimate, its one-off base cost, and each truth, with ratios."""
    if report.get("estimate_seconds") is None:
        return
    one_off = report.get("estimate_one_off") or {}
    sides = [("estimate (step 3)", report["estimate_seconds"], report.get("estimate_flops"))]
    sides.append(("one-off: θ* + gradients (steps 1-2)", one_off.get("seconds"), one_off.get("flops")))
    first = next(iter(report["by_score"].values()))["truths"]
    sides += [(f"truth {Path(path).stem}", entry.get("seconds"), entry.get("flops")) for path, entry in first.items()]
    print("| side | seconds | FLOPs | truth / estimate (s) | truth / estimate (FLOPs) |")
    print("|---|---|---|---|---|")
    est_seconds, est_flops = sides[0][1], sides[0][2]
    for index, (name, seconds, flops) in enumerate(sides):
        ratio_s = ratio_f = "–"
        if index >= 2 and seconds and est_seconds:
            ratio_s = f"{seconds / est_seconds:.1f}x"
        if index >= 2 and flops and est_flops:
            ratio_f = f"{flops / est_flops:.1f}x"
        shown = "–" if seconds is None else f"{seconds:.2f}"
        print(f"| {name} | {shown} | {format_flops(flops)} | {ratio_s} | {ratio_f} |")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

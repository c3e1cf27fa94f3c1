"""Compare estimated with true task affinities (and vet a truth on its own), with metrics that do not flatter.

Usage:
    python compare_affinities.py --estimated results/planted_m200_a5_s0_estimate.csv \
        --trained results/planted_m200_a5_s0_finetune.csv results/planted_m200_a5_s0_scratch.csv \
        --planted datasets/planted/planted_groups.txt
    python compare_affinities.py --trained results/planted_m200_a5_s0_scratch.csv --planted ...   # vet check only

For each truth (a ``train_multitask.py --subsets-file`` CSV: fine-tuned θ* or from scratch) and each score (validation
loss, validation F1) it reports: per-task Spearman over the subsets holding the task, averaged over tasks; partner ρ,
per-task Spearman over the rows of T (how each task's partners are ranked); the paper's orientation (App. C.2.2),
Spearman over the columns of T, whose entries are different tasks' scores so that task levels dominate it; pooled
Spearman over all (S, j), labelled pooled; relative distance ‖T − T*‖²_F / ‖T*‖²_F on raw and on row-centred T; the
truth's own seed-to-seed Spearman (the ceiling of any estimate) when it has ≥ 2 seeds; the group effect of the truth
(change of task j's score per same-group partner in S, per-task fixed effects); the ARI of the SDP-clustered estimated
and true T against the planted groups and each other; the split-half ρ over rows and the estimate's ρ over rows for
both definitions of T, Eq. 1's mean and the additive partner effects (``gradtag.affinity.additive_affinity``); and
the cost of each side. Writes the report as JSON (``--out``) and prints markdown tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gradtag.artifacts import COST_KEYS, run_main, total_cost
from gradtag.checks import OUTPUT_FILE, POSITIVE_INT, ArgumentParser
from gradtag.flops import format_flops
from gradtag.scores import SCORES
from steps.compare import CompareJob, run


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--estimated", default=None, help="estimate CSV from fit_linear_estimates.py (omit to vet a truth)")
    parser.add_argument("--trained", nargs="+", required=True, help="truth CSVs from train_multitask.py --subsets-file")
    parser.add_argument("--planted", default=None, help="known grouping (groups file) to score clusterings against")
    parser.add_argument("--k", type=POSITIVE_INT, default=None, help="number of groups to cluster into (default: planted count)")
    parser.add_argument(
        "--scores",
        nargs="+",
        default=None,
        choices=sorted(SCORES),
        help="scores to compare (default: loss and the domain's metric: f1 for graphs, accuracy for text)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the clustering")
    parser.add_argument(
        "--out", default=None, type=OUTPUT_FILE, help="report JSON (default: beside the first truth, *_report.json)"
    )
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="compare an estimate with a truth of other subsets (on the (subset, task) scores they share) or of other "
        "θ*s; refused without it, since a few shared scores give a meaningless ρ",
    )
    return parser


def main(args: argparse.Namespace) -> None:
    report, out, overlap = run(CompareJob.from_args(args))
    for line in overlap:
        print(line)
    lines = [
        table_row(score, Path(path).stem, entry)
        for score, block in report["by_score"].items()
        for path, entry in block["truths"].items()
    ]
    print_table(report, lines)
    print(f"wrote {out}")


COLUMNS = [
    ("ρ task/subsets", "spearman_per_task_subsets"),
    ("partner ρ (rows)", "spearman_per_task_rows"),
    ("paper's ρ (columns)", "spearman_per_task_columns"),
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
    print_definitions(report)
    print_agreement(report)
    print_costs(report)


def print_agreement(report: dict) -> None:
    """Truth against truth (a ceiling for the estimate): per-task ρ over subsets and over rows of T."""
    pairs = [(score, pair) for score, entry in report["by_score"].items() for pair in entry["truth_agreement"]]
    if not pairs:
        return
    print("| score | truth A | truth B | ρ task/subsets | partner ρ (rows) |")
    print("|---|---|---|---|---|")
    for score, pair in pairs:
        print(
            f"| {score} | {Path(pair['a']).stem} | {Path(pair['b']).stem} | {pair['spearman_per_task_subsets']:.3f} "
            f"| {pair['spearman_per_task_rows']:.3f} |"
        )


def print_reliability(report: dict) -> None:
    """Each side on its own: its models' move from θ* (first-order regime: ≲ 0.10–0.15), the split-half agreement of
    its T (rows ρ between halves, Spearman–Brown-corrected to all subsets, and ARI) and its share of tasks whose score
    depends on their partners (p < 0.05: the F-test, or a permutation test for tasks in fewer subsets than partners +
    2, whose power is lower: marked). Read every estimate-versus-truth ρ against the truth's ceiling here."""
    print("| score | side | distance median [p10, p90] | split-half ρ rows (all m) | split-half ARI | partner effect |")
    print("|---|---|---|---|---|---|")
    for score, entry in report["by_score"].items():
        sides = [(Path(path).stem, truth) for path, truth in entry["truths"].items()]
        if score in report.get("estimate_reliability", {}):
            sides.append(("estimate", report["estimate_reliability"][score]))
        for name, side in sides:
            tested, permuted = side["partner_effect_tasks_tested"], side.get("partner_effect_tasks_permuted", 0)
            effect = f"{side['partner_effect_share']:.2f} of {tested}" if tested else "– (no task has repeated partners to test)"
            if permuted:
                effect += f" ({permuted} by permutation: fewer subsets than partners)"
            print(
                f"| {score} | {name} | {_distance_cell(side.get('distance'))} | {_split_cells(side.get('split_half'))} | "
                f"{effect} |"
            )


def print_definitions(report: dict) -> None:
    """Eq. 1's mean T beside the additive T (ridge partner effects, ``fit_linear_estimates.py --affinity additive``):
    per side, the split-half ρ over rows and, for each truth, the estimate's per-task ρ over rows against it."""
    lines = []
    for score, entry in report["by_score"].items():
        sides = [(Path(path).stem, truth) for path, truth in entry["truths"].items()]
        if score in report.get("estimate_reliability", {}):
            sides.append(("estimate", report["estimate_reliability"][score]))
        for name, side in sides:
            for definition, split, rho in (
                ("mean (Eq. 1)", "split_half", "spearman_per_task_rows"),
                ("additive", "split_half_additive", "spearman_per_task_rows_additive"),
            ):
                if split in side:
                    half, value = side[split], side.get(rho)
                    cell = "–" if value is None else f"{value:.3f}"
                    lines.append(f"| {score} | {name} | {definition} | {half['rows']:.3f} ({half['rows_full']:.3f}) | {cell} |")
    if lines:
        print("| score | side | T | split-half ρ rows (all m) | ρ task/rows estimate vs this truth |")
        print("|---|---|---|---|---|")
        print("\n".join(lines))


def _distance_cell(summary: dict | None) -> str:
    return "–" if summary is None else f"{summary['median']:.3f} [{summary['p10']:.3f}, {summary['p90']:.3f}]"


def _split_cells(split: dict | None) -> str:
    if split is None:
        return "– | –"
    ari = "–" if split["ari"] is None else f"{split['ari']:.3f}"
    return f"{split['rows']:.3f} ({split['rows_full']:.3f}) | {ari}"


def print_costs(report: dict) -> None:
    """Wall and CPU seconds and FLOPs (``gradtag.flops``) of everything the estimate needed — step 3's fits, its
    calibration sweep, the calibration subsets trained for real, the one-off θ* and gradients — their total, and each
    truth, with truth ÷ step 3 and truth ÷ the whole estimate side (CPU seconds: every thread of the process; read
    them on a shared machine)."""
    if report.get("estimate_seconds") is None:
        return
    step3 = {"seconds": report["estimate_seconds"], "cpu_seconds": report.get("estimate_cpu_seconds")}
    step3["flops"] = report.get("estimate_flops")
    calibration = report.get("estimate_calibration") or {}
    parts = [("estimate (step 3 fits)", step3)]
    if calibration.get("cost"):
        parts += [
            ("calibration sweep (in step 3's call)", calibration["cost"]),
            ("calibration subsets trained for real", calibration["truth_cost"] or dict.fromkeys(COST_KEYS)),
        ]
    parts.append(("one-off: θ* + gradients (steps 1-2)", report.get("estimate_one_off") or dict.fromkeys(COST_KEYS)))
    side = total_cost([cost for _, cost in parts])
    first = next(iter(report["by_score"].values()))["truths"]
    truths = [(f"truth {Path(path).stem}", {key: entry.get(key) for key in COST_KEYS}) for path, entry in first.items()]
    print(
        "| side | wall s | CPU s | FLOPs | truth / step 3 fits (CPU) | truth / step 3 fits (FLOPs) "
        "| truth / estimate side (CPU) | truth / estimate side (FLOPs) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for index, (name, cost) in enumerate([*parts, ("**estimate side, total**", side), *truths]):
        ratios = ["–"] * 4
        if index > len(parts):  # a truth
            pairs = [(cost, step3, "cpu_seconds"), (cost, step3, "flops"), (cost, side, "cpu_seconds"), (cost, side, "flops")]
            ratios = [f"{a[key] / b[key]:.1f}x" if a.get(key) and b.get(key) else "–" for a, b, key in pairs]
        wall, cpu = ("–" if cost.get(key) is None else f"{cost[key]:.2f}" for key in ("seconds", "cpu_seconds"))
        print(f"| {name} | {wall} | {cpu} | {format_flops(cost.get('flops'))} | {' | '.join(ratios)} |")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

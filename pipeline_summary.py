"""Print the end-of-pipeline summary of a dataset script — groups found, agreement with a planted grouping,
estimate-versus-truth figures, average test F1 of grouped training versus STL and naive MTL — and keep README's copy
of it true.

Usage:
    python pipeline_summary.py --groups results/planted_groups.json --training results/planted_groups_scratch_summary.json \\
        --comparison results/planted_m200_a5_s0_finetune_report.json --write results/planted_summary.md
    python pipeline_summary.py --check-readme README.md --summary results/planted_summary.md    # exit 1 if it differs
    python pipeline_summary.py --update-readme README.md --summary results/planted_summary.md   # rewrite README's block

The summary holds only figures a rerun reproduces exactly (the pipeline is deterministic on one machine and package
set); the seconds of each step (``--times``) are printed beside it but kept out of it. README holds the summary
between ``<!-- pipeline_summary: NAME -->`` and ``<!-- /pipeline_summary -->``, where NAME is the summary file's name.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from gradtag.artifacts import UsageError, atomic_path, read_json, run_main
from gradtag.checks import OUTPUT_FILE, ArgumentParser


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    make = parser.add_argument_group("make the summary")
    make.add_argument("--groups", default=None, help="JSON written by run_clustering.py beside its groups file")
    make.add_argument("--training", default=None, help="*_summary.json of train_multitask.py --baselines")
    make.add_argument("--comparison", default=None, help="*_report.json of compare_affinities.py")
    make.add_argument(
        "--times",
        nargs="*",
        default=[],
        help="step=wall[,cpu] seconds measured by the calling script, CPU seconds summed over the step's threads (printed only)",
    )
    make.add_argument("--threads", type=int, default=None, help="torch threads each step ran with (printed beside the seconds)")
    make.add_argument("--write", default=None, type=OUTPUT_FILE, help="also write the summary (markdown) to this file")
    readme = parser.add_argument_group("README's copy")
    readme.add_argument("--summary", default=None, help="a summary file written with --write")
    readme.add_argument("--check-readme", default=None, metavar="README", help="exit 1 if README's block differs from --summary")
    readme.add_argument("--update-readme", default=None, metavar="README", help="replace README's block with --summary")
    return parser


TRAINING_METRICS = {"avg_test_f1": "macro-F1", "avg_test_accuracy": "accuracy"}
ABSENT = "–"  # a figure the run did not make: the group effect and the ARI against planted groups need --planted


def _fmt(value, spec: str = ".3f") -> str:
    return ABSENT if value is None else format(value, spec)


def comparison_row(score: str, f: dict) -> str:
    """One row of the comparison table from a truth's figures ``f`` in compare_affinities.py's report."""
    cells = [
        score,
        _fmt(f.get("spearman_per_task_subsets")),
        _fmt(f.get("spearman_per_task_rows")),
        _fmt(f.get("spearman_per_task_columns")),
        _fmt(f.get("spearman_pooled")),
        f"{_fmt(f.get('relative_distance_raw'), '.4f')} / {_fmt(f.get('relative_distance_row_centered'))}",
        ABSENT if f.get("group_effect_slope") is None else f"{f['group_effect_slope']:+.4f} ({f['group_effect_t']:.1f})",
        _fmt(f.get("split_half", {}).get("rows_full")),
        _fmt(f.get("distance", {}).get("median")),
        _fmt(f.get("ari_vs_planted")),
        _fmt(f.get("ari_estimate_vs_truth")),
    ]
    return "| " + " | ".join(cells) + " |"


def summary_markdown(groups: dict, training: dict | None, comparison: dict | None) -> str:
    """The deterministic figures of one pipeline run as markdown (no seconds)."""
    lines = [
        f"Groups found ({groups['method']}, k = {groups['k']}): " + " | ".join(" ".join(map(str, g)) for g in groups["groups"])
    ]
    if "ari" in groups:
        lines[-1] += f"; adjusted Rand index against the planted groups: **{groups['ari']:.3f}**"
    if training:
        # graphs record macro-F1 (avg_test_f1), text tasks accuracy (avg_test_accuracy): the domain's metric
        key, title = next((key, title) for key, title in TRAINING_METRICS.items() if all(key in row for row in training.values()))
        lines += ["", f"| method | models | avg test {title} |", "|---|---|---|"]
        for method, row in training.items():
            lines.append(f"| {method} | {row['models']} | {_fmt(row[key])} |")
    if comparison:
        lines += [
            "",
            "| score | per-task ρ (subsets) | partner ρ (rows of T) | paper's orientation ρ (columns of T) | pooled ρ "
            "| distance raw / row-centred | truth effect (t) | truth split-half ρ rows | truth distance (median) "
            "| ARI true T vs planted | ARI est. vs true T |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for score, entry in comparison["by_score"].items():
            for figures in entry["truths"].values():
                if "spearman_per_task_subsets" not in figures:
                    continue
                lines.append(comparison_row(score, figures))
    return "\n".join(lines) + "\n"


def readme_block(readme: Path, name: str) -> re.Match:
    text = readme.read_text() if readme.is_file() else ""
    pattern = re.compile(rf"(<!-- pipeline_summary: {re.escape(name)} -->\n)(.*?)(<!-- /pipeline_summary -->)", re.S)
    match = pattern.search(text)
    if match is None:
        raise UsageError(f"{readme} has no block '<!-- pipeline_summary: {name} -->' ... '<!-- /pipeline_summary -->'; add one")
    return match


def main(args: argparse.Namespace) -> None:
    if args.check_readme or args.update_readme:
        if not args.summary or not Path(args.summary).is_file():
            raise UsageError(f"--summary {args.summary}: give a summary file written by --write (run the dataset script first)")
        summary = Path(args.summary)
        readme = Path(args.check_readme or args.update_readme)
        match = readme_block(readme, summary.name)
        if args.update_readme:
            text = match.string[: match.start(2)] + summary.read_text() + match.string[match.end(2) :]
            with atomic_path(readme) as tmp:
                tmp.write_text(text)
            print(f"wrote {summary}'s figures into {readme}")
        elif match.group(2) != summary.read_text():
            print(f"{readme}'s block {summary.name} differs from {summary}: update it with --update-readme", file=sys.stderr)
            sys.exit(1)
        else:
            print(f"{readme}'s block {summary.name} equals {summary}")
        return
    if not args.groups:
        raise UsageError("--groups is required to make a summary (or pass --check-readme / --update-readme)")
    training = read_json(args.training) if args.training else None
    comparison = read_json(args.comparison) if args.comparison else None
    markdown = summary_markdown(read_json(args.groups), training, comparison)
    times = []
    for item in args.times:
        step, _, seconds = item.partition("=")
        wall, _, cpu = seconds.partition(",")
        try:
            wall, cpu = float(wall), float(cpu) if cpu else None
        except ValueError:
            raise UsageError(f"--times {item!r}: give step=wall or step=wall,cpu seconds") from None
        times.append(f"| {step} | {wall:.1f} | {_fmt(cpu, '.1f')} |")
    print("\n## Summary\n" + markdown)
    if training:
        times += [
            f"| train {method} ({row['models']} model{'s' * (row['models'] != 1)}) | {row['seconds']:.1f} | "
            f"{_fmt(row.get('cpu_seconds'), '.1f')} |"
            for method, row in training.items()
        ]
    if times:
        threads = "" if args.threads is None else f" ({args.threads} torch thread{'s' * (args.threads != 1)} per step)"
        print(f"| step | wall s | CPU s{threads} |\n|---|---|---|\n" + "\n".join(times))
    if args.write:
        with atomic_path(args.write) as tmp:
            tmp.write_text(markdown)
        readme = Path(__file__).resolve().parent / "README.md"
        if f"<!-- pipeline_summary: {Path(args.write).name} -->" in (readme.read_text() if readme.is_file() else ""):
            check = f"python pipeline_summary.py --check-readme README.md --summary {args.write}"
            print(f"wrote {args.write} (check README's copy: {check})")
        else:
            print(f"wrote {args.write}")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

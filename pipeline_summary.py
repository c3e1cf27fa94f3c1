"""Print the end-of-pipeline table of a dataset script: groups found, agreement with a planted grouping, average
test F1 of grouped training versus STL and naive MTL, estimate-versus-truth figures, and the time of each step.

Usage:
    python pipeline_summary.py --groups results/planted_groups.json --training results/planted_groups_scratch_summary.json \
        --comparison results/planted_m200_a5_s0_finetune_report.json --times step1=12.3 step2=4.1
"""

from __future__ import annotations

import argparse

from gradtag.artifacts import UsageError, read_json, run_main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", required=True, help="JSON written by run_clustering.py beside its groups file")
    parser.add_argument("--training", default=None, help="*_summary.json of train_multitask.py --baselines")
    parser.add_argument("--comparison", default=None, help="*_report.json of compare_affinities.py")
    parser.add_argument("--times", nargs="*", default=[], help="step=seconds pairs measured by the calling script")
    return parser


def main(args: argparse.Namespace) -> None:
    groups = read_json(args.groups)
    print("\n## Summary")
    print(f"groups found ({groups['method']}, k={groups['k']}): " + " | ".join(" ".join(map(str, g)) for g in groups["groups"]))
    if "ari" in groups:
        print(f"adjusted Rand index against the planted groups: {groups['ari']:.3f}")
    if args.comparison:
        report = read_json(args.comparison)
        for score, entry in report["by_score"].items():
            for truth, figures in entry["truths"].items():
                if "spearman_per_task_subsets" in figures:
                    print(
                        f"estimate vs {truth} ({score}): per-task Spearman {figures['spearman_per_task_subsets']:.3f}, "
                        f"pooled {figures['spearman_pooled']:.3f}, distance raw {figures['relative_distance_raw']:.4f} / "
                        f"row-centred {figures['relative_distance_row_centered']:.3f}"
                    )
    if args.training:
        print("\n| method | models | avg test macro-F1 | train s |\n|---|---|---|---|")
        for method, row in read_json(args.training).items():
            f1 = "–" if row["avg_test_f1"] is None else f"{row['avg_test_f1']:.4f}"
            print(f"| {method} | {row['models']} | {f1} | {row['seconds']:.1f} |")
    if args.times:
        print("\n| step | seconds |\n|---|---|")
        for item in args.times:
            step, _, seconds = item.partition("=")
            try:
                print(f"| {step} | {float(seconds):.1f} |")
            except ValueError:
                raise UsageError(f"--times {item!r}: give step=seconds") from None


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

"""Merge the shards of a truth or estimate run (``--num-shards N --shard-id k``) into the file one unsharded run writes.

Usage:
    python merge_results.py results/planted_m200_a5_s0_finetune.csv          # finds results/..._finetune.shard*of*.csv
    python merge_results.py results/planted_m200_a5_s0_estimate.csv          # also writes the affinity matrix

The merged CSV is byte-identical to an unsharded run's (rows in its order; each row computed by the same code on the
same inputs); its sidecar sums the shards' seconds and FLOPs. Missing, doubled, unfinished or foreign shards are
refused, and so is a row the run's subsets and seeds do not call for or that another row repeats (naming its shard
file and line). The shard files are left in place.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gradtag.artifacts import UsageError, run_main
from gradtag.checks import ArgumentParser
from steps.merge import merge_shards


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="the unsharded results CSV to write, e.g. results/<name>_finetune.csv")
    parser.add_argument("--shards", nargs="+", default=None, help="shard CSVs (default: <target stem>.shard*of*.csv beside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing target")
    return parser


def main(args: argparse.Namespace) -> None:
    target = Path(args.target)
    if target.exists() and not args.overwrite:
        raise UsageError(f"{target} already exists; pass --overwrite to replace it")
    path, count = merge_shards(target, [Path(shard) for shard in args.shards] if args.shards else None)
    print(f"merged {count} shards into {path} (+ its .json sidecar)")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

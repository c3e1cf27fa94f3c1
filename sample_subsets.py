"""Write a ``sampled_tasks`` file: m random task subsets of size a (Grad-TAG, Alg. 1), or all pairs.

Usage:
    python sample_subsets.py --dataset planted --num-subsets 200 --subset-size 5 --seed 0
    python sample_subsets.py --dataset planted --pairs
    python sample_subsets.py --dataset dblp --num-tasks 100 --num-subsets 2000 --subset-size 10 --out my_subsets.txt

The number of tasks n comes from the dataset's defaults and ``--num-tasks``; the graph is not loaded. The file (one
subset per line, 0-based task indices, ``#`` comments) is what ``train_multitask.py --subsets-file`` trains on and what
the estimation step scores; edit it by hand if you like. Default output:
``sampled_tasks/<dataset>_m<m>_a<a>_s<seed>.txt`` (or ``sampled_tasks/<dataset>_pairs.txt``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data import add_data_args, dataset_options, num_tasks_of
from gradtag.artifacts import UsageError, run_main
from gradtag.checks import OUTPUT_FILE, POSITIVE_INT, ArgumentParser
from gradtag.results import write_subsets
from gradtag.subsets import DEFAULT_SAMPLED_DIR, all_pairs, sample_subsets, subsets_file_path

DEFAULT_NUM_SUBSETS = 200  # m: subsets to sample
DEFAULT_SUBSET_SIZE = 5  # a: tasks per subset


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    group = parser.add_argument_group("subsets")
    group.add_argument(
        "--num-subsets",
        type=POSITIVE_INT,
        default=None,
        help=f"m: number of distinct subsets to sample (default: {DEFAULT_NUM_SUBSETS})",
    )
    group.add_argument(
        "--subset-size",
        type=POSITIVE_INT,
        default=None,
        help=f"a: number of tasks in each subset (default: {DEFAULT_SUBSET_SIZE})",
    )
    group.add_argument(
        "--pairs",
        action="store_true",
        help="write all n(n-1)/2 pairs instead (pairwise affinity); excludes --num-subsets and --subset-size",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the subset sampling (ignored with --pairs)")
    group = parser.add_argument_group("output")
    group.add_argument(
        "--out",
        type=OUTPUT_FILE,
        default=None,
        help=f"file to write (default: {DEFAULT_SAMPLED_DIR}/<dataset>_m<m>_a<a>_s<seed>.txt or "
        f"{DEFAULT_SAMPLED_DIR}/<dataset>_pairs.txt)",
    )
    group.add_argument("--overwrite", action="store_true", help="replace the output file if it already exists")
    return parser


def validate(args: argparse.Namespace) -> None:
    if args.pairs and (args.num_subsets is not None or args.subset_size is not None):
        raise UsageError("--pairs writes every pair; drop --num-subsets and --subset-size (or drop --pairs)")
    if not args.pairs:
        args.num_subsets = DEFAULT_NUM_SUBSETS if args.num_subsets is None else args.num_subsets
        args.subset_size = DEFAULT_SUBSET_SIZE if args.subset_size is None else args.subset_size


def main(args: argparse.Namespace) -> None:
    validate(args)
    num_tasks = num_tasks_of(args.dataset, dataset_options(args), args.data_dir)
    out = (
        Path(args.out) if args.out else subsets_file_path(args.dataset, args.num_subsets, args.subset_size, args.seed, args.pairs)
    )
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it or choose another --out")

    if args.pairs:
        subsets = all_pairs(num_tasks)
        what = f"all pairs: dataset={args.dataset} n={num_tasks} m={len(subsets)} a=2"
    else:
        subsets = sample_subsets(num_tasks, args.num_subsets, args.subset_size, args.seed)
        what = f"random subsets: dataset={args.dataset} n={num_tasks} m={args.num_subsets} a={args.subset_size} seed={args.seed}"
    header = f"{what}\nwritten by sample_subsets.py; one subset per line, 0-based task indices"
    write_subsets(out, subsets, header=header)
    print(f"wrote {len(subsets)} subsets ({what}) to {out}")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

"""Check a dataset before any training: load it as every step does and print its tasks and their splits.

Usage:
    python check_data.py --dataset mygraph --data-dir mydata --num-tasks 8
    python check_data.py --dataset rte --data-dir ../shared/data/rte --instructions prompts.yaml --num-tasks 10

A file that cannot be read, too few communities for ``--num-tasks``, or tasks without both classes are refused here in
one line (exit 2), as train_multitask.py would refuse them, but before any model is trained; the dataset scripts run
it first. It writes nothing but what the first step would write anyway (the feature cache; planted's generated
files), and prints, per split, how many positive samples the tasks have, naming the tasks whose validation split
holds no positive (F1 cannot judge them).
"""

from __future__ import annotations

import argparse

import numpy as np

from data import add_data_args, dataset_options, load_dataset
from gradtag.artifacts import run_main
from gradtag.checks import ArgumentParser
from steps.cli import use_threads

SPLITS = ("train", "val", "test")


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads for computing the features")
    return parser


def main(args: argparse.Namespace) -> None:
    use_threads(args.threads)
    dataset = load_dataset(args.dataset, args.data_dir, **dataset_options(args))
    positives = np.array(
        [[int(np.sum(dataset.task_labels(task, split))) for split in SPLITS] for task in range(dataset.num_tasks)]
    )  # (tasks, splits)
    print(f"{args.dataset}: {dataset.num_tasks} tasks, fingerprint {dataset.fingerprint}")
    for column, split in enumerate(SPLITS):
        counts = positives[:, column]
        print(f"  {split:5s} positives per task: min {counts.min()}, median {int(np.median(counts))}, max {counts.max()}")
    unjudged = [dataset.task_names[task] for task in np.flatnonzero(positives[:, 1] == 0)]
    if unjudged:
        print(
            f"  {len(unjudged)} task(s) have no validation positive, so no validation F1 can judge them: "
            f"{', '.join(unjudged[:10])}{' ...' if len(unjudged) > 10 else ''}"
        )


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

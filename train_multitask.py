"""Step 1: train multitask models (meta-initializations), or one model per task subset (true affinities, groups).

Usage:
    python train_multitask.py --dataset planted --tasks all --runs 1
    python train_multitask.py --dataset planted --subsets-file sampled_tasks/planted_m200_a5_s0.txt
    python train_multitask.py --dataset planted --subsets-file ... --init-from saved/planted/all_seed0 --fixed-steps 50
    python train_multitask.py --dataset planted --tasks all --record-tag   # + TAG's affinity, tag_affinity.npy
    python train_multitask.py --dataset planted --record-data-map        # + saved/planted/all_seed0/data_map.npz
    python train_multitask.py --dataset planted --subsets-file results/dm.txt --task-weights results/dm_memberships.npy

Without ``--subsets-file`` it trains on ``--tasks`` for ``--runs`` seeds and writes ``saved/<dataset>/<run>/``
(model.pt, config.json, metrics.json). With ``--subsets-file`` it trains one model per line (from the same
initialisation for every subset, or fine-tuned from ``--init-from``), ``--truth-seeds`` times each, and appends one row
per (subset, task, seed) to ``results/<name>.csv`` — the true f(S, j). Rows already there are skipped (resumable).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data import add_data_args
from gradtag.artifacts import run_main
from gradtag.checks import POSITIVE_INT, ArgumentParser
from steps.cli import add_folder_args, add_model_args, add_run_args, add_training_args
from steps.launch import add_launcher_args, launch
from steps.merge import merge_shards
from steps.partition import add_shard_args
from steps.train import TrainJob, check_job, results_name, run


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    add_model_args(parser)
    add_training_args(parser)
    add_run_args(parser)
    add_folder_args(parser, "saved", "results")
    group = parser.add_argument_group("what to train")
    group.add_argument("--tasks", default="all", help="'all' or task indices such as '0 3 5' (ignored with --subsets-file)")
    group.add_argument("--runs", type=POSITIVE_INT, default=1, help="number of meta-initializations M: seeds seed .. seed+M-1")
    group.add_argument("--subsets-file", default=None, help="train one model per line of this sampled_tasks/groups file")
    group.add_argument(
        "--init-from",
        nargs="+",
        default=None,
        metavar="CHECKPOINT",
        help="with --subsets-file: fine-tune this step-1 checkpoint folder instead of training from scratch; several "
        "folders (θ* seeds) fine-tune every subset from each, rows keyed by the base's seed: the CSV's seed average is "
        "the truth for an estimate over the same M bases, and compare prints their agreement (the θ* ceiling)",
    )
    group.add_argument(
        "--truth-seeds", type=POSITIVE_INT, default=1, help="with --subsets-file: train every subset this many times (seeds)"
    )
    group.add_argument(
        "--results-name",
        default=None,
        help="with --subsets-file: CSV name in --results-dir (default: <subsets stem>_<scratch|finetune>)",
    )
    group.add_argument(
        "--baselines",
        action="store_true",
        help="with a groups file: also train single-task models (STL) and one all-task model (naive MTL), and compare",
    )
    group.add_argument(
        "--record-data-map",
        action="store_true",
        help="step 1 only: after every epoch, score p(true label) of every training (sample, task) pair in eval mode "
        "(dataset cartography) and write the trace to the checkpoint folder as data_map.npz (probabilities (epochs, "
        "pairs) float32, each pair's task, sample and label) for run_clustering.py --data-map (STG-MTL); costs one "
        "forward pass over the training pairs per epoch; refused with --fixed-steps (no epochs)",
    )
    group.add_argument(
        "--task-weights",
        default=None,
        metavar="MEMBERSHIPS.npy",
        help="with a groups --subsets-file: a (groups, tasks) .npy of loss weights (run_clustering.py --data-map's "
        "<stem>_memberships.npy); group g's model trains on every task j with w_gj > 0, task j's loss and validation "
        "score weighted by w_gj / sum_j w_gj (tasks of weight 0 are left out: their parameters stay untouched), and is "
        "scored on line g's tasks; CSV default name <stem>_weighted_<mode>",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing checkpoint folder of the same run; with --subsets-file, start the results CSV afresh",
    )
    tag = parser.add_argument_group("TAG baseline (Fifty et al. 2021), step 1 only")
    tag.add_argument(
        "--record-tag",
        action="store_true",
        help="while training θ*, record TAG's inter-task affinity Z_{i->j} = 1 - L_j(θ_s - lr ∇L_i) / L_j(θ_s) from SGD "
        "look-ahead steps on the shared parameters (output layer / nothing held fixed for text) on each step's batch; "
        "writes tag_affinity.npy (n x n, row = task measured, higher = more affinity; run_clustering.py --affinity reads "
        "it) with _counts.npy and .json into the checkpoint folder. Costs about 2n+1 extra passes per recorded step",
    )
    tag.add_argument(
        "--tag-every",
        type=POSITIVE_INT,
        default=1,
        help="with --record-tag: record at every N-th optimiser step (steps 0, N, 2N, ...); TAG averages every step (1), "
        "larger N cuts the cost N-fold",
    )
    add_shard_args(parser, "M seeds (step 1) or the subsets of --subsets-file")
    add_launcher_args(parser)
    return parser


def main(args: argparse.Namespace) -> None:
    job = TrainJob.from_args(args)
    if args.launcher == "none":
        run(job)
        return
    check_job(job)
    launch("steps.train", job, args)
    if job.subsets_file:
        path, count = merge_shards(Path(job.results_dir) / f"{results_name(job)}.csv")
        print(f"trained {count} shards with --launcher {args.launcher}; merged them into {path}")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

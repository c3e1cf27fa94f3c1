"""Step 2: projected gradients of a step-1 checkpoint, per task and split (Alg. 1, lines 2-4).

Usage:
    python collect_gradients.py --checkpoint saved/planted/all_seed0 --project-dim 200
    python collect_gradients.py --checkpoint saved/dblp/all_seed0 --num-shards 8 --shard-id $SLURM_ARRAY_TASK_ID

For every task j and every sample of j in ``--splits`` it computes g = Pᵀ ∇θ logit_j(x; θ*), the gradient of the
model's task-j logit at the base weights projected by a seeded JL matrix P (p × d; never stored, regenerated from
``projection.json``), and writes ``gradients/<dataset>/<run>_d<dim>/task_<j>_<split>_{gradients,outputs,labels,nodes}.npy``.
The dataset is rebuilt from the checkpoint's own config, so no data flag needs repeating. Tasks already written are
skipped (resumable); ``--num-shards/--shard-id`` split the tasks across cluster jobs.
"""

from __future__ import annotations

import argparse
import dataclasses

from gradtag.artifacts import read_config, run_main
from gradtag.checks import POSITIVE_INT, ArgumentParser
from gradtag.gradients import GRADIENT_METHODS
from gradtag.projection import PROJECTIONS
from steps.cli import add_folder_args, add_run_args, add_strict_arg
from steps.gradients import GRADIENT_SPLITS, GradientJob, check_job, output_folder, remove_step_files, run
from steps.launch import add_launcher_args, launch
from steps.partition import add_shard_args


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="step-1 checkpoint folder, e.g. saved/planted/all_seed0")
    parser.add_argument("--data-dir", default=None, help="where the dataset's files are, if not where step 1 found them")
    parser.add_argument("--project-dim", type=POSITIVE_INT, default=200, help="d, the projected dimension (paper: about 200)")
    parser.add_argument(
        "--projection",
        default="gaussian",
        choices=PROJECTIONS,
        help="P: dense JL with N(0, 1/d) or ±1/sqrt(d) entries, or 'kronecker' (a sketch per weight matrix, then a "
        "small dense JL map; much cheaper at paper size, less accurate: README, 'Step 2 at paper size')",
    )
    parser.add_argument(
        "--kronecker-rank", type=POSITIVE_INT, default=16, help="with --projection kronecker: sketch width per side r"
    )
    parser.add_argument(
        "--method",
        default="factored",
        choices=GRADIENT_METHODS,
        help="how per-pair gradients are formed (same numbers up to float rounding): 'factored' contracts P with each "
        "layer's input once per node (fastest; linear layers and batch norm only), 'shared' forms each pair's "
        "gradient from one forward per node, 'per_pair' runs one forward per pair",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["train", "val"],
        choices=GRADIENT_SPLITS,
        help="splits to collect: train for the regressions; val (and test) for linearized scoring",
    )
    parser.add_argument("--tasks", default="all", help="'all' or task indices such as '0 3 5' (a part of the work)")
    parser.add_argument(
        "--batch-size",
        type=POSITIVE_INT,
        default=None,
        help="samples per batched gradient call, the memory knob (default: 256 nodes for graphs, 16 rendered inputs "
        "for text: a batch of 256 RTE inputs of 128 tokens exhausted 24 GB)",
    )
    parser.add_argument(
        "--task-chunk", type=POSITIVE_INT, default=10, help="tasks computed together before their files are written"
    )
    parser.add_argument("--overwrite", action="store_true", help="delete the output folder first instead of resuming into it")
    parser.add_argument("--out", default=None, help="output folder (default: <gradients-dir>/<dataset>/<run>_d<dim>)")
    add_strict_arg(parser)
    add_run_args(parser)
    add_folder_args(parser, "gradients")
    add_shard_args(parser, "tasks (all shards write into one folder)")
    add_launcher_args(parser)
    return parser


def main(args: argparse.Namespace) -> None:
    job = GradientJob.from_args(args)
    if args.launcher == "none":
        run(job)
        return
    check_job(job)
    # every shard writes into one folder; an --overwrite empties it once, here, not per shard
    folder = output_folder(job, read_config(job.checkpoint, "checkpoint")["dataset"])
    if job.overwrite:
        remove_step_files(folder)
    launch("steps.gradients", dataclasses.replace(job, overwrite=False), args)
    print(f"collected {job.num_shards} shards of projected gradients with --launcher {args.launcher} into {folder}")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

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
import sys
import time
from pathlib import Path

import numpy as np

from data import load_dataset
from gradtag.artifacts import (
    UsageError,
    add_cost,
    check_compatible,
    exclusive_lock,
    gradient_file,
    gradients_dir,
    npy_complete,
    package_versions,
    read_config,
    read_json,
    relative_path,
    run_main,
    save_npy,
    weights_fingerprint,
    write_json,
)
from gradtag.checks import POSITIVE_INT, ArgumentParser
from gradtag.flops import count_flops, format_flops
from gradtag.gradients import collect_projected_gradients, flat_params, num_trainable_params
from gradtag.health import base_verdict
from gradtag.projection import KINDS, Projector
from gradtag.training import load_checkpoint
from steps.cli import add_folder_args, add_run_args, add_strict_arg, parse_tasks, resolve_device
from steps.launch import add_launcher_args, launch
from steps.partition import add_shard_args, check_shard, shard_indices

GRADIENT_SPLITS = ("train", "val", "test")
KINDS_ON_DISK = ("gradients", "outputs", "labels", "nodes")


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="step-1 checkpoint folder, e.g. saved/planted/all_seed0")
    parser.add_argument("--data-dir", default=None, help="where the dataset's files are, if not where step 1 found them")
    parser.add_argument("--project-dim", type=POSITIVE_INT, default=200, help="d, the projected dimension (paper: about 200)")
    parser.add_argument("--projection", default="gaussian", choices=KINDS, help="JL entries: N(0, 1/d) or ±1/sqrt(d)")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["train", "val"],
        choices=GRADIENT_SPLITS,
        help="splits to collect: train for the regressions; val (and test) for linearized scoring",
    )
    parser.add_argument("--tasks", default="all", help="'all' or task indices such as '0 3 5' (a part of the work)")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=256, help="nodes per vectorised gradient call (memory knob)")
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


def validate(args) -> None:
    check_shard(args.num_shards, args.shard_id)


def output_folder(args, dataset_name: str) -> Path:
    """``--out``, else ``<gradients-dir>/<dataset>/<run>_d<dim>``."""
    if args.out:
        return Path(args.out)
    return gradients_dir(args.gradients_dir, dataset_name, Path(args.checkpoint).name, args.project_dim)


def task_done(folder: Path, task: int, splits) -> bool:
    """Every file of ``task`` is on disk and whole (a truncated file, e.g. from a full disk, is computed again)."""
    return all(npy_complete(gradient_file(folder, task, split, kind)) for split in splits for kind in KINDS_ON_DISK)


def remove_step_files(folder: Path, tasks: list[int] | None = None, cost_path: Path | None = None) -> None:
    """``--overwrite``: delete the files this step writes in ``folder`` — its config, projection, per-task arrays and
    cost records — and nothing else (a user's own files and folders there stay). A shard (``tasks`` and its
    ``cost_path`` given) deletes only its own tasks' arrays and its cost record, never another shard's files."""
    if not folder.is_dir():
        return
    patterns = ("config.json", "projection.json", "task_*_*_*.npy", "cost_shard*of*.json", ".*.tmp")
    if tasks is not None:
        patterns = (*(f"task_{task}_*_*.npy" for task in tasks), cost_path.name)
    for pattern in patterns:
        for path in folder.glob(pattern):
            if path.is_file() and not path.is_symlink():
                path.unlink()


def main(args: argparse.Namespace) -> None:
    validate(args)
    checkpoint = Path(args.checkpoint)
    checkpoint_config = read_config(checkpoint, "checkpoint")
    if args.launcher != "none":  # every shard into one folder; an --overwrite empties it once, here, not per shard
        folder = output_folder(args, checkpoint_config["dataset"])
        if args.overwrite:
            remove_step_files(folder)
        launch("collect_gradients", argparse.Namespace(**{**vars(args), "overwrite": False}))
        print(f"collected {args.num_shards} shards of projected gradients with --launcher {args.launcher} into {folder}")
        return
    device = resolve_device(args.device)
    dataset = load_dataset(
        checkpoint_config["dataset"],
        args.data_dir or checkpoint_config["args"].get("data_dir"),
        **checkpoint_config["dataset_options"],
    )
    model, checkpoint_config = load_checkpoint(checkpoint, device, dataset)
    verdict = base_verdict(checkpoint, args.strict)  # before anything is written: --strict refuses a degenerate θ*
    if verdict:
        print(verdict, file=sys.stderr)
    projector = Projector(num_trainable_params(model), args.project_dim, args.seed, kind=args.projection)
    all_tasks = parse_tasks(args.tasks, dataset.num_tasks)
    shard_tasks = [all_tasks[index] for index in shard_indices(len(all_tasks), args.num_shards, args.shard_id)]
    folder = output_folder(args, dataset.name)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file, not a folder; choose another --out")
    identity = {
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "dataset_options": checkpoint_config["dataset_options"],
        "task_names": dataset.task_names,
        "checkpoint_fingerprint": weights_fingerprint(checkpoint / "model.pt"),
        "checkpoint_seed": checkpoint_config["seed"],
        "training": checkpoint_config["training"],
        "projection": projector.spec(),
        "splits": list(args.splits),
    }
    config_path = folder / "config.json"
    cost_path = folder / f"cost_shard{args.shard_id}of{args.num_shards}.json"
    if args.overwrite:
        remove_step_files(folder, *((shard_tasks, cost_path) if args.num_shards > 1 else ()))
    if config_path.is_file():
        check_compatible(read_json(config_path), folder, **identity)
    else:
        write_json(folder / "projection.json", projector.spec())
        base_norm = float(flat_params(model).norm())  # ‖θ*‖: step 3 reports its estimates' move ‖P ŵ‖ relative to it
        where = {"checkpoint": str(checkpoint), "checkpoint_relative": relative_path(checkpoint, folder)}
        write_json(config_path, {**identity, **where, "base_norm": base_norm, "versions": package_versions(), "args": vars(args)})

    tasks = shard_tasks
    with exclusive_lock(cost_path, f"shard {args.shard_id} of {args.num_shards} of {folder}"):
        todo = [task for task in tasks if not task_done(folder, task, args.splits)]
        seconds, total_flops = collect_tasks(args, dataset, model, projector, folder, tasks, set(todo), device, cost_path)
    print(
        f"projected gradients (p={projector.num_params} -> d={args.project_dim}) of {len(todo)} tasks "
        f"({len(tasks) - len(todo)} already done) in {seconds:.1f}s ({format_flops(total_flops)}); wrote {folder}"
    )


def collect_tasks(
    args, dataset, model, projector, folder: Path, tasks: list[int], todo: set[int], device, cost_path: Path
) -> tuple[float, int]:
    """Compute and save the projected gradients, base logits, labels and nodes of every task in ``todo``, per split.

    The shard's ``tasks`` are cut into chunks of ``--task-chunk`` at fixed places and a chunk holding any task of
    ``todo`` is computed whole: batches then hold the same samples as in an uninterrupted run, so a resumed run writes
    the same bytes (float32 results depend, at the 1e-7 level, on which samples share a batch). Each chunk's seconds
    and FLOPs are added to ``cost_path`` before its files are written, so a killed run loses no cost (a chunk killed
    before its files were written is counted again when redone). Returns the seconds and FLOPs of this run."""
    total_seconds, total_flops = 0.0, 0
    chunks = [tasks[first : first + args.task_chunk] for first in range(0, len(tasks), args.task_chunk)]
    for chunk in [chunk for chunk in chunks if todo.intersection(chunk)]:
        pieces = [(task, split, dataset.samples(task, split)) for task in chunk for split in args.splits]
        nodes = np.concatenate([samples for _, _, samples in pieces])
        owners = np.concatenate([np.full(len(samples), task) for task, _, samples in pieces])
        start = time.perf_counter()
        with count_flops() as flops:
            gradients, outputs = collect_projected_gradients(
                model,
                dataset.features,
                (nodes, owners),
                projector,
                batch_size=args.batch_size,
                device=device,
                progress=not args.no_progress,
                desc=f"gradients tasks {chunk[0]}..{chunk[-1]}",
            )
        seconds = time.perf_counter() - start
        add_cost(cost_path, seconds, flops.total)
        total_seconds, total_flops = total_seconds + seconds, total_flops + flops.total
        offset = 0
        for task, split, samples in pieces:
            rows = slice(offset, offset + len(samples))
            offset += len(samples)
            if task not in todo:
                continue
            save_npy(gradient_file(folder, task, split, "gradients"), gradients[rows])
            save_npy(gradient_file(folder, task, split, "outputs"), outputs[rows])
            save_npy(gradient_file(folder, task, split, "labels"), dataset.labels[samples, task].astype(np.float32))
            # nodes last: a task counts as done only once every file of it is on disk
            save_npy(gradient_file(folder, task, split, "nodes"), samples.astype(np.int64))
    return total_seconds, total_flops


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

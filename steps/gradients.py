"""Step 2: projected gradients of a step-1 checkpoint, per task and split (Alg. 1, lines 2-4).

:func:`run` takes a frozen :class:`GradientJob`. For every task j of this shard and every sample of j in ``splits``
it computes g = Pᵀ ∇θ logit_j(x; θ*), the gradient of the model's task-j logit at the base weights projected by a
seeded JL matrix P (p × d; never stored, regenerated from ``projection.json``), and writes
``<folder>/task_<j>_<split>_{gradients,outputs,labels,nodes}.npy``. The dataset is rebuilt from the checkpoint's own
config. Tasks already written (and whole) are skipped; every shard writes into the one folder.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data import load_dataset
from gradtag.artifacts import (
    UsageError,
    add_cost,
    check_compatible,
    exclusive_lock,
    npy_complete,
    package_versions,
    read_config,
    read_json,
    relative_path,
    save_npy,
    write_json,
)
from gradtag.checkpoints import gradient_file, gradients_dir, state_fingerprint
from gradtag.flops import format_flops
from gradtag.gradients import flat_params, trainable_parameters
from gradtag.health import base_verdict
from gradtag.projection import make_projector
from steps.cli import job_from_flags, parse_tasks, resolve_device, use_threads
from steps.domains import domain_of
from steps.partition import check_shard, shard_indices

GRADIENT_SPLITS = ("train", "val", "test")
KINDS_ON_DISK = ("gradients", "outputs", "labels", "nodes")


@dataclass(frozen=True)
class GradientJob:
    """Everything :func:`run` needs, frozen (``collect_gradients.py``'s flags)."""

    checkpoint: str
    data_dir: str | None = None
    project_dim: int = 200
    projection: str = "gaussian"
    kronecker_rank: int = 16
    method: str = "factored"
    splits: tuple[str, ...] = ("train", "val")
    tasks: str = "all"
    batch_size: int | None = None  # None: the domain's (steps.domains: gradient_batch_size)
    task_chunk: int = 10
    overwrite: bool = False
    out: str | None = None
    strict: bool = False
    seed: int = 0
    device: str = "auto"
    no_progress: bool = False
    gradients_dir: str = "gradients"
    num_shards: int = 1
    shard_id: int = 0
    threads: int | None = None

    @classmethod
    def from_args(cls, args) -> GradientJob:
        return job_from_flags(cls, args)

    def record(self) -> dict:
        """The job as the gradients folder's config records it under ``args``."""
        return {**dataclasses.asdict(self), "splits": list(self.splits)}


def check_job(job: GradientJob) -> None:
    """Refuse flag combinations that make no sense, before anything is read or written."""
    check_shard(job.num_shards, job.shard_id)


def output_folder(job, dataset_name: str) -> Path:
    """``--out``, else ``<gradients-dir>/<dataset>/<run>_d<dim>``."""
    if job.out:
        return Path(job.out)
    return gradients_dir(job.gradients_dir, dataset_name, Path(job.checkpoint).name, job.project_dim)


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


def run(job: GradientJob) -> None:
    """Collect what ``job`` asks for (see the module docstring)."""
    check_job(job)
    use_threads(job.threads)
    checkpoint = Path(job.checkpoint)
    checkpoint_config = read_config(checkpoint, "checkpoint")
    device = resolve_device(job.device)
    dataset = load_dataset(
        checkpoint_config["dataset"],
        job.data_dir or checkpoint_config["args"].get("data_dir"),
        **checkpoint_config["dataset_options"],
    )
    domain = domain_of(dataset)
    model, checkpoint_config = domain.load_checkpoint(checkpoint, device, dataset)
    verdict = base_verdict(checkpoint, job.strict)  # before anything is written: --strict refuses a degenerate θ*
    if verdict:
        print(verdict, file=sys.stderr)
    shapes = [param.shape for param in trainable_parameters(model).values()]
    projector = make_projector(job.projection, shapes, job.project_dim, job.seed, rank=job.kronecker_rank)
    all_tasks = parse_tasks(job.tasks, dataset.num_tasks)
    shard_tasks = [all_tasks[index] for index in shard_indices(len(all_tasks), job.num_shards, job.shard_id)]
    folder = output_folder(job, dataset.name)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file, not a folder; choose another --out")
    identity = {
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "dataset_options": checkpoint_config["dataset_options"],
        "task_names": dataset.task_names,
        "checkpoint_fingerprint": state_fingerprint(domain.state(model)),
        "checkpoint_seed": checkpoint_config["seed"],
        "training": checkpoint_config["training"],
        "projection": projector.spec(),
        "splits": list(job.splits),
    }
    config_path = folder / "config.json"
    cost_path = folder / f"cost_shard{job.shard_id}of{job.num_shards}.json"
    if job.overwrite:
        remove_step_files(folder, *((shard_tasks, cost_path) if job.num_shards > 1 else ()))
    if config_path.is_file():
        check_compatible(read_json(config_path), folder, **identity)
    else:
        write_json(folder / "projection.json", projector.spec())
        base_norm = float(flat_params(model).norm())  # ‖θ*‖: step 3 reports its estimates' move ‖P ŵ‖ relative to it
        where = {"checkpoint": str(checkpoint), "checkpoint_relative": relative_path(checkpoint, folder), "domain": domain.name}
        write_json(
            config_path, {**identity, **where, "base_norm": base_norm, "versions": package_versions(), "args": job.record()}
        )

    with exclusive_lock(cost_path, f"shard {job.shard_id} of {job.num_shards} of {folder}"):
        todo = [task for task in shard_tasks if not task_done(folder, task, job.splits)]
        seconds, total_flops = collect_tasks(
            job, dataset, domain, model, projector, folder, shard_tasks, set(todo), device, cost_path
        )
    print(
        f"projected gradients (p={projector.num_params} -> d={job.project_dim}) of {len(todo)} tasks "
        f"({len(shard_tasks) - len(todo)} already done) in {seconds:.1f}s ({format_flops(total_flops)}); wrote {folder}"
    )


def collect_tasks(
    job, dataset, domain, model, projector, folder: Path, tasks: list[int], todo: set[int], device, cost_path: Path
) -> tuple[float, int]:
    """Compute and save the projected gradients, base logits, labels and nodes of every task in ``todo``, per split.

    The shard's ``tasks`` are cut into chunks of ``--task-chunk`` at fixed places and a chunk holding any task of
    ``todo`` is computed whole: batches then hold the same samples as in an uninterrupted run, so a resumed run writes
    the same bytes (float32 results depend, at the 1e-7 level, on which samples share a batch). Each chunk's seconds
    and FLOPs are added to ``cost_path`` before its files are written, so a killed run loses no cost (a chunk killed
    before its files were written is counted again when redone). Returns the seconds and FLOPs of this run."""
    total_seconds, total_flops = 0.0, 0
    chunks = [tasks[first : first + job.task_chunk] for first in range(0, len(tasks), job.task_chunk)]
    for chunk in [chunk for chunk in chunks if todo.intersection(chunk)]:
        pieces = [(task, split, dataset.samples(task, split)) for task in chunk for split in job.splits]
        start, cpu_start = time.perf_counter(), time.process_time()
        gradients, outputs, flops = domain.collect(
            model, dataset, pieces, projector, job, device, f"gradients tasks {chunk[0]}..{chunk[-1]}"
        )
        seconds = time.perf_counter() - start
        add_cost(cost_path, seconds, flops, time.process_time() - cpu_start)
        total_seconds, total_flops = total_seconds + seconds, total_flops + flops
        offset = 0
        for task, split, samples in pieces:
            rows = slice(offset, offset + len(samples))
            offset += len(samples)
            if task not in todo:
                continue
            save_npy(gradient_file(folder, task, split, "gradients"), gradients[rows])
            save_npy(gradient_file(folder, task, split, "outputs"), outputs[rows])
            save_npy(gradient_file(folder, task, split, "labels"), dataset.task_labels(task, split).astype(np.float32))
            # nodes last: a task counts as done only once every file of it is on disk
            save_npy(gradient_file(folder, task, split, "nodes"), samples.astype(np.int64))
    return total_seconds, total_flops

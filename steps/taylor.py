"""The Taylor check as a step (``taylor_check.py --help``): fine-tune θ* on random subsets for several step counts
and measure, at each fine-tuned W, how much of the change of the outputs the first-order expansion misses."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data import load_dataset
from gradtag.artifacts import UsageError, package_versions, read_config, write_json
from gradtag.checkpoints import state_fingerprint
from gradtag.gradients import flat_params
from gradtag.subsets import sample_subsets
from gradtag.taylor import METRICS, taylor_residuals, validation_pairs
from gradtag.training import TrainConfig, load_checkpoint, train_model
from steps.cli import job_from_flags, resolve_device, seed_everything, use_threads


@dataclass(frozen=True)
class TaylorJob:
    """Everything :func:`run` needs, frozen (``taylor_check.py``'s flags)."""

    checkpoint: str
    data_dir: str | None = None
    subset_size: int = 5
    num_subsets: int = 5
    steps: tuple[int, ...] = (10, 25, 50, 100, 200)
    lr: float | None = None
    eval_batch_size: int = 4096
    out: str | None = None
    overwrite: bool = False
    seed: int = 0
    device: str = "auto"
    no_progress: bool = False
    results_dir: str = "results"
    threads: int | None = None

    @classmethod
    def from_args(cls, args) -> TaylorJob:
        return job_from_flags(cls, args)


def check_job(job: TaylorJob) -> None:
    if not (Path(job.checkpoint) / "config.json").is_file():
        raise UsageError(f"checkpoint {job.checkpoint} has no config.json; train it first with train_multitask.py")


def taylor_path(results_dir: str | Path, dataset: str) -> Path:
    """``<results-dir>/<dataset>_taylor.json``: this script's output."""
    return Path(results_dir) / f"{dataset}_taylor.json"


def fine_tuning_config(training: dict, steps: int, lr: float | None) -> TrainConfig:
    """The checkpoint's recorded training settings (weight decay, batch size, ...), for exactly ``steps`` steps."""
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    settings = {key: value for key, value in training.items() if key in known}
    settings["fixed_steps"] = steps
    if lr is not None:
        settings["lr"] = lr
    return TrainConfig(**settings)


def averages_by_steps(rows: list[dict], steps: list[int]) -> list[dict]:
    """Mean of each metric over the subsets, per step count (in the order of ``--steps``)."""
    return [
        {"steps": count, **{key: float(np.mean([row[key] for row in rows if row["steps"] == count])) for key in METRICS}}
        for count in steps
    ]


def run(job: TaylorJob) -> dict:
    """Fine-tune and expand as ``job`` says; write the JSON record and return it (see the module docstring)."""
    check_job(job)
    use_threads(job.threads)
    device = resolve_device(job.device)
    checkpoint = Path(job.checkpoint)
    checkpoint_config = read_config(checkpoint, "checkpoint")
    num_tasks = len(checkpoint_config["task_names"])
    if job.subset_size > num_tasks:
        raise UsageError(f"--subset-size {job.subset_size} exceeds the checkpoint's {num_tasks} tasks")
    if checkpoint_config.get("domain", "graph") != "graph":
        raise UsageError(f"{checkpoint} is a text model; the Taylor check (Table 1) is implemented for graph models only")
    out = Path(job.out) if job.out else taylor_path(job.results_dir, checkpoint_config["dataset"])
    if out.exists() and not job.overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    dataset = load_dataset(
        checkpoint_config["dataset"],
        job.data_dir or checkpoint_config["args"].get("data_dir"),
        **checkpoint_config["dataset_options"],
    )
    base_model, checkpoint_config = load_checkpoint(checkpoint, device, dataset)
    base_params = flat_params(base_model)
    steps = sorted(set(job.steps))

    # seeding: one --seed draws the subsets and seeds every fine-tuning run (data order and initial state)
    subsets = [list(subset) for subset in sample_subsets(dataset.num_tasks, job.num_subsets, job.subset_size, job.seed)]

    rows = []
    start = time.perf_counter()
    jobs = [(index, count) for index in range(len(subsets)) for count in steps]
    for index, count in tqdm(jobs, desc="fine-tune and expand", disable=job.no_progress):
        subset = subsets[index]
        model = copy.deepcopy(base_model)
        seed_everything(job.seed)
        train_model(model, dataset, subset, fine_tuning_config(checkpoint_config["training"], count, job.lr), device, job.seed)
        x, tasks = validation_pairs(dataset, subset)
        result = taylor_residuals(model, base_params, flat_params(model), x, tasks, batch_size=job.eval_batch_size)
        rows.append({"subset_id": index, "subset": " ".join(map(str, subset)), "steps": count, **result})
    seconds = time.perf_counter() - start

    averages = averages_by_steps(rows, steps)
    record = {
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "checkpoint": str(checkpoint),
        "checkpoint_fingerprint": state_fingerprint(base_model.state_dict()),
        "num_params": int(base_params.numel()),
        "subsets": subsets,
        "steps": steps,
        "training": {**vars(fine_tuning_config(checkpoint_config["training"], steps[-1], job.lr)), "fixed_steps": None},
        "samples": "validation samples of the tasks in each subset; f = the logit of the sample's own task",
        "definitions": {
            "relative_distance": "||W - θ*|| / ||θ*||",
            "residual_vs_change": "Σ (f_W - f_θ* - ∇f_θ*·(W - θ*))² / Σ (f_W - f_θ*)²",
            "residual_second_order_vs_change": "Σ (f_W - f_θ* - ∇f_θ*·Δ - ½ Δᵀ∇²f_θ*Δ)² / Σ (f_W - f_θ*)², Δ = W - θ*",
            "residual_vs_output": "Σ (f_W - f_θ* - ∇f_θ*·(W - θ*))² / Σ f_W²",
            "change_vs_output": "Σ (f_W - f_θ*)² / Σ f_W²",
        },
        "rows": rows,
        "averages": averages,
        "seed": job.seed,
        "seconds": seconds,
        "args": dataclasses.asdict(job),
        "versions": package_versions(),
    }
    write_json(out, record)
    return {**record, "out": str(out)}

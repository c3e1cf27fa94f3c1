"""Forward or backward selection of a target task's partners by step 3's linearized estimates (Remark 4.3, App. C.1.2).

:func:`run` takes a frozen :class:`SelectJob` (``select_tasks.py``'s flags). It builds step 3's per-base estimators
once from the gradient folders (:func:`steps.estimate.base_estimator`: training gradients, the regression, the
validation split), scores each round's candidate subsets in one batched call, averaged over the M bases, and walks
:func:`gradtag.selection.select`. It writes ``<results-dir>/<name>.json``: the path (every round's candidates and
estimates) and the chosen subset. With ``train`` it also trains the chosen subset for real, as the truth is trained
(``steps.train``: a one-line subsets file ``<name>_chosen.txt``, fine-tuned from the bases in the truth's regime), and
records the trained score beside the estimate.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gradtag.artifacts import UsageError, check_output_path, package_versions, read_config, write_json
from gradtag.health import base_verdict
from gradtag.results import read_results, write_subsets
from gradtag.scores import SCORES, score_records
from gradtag.selection import DIRECTIONS, select
from steps import train as train_step
from steps.cli import job_from_flags, resolve_device, use_threads
from steps.estimate import EstimateJob, base_estimator, check_folders
from steps.estimate import check_job as check_estimate_job


@dataclass(frozen=True)
class SelectJob:
    """Everything :func:`run` needs, frozen."""

    gradients: tuple[str, ...]
    target: int
    direction: str = "forward"
    max_size: int | None = None
    score: str = "loss"
    l2: float = 0.01
    solver: str = "newton-cg"
    train: bool = False
    name: str | None = None
    overwrite: bool = False
    strict: bool = False
    data_dir: str | None = None
    seed: int = 0
    device: str = "auto"
    no_progress: bool = False
    results_dir: str = "results"
    threads: int | None = None

    @classmethod
    def from_args(cls, args) -> SelectJob:
        return job_from_flags(cls, args)

    def run_name(self, dataset: str) -> str:
        """``--name``, else ``<dataset>_select_task<j>_<direction>``: the stem of every file this step writes."""
        return self.name or f"{dataset}_select_task{self.target}_{self.direction}"

    def estimate_job(self) -> EstimateJob:
        """The step-3 settings the estimates are made with (linearized, validation split, no FLOP count)."""
        return EstimateJob(
            gradients=self.gradients,
            subsets_file="",
            l2=self.l2,
            solver=self.solver,
            score=self.score,
            count_flops=False,
            data_dir=self.data_dir,
            strict=self.strict,
            seed=self.seed,
            device=self.device,
            no_progress=self.no_progress,
            results_dir=self.results_dir,
        )


def run(job: SelectJob) -> dict:
    """Select, optionally train, write the JSON (see the module docstring); return what it holds."""
    if job.direction not in DIRECTIONS:
        raise UsageError(f"--direction {job.direction!r}: choose one of {', '.join(DIRECTIONS)}")
    check_estimate_job(job.estimate_job())
    folders = [Path(folder) for folder in job.gradients]
    configs = check_folders(folders)
    num_tasks = len(configs[0]["task_names"])
    if not 0 <= job.target < num_tasks:
        raise UsageError(f"--target {job.target} is out of range; the gradients hold tasks 0..{num_tasks - 1}")
    name = job.run_name(configs[0]["dataset"])
    out = Path(job.results_dir) / f"{name}.json"
    if out.exists() and not job.overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it or choose another --name")
    for config in configs:  # before anything is written: --strict refuses a degenerate θ*
        verdict = base_verdict(config["checkpoint"], job.strict)
        if verdict:
            print(verdict, file=sys.stderr)
    check_output_path(out)
    use_threads(job.threads)
    device = resolve_device(job.device)

    start, cpu_start = time.perf_counter(), time.process_time()
    tasks = list(range(num_tasks))
    estimators = [
        base_estimator(job.estimate_job(), folder, config, num_tasks, tasks, device, ("val",), job.solver)
        for folder, config in zip(folders, configs, strict=True)
    ]
    column, sign = SCORES[job.score]
    scored, unconverged = [0], [0]
    bar = tqdm(desc="select: subsets estimated", unit="subset", disable=job.no_progress, leave=False)

    def estimate(subsets: list[tuple[int, ...]]) -> list[float]:
        """f̂(S, target) for each subset, one batched step-3 call per base, averaged over the bases."""
        per_base = []
        for estimator in estimators:
            scores, _, failed = estimator(subsets, job.l2)
            per_base.append([sign * scores[index, job.target][column] for index in range(len(subsets))])
            unconverged[0] += failed
        scored[0] += len(subsets)
        bar.update(len(subsets))
        return [float(value) for value in np.mean(per_base, axis=0)]

    path = select(estimate, job.target, num_tasks, job.direction, job.max_size)
    bar.close()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    print_path(path, job.score)
    if unconverged[0]:
        print(f"warning: {unconverged[0]} regressions did not converge")

    trained = train_chosen(job, configs, name, path.start, path.chosen) if job.train else None
    record = {
        "dataset": configs[0]["dataset"],
        "dataset_fingerprint": configs[0]["dataset_fingerprint"],
        "task_names": configs[0]["task_names"],
        "target": job.target,
        "direction": job.direction,
        "max_size": job.max_size,
        "score": job.score,
        "score_meaning": f"{'-' if sign < 0 else ''}{column} of the target, step 3's linearized estimate (higher = better)",
        "l2": job.l2,
        "solver": job.solver,
        "gradients": [str(folder) for folder in folders],
        "bases": [
            {"checkpoint": config["checkpoint"], "checkpoint_fingerprint": config["checkpoint_fingerprint"]} for config in configs
        ],
        "start": {"subset": list(path.start), "estimate": path.start_score},
        "rounds": [
            {
                "candidates": [{"subset": list(subset), "estimate": value} for subset, value in step.candidates],
                "best": list(step.best),
                "estimate": step.best_score,
                "kept": step.kept,
            }
            for step in path.rounds
        ],
        "chosen": list(path.chosen),
        "estimate": path.score,
        "subsets_estimated": scored[0],
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "trained": trained,
        "args": dataclasses.asdict(job),
        "versions": package_versions(),
    }
    write_json(out, record)
    trained_text = f", trained {trained['score']:.4f} (start's {trained['start_score']:.4f})" if trained else ""
    print(
        f"selected {' '.join(map(str, path.chosen))} for task {job.target} ({job.direction}, {len(path.rounds)} rounds, "
        f"{scored[0]} subsets estimated in {seconds:.2f}s): estimate {path.score:.4f}{trained_text}; wrote {out}"
    )
    return record


def print_path(path, score: str) -> None:
    """One line for the start and one per round: the best candidate, its estimate, and whether it was kept."""
    print(f"start {' '.join(map(str, path.start))}: estimate ({score}) {path.start_score:.4f}")
    for number, step in enumerate(path.rounds, 1):
        verdict = "kept" if step.kept else "not better: stop"
        print(
            f"round {number}: best of {len(step.candidates)} candidates {' '.join(map(str, step.best))}: estimate "
            f"{step.best_score:.4f} ({verdict})"
        )


def train_chosen(job: SelectJob, configs: list[dict], name: str, start: tuple[int, ...], subset: tuple[int, ...]) -> dict:
    """Train the chosen ``subset`` and the selection's ``start`` ({target} forward, all tasks backward) for real as a
    truth is trained and return their scores for the target (``score``, ``start_score``): did selecting help?

    The run rebuilds the first base's step-1 settings from its ``config.json`` (dataset and its options, model and
    options, batch size, weight decay, class balancing) and fine-tunes every base on the subsets file
    ``<name>_chosen.txt`` (the chosen subset, then the start) in the truth's regime (``steps.train.FINETUNE_STEPS`` at
    ``FINETUNE_LR``), writing the truth CSV ``<name>_finetune.csv``: what ``train_multitask.py --subsets-file F
    --init-from BASES`` would.
    """
    base_args = read_config(configs[0]["checkpoint"], "checkpoint")["args"]
    fields = {field.name for field in dataclasses.fields(train_step.TrainJob)}
    values = {key: value for key, value in base_args.items() if key in fields}
    values["lora_targets"] = tuple(values["lora_targets"]) if values.get("lora_targets") else None
    subsets_file = Path(job.results_dir) / f"{name}_chosen.txt"
    lines = [subset] if tuple(start) == tuple(subset) else [subset, start]
    write_subsets(
        subsets_file, lines, header=f"chosen by select_tasks.py for task {job.target} ({job.direction}), then its start"
    )
    values.update(
        subsets_file=str(subsets_file),
        init_from=tuple(config["checkpoint"] for config in configs),
        results_name=f"{name}_finetune",
        results_dir=job.results_dir,
        data_dir=job.data_dir or base_args.get("data_dir"),
        lr=None,  # the truth's regime, not θ*'s own learning rate and schedule
        fixed_steps=None,
        tasks="all",
        runs=1,
        truth_seeds=1,
        baselines=False,
        overwrite=job.overwrite,
        seed=job.seed,
        device=job.device,
        no_progress=job.no_progress,
        num_shards=1,
        shard_id=0,
        threads=job.threads,
        record_tag=False,
        record_data_map=False,
        task_weights=None,
    )
    train_job = train_step.TrainJob(**values)
    train_step.run(train_job)
    csv_path = Path(job.results_dir) / f"{train_job.results_name}.csv"
    records = {(subset_, task): value for subset_, task, value in score_records(read_results(csv_path), job.score)}
    return {
        "csv": str(csv_path),
        "subsets_file": str(subsets_file),
        "score": records[tuple(subset), job.target],
        "start_score": records[tuple(start), job.target],
    }

"""Step 1 and the truths: train multitask models (meta-initializations), or one model per task subset.

:func:`run` takes a frozen :class:`TrainJob` (a script builds it from its flags with :meth:`TrainJob.from_args`).
Without ``subsets_file`` it trains on ``tasks`` for ``runs`` seeds (this shard's) and writes ``saved/<dataset>/<run>/``
(model.pt, config.json, metrics.json). With ``subsets_file`` it trains one model per line (this shard's lines: their
global ids), from the same initialisation for every subset or fine-tuned from ``init_from``, ``truth_seeds`` times
each, and keeps one row per (subset, task, seed) in ``results/<name>[.shard<k>of<n>].csv``, the true f(S, j), resuming
where a run stopped. It prints one summary line per run (and a per-task table for θ*).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data import dataset_options, load_dataset
from gradtag.artifacts import (
    UsageError,
    atomic_set,
    check_compatible,
    exclusive_lock,
    fingerprint,
    load_npy,
    package_versions,
    read_json,
    save_npy,
    save_npz,
    without_locations,
    write_json,
)
from gradtag.checkpoints import checkpoint_dir, run_name, state_fingerprint, tag_affinity_file
from gradtag.flops import SampledFlops, format_flops
from gradtag.gradients import flat_params, relative_distance
from gradtag.health import assess_base, format_health, unjudged_note
from gradtag.results import read_results, read_subsets, subset_key, write_results
from gradtag.scores import METRICS
from gradtag.tag import TagAverage
from gradtag.training import TrainConfig
from steps.cli import job_from_flags, model_options, parse_tasks, resolve_device, use_threads
from steps.domains import domain_of
from steps.partition import check_shard, shard_indices, shard_suffix


@dataclass(frozen=True)
class TrainJob:
    """Everything :func:`run` needs, frozen. ``None`` means the default: the dataset's recommended value, or for a
    fine-tuned truth the truth's regime (``FINETUNE_STEPS`` at ``FINETUNE_LR``) and the base's own decay and balancing."""

    dataset: str
    data_dir: str | None
    dataset_options: dict
    model: str
    hop_width: int | None
    head_width: int | None
    dropout: float
    batch_norm: bool
    epochs: int | None
    lr: float | None
    weight_decay: float | None
    batch_size: int | None
    patience: int | None
    fixed_steps: int | None
    eval_every: int | None
    balanced: bool | None
    tasks: str = "all"
    runs: int = 1
    subsets_file: str | None = None
    init_from: tuple[str, ...] | None = None
    truth_seeds: int = 1
    results_name: str | None = None
    baselines: bool = False
    record_data_map: bool = False
    task_weights: str | None = None
    overwrite: bool = False
    seed: int = 0
    device: str = "auto"
    no_progress: bool = False
    saved_dir: str = "saved"
    results_dir: str = "results"
    num_shards: int = 1
    shard_id: int = 0
    threads: int | None = None
    text_model: str | None = None
    lora_rank: int = 4
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | None = None
    record_tag: bool = False
    tag_every: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainJob:
        """The job a script's parsed flags describe (``train_multitask.py``'s parser)."""
        return job_from_flags(cls, args, dataset_options=dataset_options(args))

    def record(self) -> dict:
        """The job as the artifacts record it under ``args``."""
        record = dataclasses.asdict(self)
        record["init_from"] = list(self.init_from) if self.init_from else None
        record["lora_targets"] = list(self.lora_targets) if self.lora_targets else None
        return record


def run(job: TrainJob) -> None:
    """Train what ``job`` asks for (see the module docstring)."""
    check_job(job)
    if not job.subsets_file and not shard_indices(job.runs, job.num_shards, job.shard_id):
        print(f"shard {job.shard_id} of {job.num_shards} owns no run (--runs {job.runs}); nothing to do")
        return
    use_threads(job.threads)
    device = resolve_device(job.device)
    dataset = load_dataset(job.dataset, job.data_dir, **job.dataset_options)
    domain = domain_of(dataset)
    options = model_options(job, dataset.recommended, domain.name)
    if job.subsets_file:
        train_subsets(job, dataset, domain, device, options)
    else:
        train_meta_initializations(job, dataset, domain, device, options)


def check_job(job: TrainJob) -> None:
    """Refuse flag combinations that make no sense, before anything is loaded or written."""
    check_shard(job.num_shards, job.shard_id)
    if job.baselines and job.num_shards > 1:
        raise UsageError("--baselines trains three runs at once; shard the groups run alone (drop --baselines)")
    if job.init_from and not job.subsets_file:
        raise UsageError("--init-from only applies with --subsets-file (fine-tuning θ* on each subset)")
    if job.record_tag and job.subsets_file:
        raise UsageError("--record-tag records TAG's affinity while training θ* (step 1); drop --subsets-file")
    if job.record_data_map and job.subsets_file:
        raise UsageError("--record-data-map records step 1's θ* training; drop --subsets-file (or the flag)")
    if job.record_data_map and job.fixed_steps is not None:
        raise UsageError("--record-data-map records one trace row per epoch; --fixed-steps has no epochs, drop one of them")
    if job.task_weights and not job.subsets_file:
        raise UsageError("--task-weights weighs the tasks of each group's model; it needs --subsets-file (the groups file)")
    if job.init_from and len(job.init_from) > 1 and job.truth_seeds > 1:
        raise UsageError("--truth-seeds > 1 with several --init-from checkpoints: rows are keyed by the base's seed; pass one")


def base_config(job: TrainJob, dataset, domain, options: dict) -> dict:
    """What every artifact of this script records about its inputs (see README, the on-disk contract)."""
    return {
        "domain": domain.name,
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "dataset_options": job.dataset_options,
        "task_names": dataset.task_names,
        "model": job.model if domain.name == "graph" else "text",
        "model_options": options,
        **domain.model_config(dataset),
        "training": vars(train_config(job, dataset)),
        "versions": package_versions(),
    }


def train_meta_initializations(job, dataset, domain, device, options: dict) -> None:
    """Train ``--runs`` models on ``--tasks`` and save each as a checkpoint folder."""
    tasks = parse_tasks(job.tasks, dataset.num_tasks)
    tag = "all" if len(tasks) == dataset.num_tasks else "tasks" + "-".join(map(str, tasks))
    seeds = [job.seed + index for index in shard_indices(job.runs, job.num_shards, job.shard_id)]
    for seed in seeds:  # refuse before training anything
        folder = checkpoint_dir(job.saved_dir, dataset.name, run_name(tag, seed))
        if (folder / "model.pt").exists() and not job.overwrite:
            raise UsageError(f"{folder} already holds a checkpoint; pass --overwrite to replace it or change --seed")
    for seed in seeds:
        folder = checkpoint_dir(job.saved_dir, dataset.name, run_name(tag, seed))
        model = domain.new_model(job, dataset, options, seed, device)
        start, cpu_start = time.perf_counter(), time.process_time()
        config = train_config(job, dataset)
        tag_average = TagAverage(len(tasks), job.tag_every) if job.record_tag else None
        before_step = None
        if tag_average is not None:  # TAG's look-ahead at every --tag-every-th step, at the weights the step starts from
            batch_losses = domain.tag_batch_losses(model, dataset, tasks, config.balanced, device)
            before_step = tag_average.hook(model, batch_losses, domain.shared_parameter_names(model), config.lr)
        summary = domain.train_model(
            model,
            dataset,
            tasks,
            config,
            device,
            seed,
            progress=not job.no_progress,
            before_step=before_step,
            record_data_map=job.record_data_map,
        )
        data_map = summary.pop("data_map", None)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        metrics = {
            "tasks": tasks,
            "metric": domain.metric,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            **summary,
            **domain.evaluate(model, dataset, tasks, device, progress=not job.no_progress),
        }
        # is θ* usable by steps 2-3 (README: learned, not memorised, gradients not flat)? recorded; they warn or refuse
        gradients = domain.task_loss_gradients(model, dataset, tasks, config.balanced, device, progress=not job.no_progress)
        norms = gradients.double().norm(dim=1).cpu().numpy()
        health = assess_base(metrics, norms)
        identity = base_config(job, dataset, domain, options)
        written = "model.pt,config.json,metrics.json"
        with atomic_set() as checkpoint:  # the checkpoint's files appear together or not at all
            domain.save_checkpoint(folder, model)
            if tag_average is not None:
                metrics["tag"] = save_tag_affinity(folder, tag_average, tasks, identity, config.lr, summary["steps"])
                metrics["flops"] += metrics["tag"]["flops"]  # like its seconds, the run's FLOPs include the look-aheads
            else:  # an overwritten run without --record-tag must not leave the previous run's TAG matrix beside it
                for stale in tag_files(folder):
                    checkpoint.remove(stale)
            if data_map is not None:  # STG-MTL's input (gradtag.datamaps): (epochs, pairs) p(true label), pair -> task, sample
                save_npz(folder / DATA_MAP_FILE, **data_map, num_tasks=np.int64(dataset.num_tasks))
                written += f",{DATA_MAP_FILE}"
            else:  # a data map of an earlier run of this folder (--overwrite) would not describe these weights
                checkpoint.remove(folder / DATA_MAP_FILE)
            write_json(folder / "metrics.json", {**metrics, "health": health.to_json()})
            config_json = {**identity, "tasks": tasks, "seed": seed, "args": job.record()}
            write_json(folder / "config.json", config_json)
        print_metrics(dataset, tasks, metrics)
        headline = "macro_f1" if domain.metric == "f1" else "mean_accuracy"
        print(
            f"run {run_name(tag, seed)}: {summary['epochs_run']} epochs in {seconds:.1f}s, test {HEADLINES[domain.metric]} "
            f"{metrics['test'][headline]:.4f} (all-positive predictor's macro-F1: "
            f"{metrics['test']['all_positive_macro_f1']:.4f}); wrote {folder}/{{{written}}}"
        )
        print(format_health(health))
        note = unjudged_note(health)
        if note:
            print(note)
        for problem in health.problems:
            print(f"warning: {problem}")
        if tag_average is not None:
            print(
                f"TAG affinity: averaged over {tag_average.steps} of {summary['steps']} steps (every {job.tag_every}), "
                f"{tag_average.seconds:.1f}s of the {seconds:.1f}s; wrote {tag_affinity_file(folder)} (+ _counts.npy, .json)"
            )


def tag_files(folder: Path) -> list[Path]:
    """The files :func:`save_tag_affinity` writes into a checkpoint folder."""
    matrix = tag_affinity_file(folder)
    return [matrix, matrix.with_name(f"{matrix.stem}_counts.npy"), matrix.with_suffix(".json")]


def save_tag_affinity(folder: Path, tag: TagAverage, tasks: list[int], identity: dict, lr: float, steps: int) -> dict:
    """Write TAG's averaged affinity into the checkpoint folder (see README, "TAG"); return its cost record.

    ``tag_affinity.npy``: (len(tasks), len(tasks)) float64 in the layout of step 3's pairwise T (row = the task whose
    loss is measured, column = the partner): entry [j, i] = mean Z_{i→j}, higher = more affinity, diagonal = Z_jj;
    NaN where no recorded step had both tasks. ``tag_affinity_counts.npy``: the steps behind each entry, same layout.
    """
    matrix, counts, sidecar = tag_files(folder)
    affinity = tag.affinity().T
    record = {
        "steps": tag.steps,
        "every": tag.every,
        "seconds": tag.seconds,
        "cpu_seconds": tag.cpu_seconds,
        "flops": tag.flops.total,
    }
    save_npy(matrix, affinity)
    save_npy(counts, tag.counts.T.copy())
    write_json(
        sidecar,
        {
            "kind": "tag",
            "dataset": identity["dataset"],
            "dataset_fingerprint": identity["dataset_fingerprint"],
            "task_names": [identity["task_names"][task] for task in tasks],
            "tasks": tasks,
            "layout": "entry [j, i] = mean over recorded steps of Z_{i->j} = 1 - L_j(shared - lr * grad L_i) / L_j "
            "(row: the task whose loss is measured; column: the task stepped on), as step 3's pairwise T_ji",
            "lr": lr,
            "lookahead": "SGD on the shared parameters, eval mode, the step's own batch, before its optimiser step",
            **record,
            "training_steps": steps,
            "uncovered_pairs": [[int(j), int(i)] for j, i in np.argwhere(tag.counts.T == 0)],
        },
    )
    return record


DATA_MAP_FILE = "data_map.npz"  # in a step-1 checkpoint folder, with --record-data-map
DATA_MAP_KEYS = ("probabilities", "tasks", "samples", "labels", "num_tasks")
HEADLINES = {"f1": "macro-F1", "accuracy": "accuracy"}  # a domain's metric, as its summary lines name it


def print_metrics(dataset, tasks: list[int], metrics: dict) -> None:
    print(f"{'task':>6} {'name':>14} {'train F1':>9} {'val F1':>7} {'test F1':>8} {'test acc':>8} {'test loss':>9}")
    for column, task in enumerate(tasks):
        print(
            f"{task:>6} {dataset.task_names[task][:14]:>14} {metrics['train']['f1'][column]:9.4f} "
            f"{metrics['val']['f1'][column]:7.4f} {metrics['test']['f1'][column]:8.4f} "
            f"{metrics['test']['accuracy'][column]:8.4f} {metrics['test']['loss'][column]:9.4f}"
        )
    averages = [metrics[split]["macro_f1"] for split in ("train", "val", "test")]
    print(f"{'average':>21} {averages[0]:9.4f} {averages[1]:7.4f} {averages[2]:8.4f} {metrics['test']['mean_accuracy']:8.4f}")


# The fine-tuned truth's default (with --init-from): 15 Adam steps at lr 1e-3 move θ* by 6% of its norm on DBLP (median;
# 0.06-0.07 over subsets), inside the paper's first-order regime (Sec. 3.1, Table 1: ≲ 10%), while every task's
# score still depends on its partners (F-test, 20 of 20 tasks). 50 steps at lr 1e-2 (the earlier default) moved it by
# 53%, where the first-order expansion misses a third of the change. README, "The truth's regime", has the table.
FINETUNE_STEPS, FINETUNE_LR = 15, 1e-3
TRAIN_LR, TRAIN_EPOCHS, TRAIN_BATCH_SIZE, TRAIN_PATIENCE, TRAIN_EVAL_EVERY = (
    1e-2,
    1000,
    4096,
    200,
    5,
)  # unless the dataset recommends others


def train_config(job, dataset) -> TrainConfig:
    """Training settings from the flags; unset ones take the dataset's recommended value (fine-tuning: the truth's
    regime, ``FINETUNE_STEPS`` at ``FINETUNE_LR``)."""
    fixed_steps = job.fixed_steps if job.fixed_steps is not None else (FINETUNE_STEPS if job.init_from else None)
    recommended = dataset.recommended
    lr = job.lr if job.lr is not None else (FINETUNE_LR if job.init_from else recommended.get("lr", TRAIN_LR))
    weight_decay = job.weight_decay if job.weight_decay is not None else recommended.get("weight_decay", 0.0)
    balanced = job.balanced if job.balanced is not None else recommended.get("balanced", False)
    epochs = job.epochs or recommended.get("epochs", TRAIN_EPOCHS)
    batch_size = job.batch_size or recommended.get("batch_size", TRAIN_BATCH_SIZE)
    patience = job.patience or recommended.get("patience", TRAIN_PATIENCE)
    eval_every = job.eval_every or recommended.get("eval_every", TRAIN_EVAL_EVERY)
    return TrainConfig(epochs, lr, weight_decay, batch_size, patience, fixed_steps, eval_every, balanced)


def fine_tuning_start(
    job, dataset, domain, device, options: dict
) -> tuple[list[tuple[int, dict | None]], object, dict, TrainJob]:
    """The models' starts: ``[(seed, state or None)]``, their identity for the sidecar, the model options and the job
    with the bases' own weight decay and class balancing where its flags left them unset.

    From scratch: one fresh initialisation per seed of ``--truth-seeds`` (state None). With ``--init-from``: every
    checkpoint's weights under its own training seed (a base of seed s is fine-tuned with seed s: its batch order), the
    identity a dict for one base (``init_from``, ``init_fingerprint``) and a list of them for several; the bases must
    share one model and its options, and an unset ``--weight-decay`` or ``--balanced`` takes the first base's own
    training setting.
    """
    if not job.init_from:
        return [(seed, None) for seed in range(job.seed, job.seed + job.truth_seeds)], None, options, job
    starts, identities, base_options, base_training = [], [], None, None
    for folder in job.init_from:
        base, base_config_json = domain.load_checkpoint(folder, device, dataset)
        base_training = base_training if base_training is not None else base_config_json.get("training", {})
        if domain.name == "graph" and base_config_json["model"] != job.model:
            raise UsageError(f"--init-from {folder} is a {base_config_json['model']!r} model; pass --model to match")
        if base_options is not None and base_config_json["model_options"] != base_options:
            raise UsageError(f"--init-from {folder} has other model options than {job.init_from[0]}; fine-tune alike bases")
        base_options = base_config_json["model_options"]
        seed = base_config_json["seed"] if len(job.init_from) > 1 else job.seed
        state = domain.state(base)
        starts.append((seed, state))
        identities.append({"init_from": str(folder), "init_fingerprint": state_fingerprint(state), "seed": seed})
    seeds = [seed for seed, _ in starts]
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--init-from checkpoints share a seed ({seeds}); pass bases of different seeds")
    if len(identities) == 1:
        identities = {key: identities[0][key] for key in ("init_from", "init_fingerprint")}
    # fine-tuning continues θ*'s own objective: its weight decay and class balancing unless a flag says otherwise
    # (a plain-BCE fine-tune of a class-balanced θ* mostly learns to predict negatives, whatever the subset)
    inherited = {
        key: base_training[key] for key in ("weight_decay", "balanced") if getattr(job, key) is None and key in base_training
    }
    return starts, identities, base_options, dataclasses.replace(job, **inherited)


def train_subset_models(
    job, dataset, domain, device, options, subsets, csv_path: Path, source: str, init, task_weights: np.ndarray | None = None
) -> tuple[list, float]:
    """Train one model per subset and start; keep every (subset, task, seed) row in ``csv_path``.

    ``task_weights`` (len(subsets), n), if given, weighs the tasks of each subset's model (:func:`load_task_weights`);
    its fingerprint joins the sidecar's identity, so a resume with other weights is refused.

    ``init`` is ``(starts, identity)`` of :func:`fine_tuning_start`: every subset starts from the same weights per
    seed, that seed's fresh initialisation or a checkpoint when fine-tuning. Rows already in the CSV are skipped,
    after checking the CSV was made by the same settings.
    The sidecar JSON records the seconds and FLOPs (``gradtag.flops``) spent training and scoring, summed over resumes.
    Returns all rows and the seconds spent on them.
    """
    starts, init_identity = init
    mode = "finetune" if init_identity is not None else "scratch"
    identity = {
        **base_config(job, dataset, domain, options),
        "subsets_file": source,
        "subsets": [list(subset) for subset in subsets],
        "mode": mode,
        "init": init_identity,
        "seed": job.seed,
        **({"task_weights": fingerprint(task_weights)} if task_weights is not None else {}),
        **({"shard": {"num_shards": job.num_shards, "shard_id": job.shard_id}} if job.num_shards > 1 else {}),
    }
    with exclusive_lock(csv_path, str(csv_path)):  # two runs on one CSV would train every subset twice
        sidecar = csv_path.with_suffix(".json")
        rows, previous_seconds, previous_flops, previous_cpu = [], 0.0, 0, 0.0
        if csv_path.exists() and not job.overwrite:
            previous = read_json(sidecar)
            check_compatible(  # inputs by their fingerprints: another spelling of the --init-from folder resumes
                without_locations(previous),
                sidecar,
                **{
                    key: without_locations(identity.get(key))
                    for key in (
                        "dataset",
                        "dataset_fingerprint",
                        "model_options",
                        "training",
                        "subsets",
                        "mode",
                        "init",
                        "task_weights",
                        "shard",
                    )
                },
            )
            rows, previous_seconds, previous_flops, previous_cpu = (
                read_results(csv_path),
                previous.get("seconds", 0.0),
                previous.get("flops", 0),
                previous.get("cpu_seconds", 0.0),
            )
        done = {(row["subset_id"], row["seed"]) for row in rows}
        owned = shard_indices(len(subsets), job.num_shards, job.shard_id)  # global subset ids, whichever shard trains them
        jobs = [(index, seed) for index in owned for seed, _ in starts]
        todo = [job for job in jobs if job not in done]
        start, cpu_start = time.perf_counter(), time.process_time()

        def record_cost(flops_so_far: int) -> None:  # before each model's rows are written: a kill loses no cost
            seconds_so_far = time.perf_counter() - start
            write_json(
                sidecar,
                {
                    **identity,
                    "args": job.record(),
                    "seconds": previous_seconds + seconds_so_far,
                    "flops": previous_flops + flops_so_far,
                    "cpu_seconds": previous_cpu + time.process_time() - cpu_start,
                },
            )

        record_cost(0)
        flops = train_each_subset(
            job, dataset, domain, device, options, subsets, todo, dict(starts), rows, csv_path, record_cost, task_weights
        )
        seconds = time.perf_counter() - start
        total_seconds = previous_seconds + seconds
        record_cost(flops)
        if not owned:  # a shard owning no subset: its empty file tells the merge it is done
            write_results(csv_path, rows)
            print(f"shard {job.shard_id} of {job.num_shards} owns none of the {len(subsets)} subsets; wrote an empty {csv_path}")
            return rows, total_seconds
        print(
            f"{csv_path.stem}: trained {len(todo)} models ({len(jobs) - len(todo)} already done) in {seconds:.1f}s "
            f"({format_flops(flops)}); wrote {csv_path}"
        )
        return rows, total_seconds


def train_each_subset(
    job, dataset, domain, device, options, subsets, todo, states: dict, rows: list, csv_path, record_cost, task_weights=None
):
    """Train and score the (subset index, seed) jobs in ``todo``, appending rows and rewriting ``csv_path`` after each,
    after calling ``record_cost(FLOPs so far)``.

    With ``task_weights`` (len(subsets), n) subset i's model trains on every task j with w_ij > 0, task j's loss and
    validation score weighted by w_ij (tasks of weight 0 are left out of its loss, their parameters untouched); its
    rows still score the subset's own tasks.

    ``states`` maps each seed to its start: a state dict to fine-tune, or None for the seed's fresh initialisation.

    Each row records the model's ``distance`` from its starting weights, ‖W − W₀‖ / ‖W₀‖ (θ* when fine-tuning).

    Returns the FLOPs spent: training (``train_model``'s count) and the final validation/test scoring of each model.
    """
    mode = "finetune" if any(state is not None for state in states.values()) else "scratch"
    flops, scoring = 0, SampledFlops()
    for index, seed in tqdm(todo, desc=f"train {csv_path.stem} ({mode})", disable=job.no_progress):
        subset = list(subsets[index])
        model = domain.subset_model(job, dataset, options, seed, states[seed], device)
        start_weights = flat_params(model)
        trained, weights = subset, None
        if task_weights is not None:
            trained = [int(task) for task in np.flatnonzero(task_weights[index] > 0)]
            weights = task_weights[index, trained]
        flops += domain.train_model(model, dataset, trained, train_config(job, dataset), device, seed, task_weights=weights)[
            "flops"
        ]
        distance = relative_distance(flat_params(model), start_weights)
        metrics = domain.evaluate(model, dataset, subset, device, splits=("val", "test"), flops=scoring)
        for column, task in enumerate(subset):
            scores = {f"{split}_{kind}": metrics[split][kind][column] for split in ("val", "test") for kind in METRICS}
            rows.append(
                {
                    "subset_id": index,
                    "subset": subset_key(subset),
                    "task": task,
                    "seed": seed,
                    **scores,
                    "distance": distance,
                    "source": "trained",
                }
            )
        record_cost(flops + scoring.total)
        write_results(csv_path, rows)
    return flops + scoring.total


def train_subsets(job, dataset, domain, device, options: dict) -> None:
    """Train one model per line of ``--subsets-file``; with ``--baselines`` also STL and naive MTL, and compare."""
    subsets_path = Path(job.subsets_file)
    subsets = read_subsets(subsets_path, dataset.num_tasks)
    if job.baselines:
        check_partition(subsets, subsets_path, dataset.num_tasks)
    task_weights = load_task_weights(job.task_weights, subsets, subsets_path, dataset.num_tasks) if job.task_weights else None
    *init, options, job = fine_tuning_start(job, dataset, domain, device, options)
    name = results_name(job)
    results_dir = Path(job.results_dir)
    grouped_csv = results_dir / f"{name}{shard_suffix(job.num_shards, job.shard_id)}.csv"
    runs = {"grouped": (subsets, str(subsets_path), grouped_csv, task_weights)}
    if job.baselines:
        runs["STL"] = ([(task,) for task in range(dataset.num_tasks)], "single-task", results_dir / f"{name}_stl.csv", None)
        runs["MTL"] = ([tuple(range(dataset.num_tasks))], "all tasks", results_dir / f"{name}_mtl.csv", None)
    summary = {}
    for label, (run_subsets, source, csv_path, weights) in runs.items():
        rows, seconds = train_subset_models(job, dataset, domain, device, options, run_subsets, csv_path, source, init, weights)
        summary[label] = (len(run_subsets), partition_score(rows, run_subsets, dataset.num_tasks, domain.metric), seconds)
    if any(score is not None for _, score, _ in summary.values()):
        column = f"avg test {'F1' if domain.metric == 'f1' else 'acc'}"
        print(f"{'method':>8} {'models':>6} {column:>12} {'train s':>8}")
        for label, (count, score, seconds) in summary.items():
            print(f"{label:>8} {count:>6} {'–' if score is None else f'{score:.4f}':>12} {seconds:8.1f}")
        key = f"avg_test_{domain.metric}"
        write_json(
            results_dir / f"{name}_summary.json",
            {label: {"models": count, key: score, "seconds": seconds} for label, (count, score, seconds) in summary.items()},
        )


def check_partition(groups, path: Path, num_tasks: int) -> None:
    """Refuse, as --baselines does, a groups file whose lines do not partition the tasks 0..n-1: grouped training is
    compared with STL and naive MTL on every task once, which overlapping groups or a task in no group do not give."""
    fix = "--baselines compares grouped training with STL and MTL on a partition: list each task in exactly one group"
    for task in range(num_tasks):
        lines = [number for number, group in enumerate(groups, start=1) if task in group]
        if len(lines) > 1:
            where = " and ".join(map(str, lines))
            raise UsageError(f"{path} puts task {task} in {len(lines)} groups (groups {where}); {fix} (or drop --baselines)")
        if not lines:
            raise UsageError(f"{path} leaves task {task} in no group; {fix} (or drop --baselines)")


def results_name(job) -> str:
    """The truth CSV's name in ``--results-dir`` (no suffix): ``--results-name``, else ``<subsets stem>_<mode>``
    (``<subsets stem>_weighted_<mode>`` with ``--task-weights``)."""
    weighted = "weighted_" if job.task_weights else ""
    return job.results_name or f"{Path(job.subsets_file).stem}_{weighted}{'finetune' if job.init_from else 'scratch'}"


def load_task_weights(path: str | Path, subsets, subsets_path: Path, num_tasks: int) -> np.ndarray:
    """``--task-weights``: a (k, n) float64 matrix, row g the loss weights of the model of line g of the groups file
    over all n tasks (STG-MTL: ``run_clustering.py --data-map``'s memberships). Refused, before anything is trained or
    written: another shape than (lines, tasks), a non-numeric, non-finite or negative entry, and a line whose own
    task has weight 0 in its row (its model would not train a task it is scored on)."""
    rerun = "pass the (groups, tasks) memberships .npy run_clustering.py --data-map wrote"
    weights = load_npy(path, rerun)
    if weights.dtype.kind not in "biuf" or weights.ndim != 2:
        raise UsageError(f"--task-weights {path} holds a {weights.ndim}-D {weights.dtype} array; {rerun}")
    if weights.shape != (len(subsets), num_tasks):
        raise UsageError(
            f"--task-weights {path} has shape {weights.shape} but {subsets_path} has {len(subsets)} lines and the dataset "
            f"{num_tasks} tasks: it must be ({len(subsets)}, {num_tasks}); pass the memberships made with this groups file"
        )
    weights = weights.astype(np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise UsageError(f"--task-weights {path} has negative or non-finite entries; weights must be finite and >= 0")
    for line, subset in enumerate(subsets):
        zero = [task for task in subset if weights[line, task] <= 0]
        if zero:
            raise UsageError(f"--task-weights {path}: line {line} of {subsets_path} holds task {zero[0]}, of weight 0 there")
    return weights


def partition_score(rows: list[dict], subsets, num_tasks: int, metric: str = "f1") -> float | None:
    """Average test ``metric`` (f1: macro-F1; accuracy) over all tasks when the subsets partition the tasks (a groups
    file) and ``rows`` score every task, else None."""
    if sorted(task for subset in subsets for task in subset) != list(range(num_tasks)):
        return None
    per_task = {}
    for row in rows:
        per_task.setdefault(row["task"], []).append(row[f"test_{metric}"])
    if len(per_task) < num_tasks:  # a shard's rows: some groups are another shard's
        return None
    return float(np.mean([np.mean(values) for values in per_task.values()]))

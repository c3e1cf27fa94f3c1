"""Step 1: train multitask models (meta-initializations), or one model per task subset (true affinities, groups).

Usage:
    python train_multitask.py --dataset planted --tasks all --runs 1
    python train_multitask.py --dataset planted --subsets-file sampled_tasks/planted_m200_a5_s0.txt
    python train_multitask.py --dataset planted --subsets-file ... --init-from saved/planted/all_seed0 --fixed-steps 50

Without ``--subsets-file`` it trains on ``--tasks`` for ``--runs`` seeds and writes ``saved/<dataset>/<run>/``
(model.pt, config.json, metrics.json). With ``--subsets-file`` it trains one model per line (from the same
initialisation for every subset, or fine-tuned from ``--init-from``), ``--truth-seeds`` times each, and appends one row
per (subset, task, seed) to ``results/<name>.csv`` — the true f(S, j). Rows already there are skipped (resumable).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data import add_data_args, dataset_options, load_dataset
from gradtag.artifacts import (
    UsageError,
    check_compatible,
    checkpoint_dir,
    exclusive_lock,
    package_versions,
    read_json,
    read_results,
    read_subsets,
    run_main,
    run_name,
    subset_key,
    weights_fingerprint,
    write_json,
    write_results,
)
from gradtag.checks import POSITIVE_INT, ArgumentParser
from gradtag.cli import (
    add_folder_args,
    add_model_args,
    add_run_args,
    add_training_args,
    model_options,
    parse_tasks,
    resolve_device,
    seed_everything,
)
from gradtag.flops import SampledFlops, format_flops
from gradtag.gradients import flat_params, relative_distance
from gradtag.health import assess_base, format_health, task_gradient_norms
from gradtag.training import TrainConfig, evaluate, load_checkpoint, save_checkpoint, train_model
from models import build_model
from steps.launch import add_launcher_args, launch
from steps.merge import merge_shards
from steps.partition import add_shard_args, check_shard, shard_indices, shard_suffix


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
        "--overwrite",
        action="store_true",
        help="replace an existing checkpoint folder of the same run; with --subsets-file, start the results CSV afresh",
    )
    add_shard_args(parser, "M seeds (step 1) or the subsets of --subsets-file")
    add_launcher_args(parser)
    return parser


def validate(args: argparse.Namespace) -> None:
    check_shard(args.num_shards, args.shard_id)
    if args.baselines and args.num_shards > 1:
        raise UsageError("--baselines trains three runs at once; shard the groups run alone (drop --baselines)")
    if args.init_from and not args.subsets_file:
        raise UsageError("--init-from only applies with --subsets-file (fine-tuning θ* on each subset)")
    if args.init_from and len(args.init_from) > 1 and args.truth_seeds > 1:
        raise UsageError("--truth-seeds > 1 with several --init-from checkpoints: rows are keyed by the base's seed; pass one")


def base_config(args: argparse.Namespace, dataset, options: dict) -> dict:
    """What every artifact of this script records about its inputs (see README, the on-disk contract)."""
    return {
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "dataset_options": dataset_options(args),
        "task_names": dataset.task_names,
        "model": args.model,
        "model_options": options,
        "in_dim": dataset.features.shape[2],
        "num_hops": dataset.features.shape[1] - 1,
        "training": vars(train_config(args, dataset)),
        "versions": package_versions(),
    }


def train_meta_initializations(args, dataset, device, options: dict) -> None:
    """Train ``--runs`` models on ``--tasks`` and save each as a checkpoint folder."""
    tasks = parse_tasks(args.tasks, dataset.num_tasks)
    tag = "all" if len(tasks) == dataset.num_tasks else "tasks" + "-".join(map(str, tasks))
    seeds = [args.seed + index for index in shard_indices(args.runs, args.num_shards, args.shard_id)]
    for seed in seeds:  # refuse before training anything
        folder = checkpoint_dir(args.saved_dir, dataset.name, run_name(tag, seed))
        if (folder / "model.pt").exists() and not args.overwrite:
            raise UsageError(f"{folder} already holds a checkpoint; pass --overwrite to replace it or change --seed")
    for seed in seeds:
        folder = checkpoint_dir(args.saved_dir, dataset.name, run_name(tag, seed))
        seed_everything(seed)
        model = build_model(args.model, dataset.features.shape[2], dataset.features.shape[1] - 1, dataset.num_tasks, **options)
        model.to(device)
        start = time.perf_counter()
        config = train_config(args, dataset)
        summary = train_model(model, dataset, tasks, config, device, seed, progress=not args.no_progress)
        seconds = time.perf_counter() - start
        metrics = {"tasks": tasks, "seconds": seconds, **summary, **evaluate(model, dataset, tasks, device)}
        # is θ* usable by steps 2-3 (README: learned, not memorised, gradients not flat)? recorded; they warn or refuse
        health = assess_base(metrics, task_gradient_norms(model, dataset, tasks, config.balanced, device))
        save_checkpoint(folder, model)
        write_json(folder / "metrics.json", {**metrics, "health": health.to_json()})
        write_json(
            folder / "config.json", {**base_config(args, dataset, options), "tasks": tasks, "seed": seed, "args": vars(args)}
        )
        print_metrics(dataset, tasks, metrics)
        print(
            f"run {run_name(tag, seed)}: {summary['epochs_run']} epochs in {seconds:.1f}s, test macro-F1 "
            f"{metrics['test']['macro_f1']:.4f} (all-positive predictor: {metrics['test']['all_positive_macro_f1']:.4f}); "
            f"wrote {folder}/{{model.pt,config.json,metrics.json}}"
        )
        print(format_health(health))
        for problem in health.problems:
            print(f"warning: {problem}")


def print_metrics(dataset, tasks: list[int], metrics: dict) -> None:
    print(f"{'task':>6} {'name':>12} {'train F1':>9} {'val F1':>7} {'test F1':>8} {'test loss':>9}")
    for column, task in enumerate(tasks):
        print(
            f"{task:>6} {dataset.task_names[task]:>12} {metrics['train']['f1'][column]:9.4f} "
            f"{metrics['val']['f1'][column]:7.4f} {metrics['test']['f1'][column]:8.4f} {metrics['test']['loss'][column]:9.4f}"
        )
    averages = [metrics[split]["macro_f1"] for split in ("train", "val", "test")]
    print(f"{'average':>19} {averages[0]:9.4f} {averages[1]:7.4f} {averages[2]:8.4f}")


# The fine-tuned truth's default (with --init-from): 15 Adam steps at lr 1e-3 move θ* by 6% of its norm on DBLP (median;
# 0.06-0.07 over subsets), inside the paper's first-order regime (Sec. 3.1, Table 1: ≲ 10%), while every task's
# score still depends on its partners (F-test, 20 of 20 tasks). 50 steps at lr 1e-2 (the earlier default) moved it by
# 53%, where the first-order expansion misses a third of the change. README, "The truth's regime", has the table.
FINETUNE_STEPS, FINETUNE_LR = 15, 1e-3
TRAIN_LR = 1e-2


def train_config(args, dataset) -> TrainConfig:
    """Training settings from the flags; unset ones take the dataset's recommended value (fine-tuning: the truth's
    regime, ``FINETUNE_STEPS`` at ``FINETUNE_LR``)."""
    fixed_steps = args.fixed_steps if args.fixed_steps is not None else (FINETUNE_STEPS if args.init_from else None)
    lr = args.lr if args.lr is not None else (FINETUNE_LR if args.init_from else TRAIN_LR)
    weight_decay = args.weight_decay if args.weight_decay is not None else dataset.recommended.get("weight_decay", 0.0)
    balanced = args.balanced if args.balanced is not None else dataset.recommended.get("balanced", False)
    return TrainConfig(args.epochs, lr, weight_decay, args.batch_size, args.patience, fixed_steps, args.eval_every, balanced)


def fine_tuning_start(args, dataset, device, options: dict) -> tuple[list[tuple[int, dict | None]], object, dict]:
    """The models' starts: ``[(seed, state or None)]``, their identity for the sidecar and the model options.

    From scratch: one fresh initialisation per seed of ``--truth-seeds`` (state None). With ``--init-from``: every
    checkpoint's weights under its own training seed (a base of seed s is fine-tuned with seed s: its batch order), the
    identity a dict for one base (``init_from``, ``init_fingerprint``) and a list of them for several; the bases must
    share one model and its options, and an unset ``--weight-decay`` or ``--balanced`` takes the first base's own
    training setting.
    """
    if not args.init_from:
        return [(seed, None) for seed in range(args.seed, args.seed + args.truth_seeds)], None, options
    starts, identities, base_options, base_training = [], [], None, None
    for folder in args.init_from:
        base, base_config_json = load_checkpoint(folder, device, dataset)
        base_training = base_training if base_training is not None else base_config_json.get("training", {})
        if base_config_json["model"] != args.model:
            raise UsageError(f"--init-from {folder} is a {base_config_json['model']!r} model; pass --model to match")
        if base_options is not None and base_config_json["model_options"] != base_options:
            raise UsageError(f"--init-from {folder} has other model options than {args.init_from[0]}; fine-tune alike bases")
        base_options = base_config_json["model_options"]
        seed = base_config_json["seed"] if len(args.init_from) > 1 else args.seed
        starts.append((seed, {key: value.clone() for key, value in base.state_dict().items()}))
        identities.append(
            {"init_from": str(folder), "init_fingerprint": weights_fingerprint(Path(folder) / "model.pt"), "seed": seed}
        )
    seeds = [seed for seed, _ in starts]
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--init-from checkpoints share a seed ({seeds}); pass bases of different seeds")
    if len(identities) == 1:
        identities = {key: identities[0][key] for key in ("init_from", "init_fingerprint")}
    # fine-tuning continues θ*'s own objective: its weight decay and class balancing unless a flag says otherwise
    # (a plain-BCE fine-tune of a class-balanced θ* mostly learns to predict negatives, whatever the subset)
    if args.weight_decay is None and "weight_decay" in base_training:
        args.weight_decay = base_training["weight_decay"]
    if args.balanced is None and "balanced" in base_training:
        args.balanced = base_training["balanced"]
    return starts, identities, base_options


def train_subset_models(args, dataset, device, options: dict, subsets, csv_path: Path, source: str, init) -> tuple[list, float]:
    """Train one model per subset and start; keep every (subset, task, seed) row in ``csv_path``.

    ``init`` is ``(starts, identity)`` of :func:`fine_tuning_start`: every subset starts from the same weights per
    seed, that seed's fresh initialisation or a checkpoint when fine-tuning. Rows already in the CSV are skipped,
    after checking the CSV was made by the same settings.
    The sidecar JSON records the seconds and FLOPs (``gradtag.flops``) spent training and scoring, summed over resumes.
    Returns all rows and the seconds spent on them.
    """
    starts, init_identity = init
    mode = "finetune" if init_identity is not None else "scratch"
    identity = {
        **base_config(args, dataset, options),
        "subsets_file": source,
        "subsets": [list(subset) for subset in subsets],
        "mode": mode,
        "init": init_identity,
        "seed": args.seed,
        **({"shard": {"num_shards": args.num_shards, "shard_id": args.shard_id}} if args.num_shards > 1 else {}),
    }
    with exclusive_lock(csv_path, str(csv_path)):  # two runs on one CSV would train every subset twice
        sidecar = csv_path.with_suffix(".json")
        rows, previous_seconds, previous_flops = [], 0.0, 0
        if csv_path.exists() and not args.overwrite:
            previous = read_json(sidecar)
            check_compatible(
                previous,
                sidecar,
                **{
                    key: identity.get(key)
                    for key in ("dataset", "dataset_fingerprint", "model_options", "training", "subsets", "mode", "init", "shard")
                },
            )
            rows, previous_seconds, previous_flops = (
                read_results(csv_path),
                previous.get("seconds", 0.0),
                previous.get("flops", 0),
            )
        done = {(row["subset_id"], row["seed"]) for row in rows}
        owned = shard_indices(len(subsets), args.num_shards, args.shard_id)  # global subset ids, whichever shard trains them
        jobs = [(index, seed) for index in owned for seed, _ in starts]
        todo = [job for job in jobs if job not in done]
        start = time.perf_counter()

        def record_cost(flops_so_far: int) -> None:  # before each model's rows are written: a kill loses no cost
            seconds_so_far = time.perf_counter() - start
            write_json(
                sidecar,
                {
                    **identity,
                    "args": vars(args),
                    "seconds": previous_seconds + seconds_so_far,
                    "flops": previous_flops + flops_so_far,
                },
            )

        record_cost(0)
        flops = train_each_subset(args, dataset, device, options, subsets, todo, dict(starts), rows, csv_path, record_cost)
        seconds = time.perf_counter() - start
        total_seconds = previous_seconds + seconds
        record_cost(flops)
        print(
            f"{csv_path.stem}: trained {len(todo)} models ({len(jobs) - len(todo)} already done) in {seconds:.1f}s "
            f"({format_flops(flops)}); wrote {csv_path}"
        )
        return rows, total_seconds


def train_each_subset(
    args, dataset, device, options: dict, subsets, todo, states: dict, rows: list, csv_path, record_cost
) -> int:
    """Train and score the (subset index, seed) jobs in ``todo``, appending rows and rewriting ``csv_path`` after each,
    after calling ``record_cost(FLOPs so far)``.

    ``states`` maps each seed to its start: a state dict to fine-tune, or None for the seed's fresh initialisation.

    Each row records the model's ``distance`` from its starting weights, ‖W − W₀‖ / ‖W₀‖ (θ* when fine-tuning).

    Returns the FLOPs spent: training (``train_model``'s count) and the final validation/test scoring of each model.
    """
    mode = "finetune" if any(state is not None for state in states.values()) else "scratch"
    flops, scoring = 0, SampledFlops()
    for index, seed in tqdm(todo, desc=f"train {csv_path.stem} ({mode})", disable=args.no_progress):
        subset = list(subsets[index])
        seed_everything(seed)
        model = build_model(args.model, dataset.features.shape[2], dataset.features.shape[1] - 1, dataset.num_tasks, **options)
        if states[seed] is not None:
            model.load_state_dict(states[seed])
        model.to(device)
        start_weights = flat_params(model)
        flops += train_model(model, dataset, subset, train_config(args, dataset), device, seed)["flops"]
        distance = relative_distance(flat_params(model), start_weights)
        metrics = evaluate(model, dataset, subset, device, splits=("val", "test"), flops=scoring)
        for column, task in enumerate(subset):
            scores = {f"{split}_{kind}": metrics[split][kind][column] for split in ("val", "test") for kind in ("f1", "loss")}
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


def train_subsets(args, dataset, device, options: dict) -> None:
    """Train one model per line of ``--subsets-file``; with ``--baselines`` also STL and naive MTL, and compare."""
    subsets_path = Path(args.subsets_file)
    subsets = read_subsets(subsets_path, dataset.num_tasks)
    init = fine_tuning_start(args, dataset, device, options)
    options = init[2]
    name = results_name(args)
    results_dir = Path(args.results_dir)
    runs = {"grouped": (subsets, str(subsets_path), results_dir / f"{name}{shard_suffix(args.num_shards, args.shard_id)}.csv")}
    if args.baselines:
        runs["STL"] = ([(task,) for task in range(dataset.num_tasks)], "single-task", results_dir / f"{name}_stl.csv")
        runs["MTL"] = ([tuple(range(dataset.num_tasks))], "all tasks", results_dir / f"{name}_mtl.csv")
    summary = {}
    for label, (run_subsets, source, csv_path) in runs.items():
        rows, seconds = train_subset_models(args, dataset, device, options, run_subsets, csv_path, source, init[:2])
        summary[label] = (len(run_subsets), partition_f1(rows, run_subsets, dataset.num_tasks), seconds)
    if any(f1 is not None for _, f1, _ in summary.values()):
        print(f"{'method':>8} {'models':>6} {'avg test F1':>11} {'train s':>8}")
        for label, (count, f1, seconds) in summary.items():
            print(f"{label:>8} {count:>6} {'–' if f1 is None else f'{f1:.4f}':>11} {seconds:8.1f}")
        write_json(
            results_dir / f"{name}_summary.json",
            {label: {"models": count, "avg_test_f1": f1, "seconds": seconds} for label, (count, f1, seconds) in summary.items()},
        )


def results_name(args) -> str:
    """The truth CSV's name in ``--results-dir`` (no suffix): ``--results-name``, else ``<subsets stem>_<mode>``."""
    return args.results_name or f"{Path(args.subsets_file).stem}_{'finetune' if args.init_from else 'scratch'}"


def partition_f1(rows: list[dict], subsets, num_tasks: int) -> float | None:
    """Average test macro-F1 over all tasks when the subsets partition the tasks (a groups file), else None."""
    if sorted(task for subset in subsets for task in subset) != list(range(num_tasks)):
        return None
    per_task = {}
    for row in rows:
        per_task.setdefault(row["task"], []).append(row["test_f1"])
    return float(np.mean([np.mean(values) for values in per_task.values()]))


def main(args: argparse.Namespace) -> None:
    validate(args)
    if args.launcher != "none":
        launch("train_multitask", args)
        if args.subsets_file:
            path, count = merge_shards(Path(args.results_dir) / f"{results_name(args)}.csv")
            print(f"trained {count} shards with --launcher {args.launcher}; merged them into {path}")
        return
    device = resolve_device(args.device)
    dataset = load_dataset(args.dataset, args.data_dir, **dataset_options(args))
    options = model_options(args, dataset.recommended)
    if args.subsets_file:
        train_subsets(args, dataset, device, options)
    else:
        train_meta_initializations(args, dataset, device, options)


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

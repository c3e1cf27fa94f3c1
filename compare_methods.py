"""The paper's Table 3 from one command: every grouping method run on one dataset and scored by the same tools.

Runs, into one work folder (``--work-dir``), the steps each method needs through the same scripts a user runs (their
own logs under ``<work-dir>/logs/``), trains one model per group of every method's grouping from scratch with the same
settings, and prints per method: number of groups, average test macro-F1 (graphs) or accuracy (text) over all tasks,
wall / CPU seconds and FLOPs of finding the groups and of training them, and the ARI against planted groups.

Methods (``--methods``): stl, mtl, random (``--random-draws`` partitions into k), datamaps (STG-MTL), tag (TAG),
exact (the trained truth's higher-order affinity on the m subsets), gradtag1 / gradtag5 (Grad-TAG with M = 1 / M =
``--runs`` bases). Finding costs: Grad-TAG counts its θ* trainings, gradient collection, the λ-calibration truth,
step 3 and the SDP; the exact affinity its θ* and the truth's trainings and the SDP; TAG and data maps their own
multitask training (with the recording) and their clustering; the baselines nothing.

Usage:
    python compare_methods.py --dataset planted --threads 1
    python compare_methods.py --dataset dblp --data-dir ../shared/data/dblp --num-tasks 100 --k 10 \\
        --train-args "--hop-width 16 --head-width 16 --weight-decay 1e-2 --balanced" --methods stl mtl gradtag1
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import shlex
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data import (
    OPTION_NAMES,
    TEXT_KINDS,
    add_data_args,
    dataset_options,
    dataset_spec,
    load_dataset,
    num_tasks_of,
    planted_groups_path,
)
from gradtag.artifacts import UsageError, atomic_path, atomic_set, run_main, write_json
from gradtag.checks import NONNEGATIVE_INT, POSITIVE, POSITIVE_INT, ArgumentParser
from gradtag.results import read_results, read_subsets, write_subsets
from gradtag.scores import DOMAIN_METRICS, is_pairwise, save_affinity, score_records
from steps.cli import add_run_args
from steps.methods import (
    LABELS,
    METHODS,
    Cost,
    MethodRow,
    all_tasks_group,
    checkpoint_cost,
    format_table,
    gradients_cost,
    partition_score,
    planted_ari,
    random_groups,
    results_cost,
    single_task_groups,
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    parser.add_argument(
        "--planted",
        default=None,
        help="known groups file to score groupings by ARI (default: the generated defaults' planted_groups.txt)",
    )
    methods = parser.add_argument_group("methods")
    methods.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(METHODS),
        help="methods to run, in Table 3's order: " + "; ".join(f"{key}: {text}" for key, text in METHODS.items()),
    )
    methods.add_argument("--k", type=POSITIVE_INT, default=None, help="number of groups (default: the planted groups' count)")
    methods.add_argument("--runs", type=POSITIVE_INT, default=5, help="M of gradtag5: θ* seeds whose estimates are averaged")
    methods.add_argument("--random-draws", type=POSITIVE_INT, default=3, help="random groupings drawn (and trained)")
    methods.add_argument("--num-subsets", type=POSITIVE_INT, default=200, help="m: subsets for Grad-TAG and the exact affinity")
    methods.add_argument("--subset-size", type=POSITIVE_INT, default=5, help="alpha: tasks per sampled subset")
    methods.add_argument("--project-dim", type=POSITIVE_INT, default=200, help="d of Grad-TAG's projection")
    methods.add_argument("--l2", type=POSITIVE, default=0.01, help="Grad-TAG's λ when --calibrate is 0")
    methods.add_argument(
        "--calibrate",
        type=NONNEGATIVE_INT,
        default=40,
        help="subsets fine-tuned for real to choose Grad-TAG's λ on (their cost is Grad-TAG's); 0: use --l2",
    )
    methods.add_argument(
        "--exact-truth",
        choices=["finetune", "scratch"],
        default="finetune",
        help="the exact affinity's models: fine-tuned from θ* (the truth Grad-TAG estimates) or trained from scratch "
        "per subset (BoostMTL; far costlier)",
    )
    methods.add_argument("--tag-every", type=POSITIVE_INT, default=10, help="TAG: record the look-ahead every this many steps")
    methods.add_argument("--fuzziness", type=POSITIVE, default=1.07, help="data maps: fuzzy c-means fuzziness m (STG-MTL's)")
    training = parser.add_argument_group("training")
    training.add_argument(
        "--train-args",
        default="",
        help="train_multitask.py flags for every model trained (θ* bases, TAG and data-map runs, every group's model), "
        "one shell-quoted string (default: the dataset's recommended settings)",
    )
    training.add_argument(
        "--final-args",
        default="",
        help="further train_multitask.py flags for the models trained per group (after --train-args, so they override "
        'it), e.g. "--hop-width 64 --head-width 64 --weight-decay 0" for wider final models than θ*',
    )
    training.add_argument(
        "--estimate-args",
        default="",
        help='further fit_linear_estimates.py flags for Grad-TAG, e.g. "--solver exact-step --calibrate-solvers '
        'exact-step newton-cg"',
    )
    training.add_argument(
        "--truth-args",
        default="",
        help='further flags for the fine-tuned truths (calibration, exact affinity), e.g. "--fixed-steps 15"',
    )
    output = parser.add_argument_group("output")
    output.add_argument("--work-dir", default=None, help="folder of every artifact and log (default: results/table3_<dataset>)")
    output.add_argument(
        "--overwrite", action="store_true", help="rerun every step into an existing work folder (each replaces its own files)"
    )
    add_run_args(parser)
    return parser


class Runner:
    """Runs scripts in this process (``module.main(module.get_args_parser().parse_args(argv))``), each one's printed
    output in its own log (started afresh by this run, then appended to), and times them."""

    def __init__(self, logs: Path):
        self.logs, self.started = logs, set()
        logs.mkdir(parents=True, exist_ok=True)

    def __call__(self, script: str, argv: list[str], log: str) -> float:
        module = importlib.import_module(script)
        args = module.get_args_parser().parse_args([str(item) for item in argv])
        start = time.perf_counter()
        mode = "a" if log in self.started else "w"
        self.started.add(log)
        with open(self.logs / f"{log}.log", mode) as handle, contextlib.redirect_stdout(handle):
            print(f"$ python {script}.py {shlex.join(str(item) for item in argv)}")
            module.main(args)
        return time.perf_counter() - start


def main(args: argparse.Namespace) -> None:
    work = Path(args.work_dir or f"results/table3_{args.dataset}")
    table_path = work / "table3.md"
    if table_path.exists() and not args.overwrite:
        raise UsageError(f"{work} already holds a table (table3.md); pass --overwrite to rerun into it or choose --work-dir")
    saved, gradients_dir, results, subsets_dir = work / "saved", work / "gradients", work / "results", work / "sampled_tasks"
    run = Runner(work / "logs")
    options = dataset_options(args)
    data = ["--dataset", args.dataset, *(["--data-dir", args.data_dir] if args.data_dir else [])]
    given = [name for name in OPTION_NAMES if options[name] is not None]
    data += [item for name in given for item in (f"--{name.replace('_', '-')}", options[name])]
    torch_flags = ["--device", args.device, "--no-progress", *(["--threads", args.threads] if args.threads else [])]
    train = [*data, *shlex.split(args.train_args), *torch_flags]
    truth, final = shlex.split(args.truth_args), shlex.split(args.final_args)
    wanted = [method for method in METHODS if method in args.methods]
    runs = args.runs if "gradtag5" in wanted else 1
    need_base = any(method in wanted for method in ("gradtag1", "gradtag5", "exact"))
    steps_bar = tqdm(total=len(wanted) + need_base, desc="table 3", unit="method", disable=args.no_progress)

    # θ* bases (Grad-TAG, the exact affinity's fine-tuning start); the task count and planted groups come with them
    base_runs = [saved / args.dataset / f"all_seed{seed}" for seed in range(runs if need_base else 0)]
    if need_base:
        run("train_multitask", [*train, "--runs", runs, "--seed", 0, "--saved-dir", saved, "--overwrite"], "theta")
        steps_bar.update()
    num_tasks = num_tasks_of(args.dataset, options, args.data_dir)
    kind = dataset_spec(args.dataset, args.data_dir)["kind"]
    metric = DOMAIN_METRICS["text" if kind in TEXT_KINDS else "graph"]
    planted = Path(args.planted) if args.planted else None
    if planted is None and kind in ("planted", "text_planted"):
        load_dataset(args.dataset, args.data_dir, **options)  # generated defaults write their planted groups beside them
        planted = planted_groups_path(args.data_dir or Path("datasets") / args.dataset)
    if planted is not None and not planted.is_file():
        raise UsageError(f"--planted {planted}: no such file; give a groups file (one group per line)")
    k = args.k or (len(read_subsets(planted, num_tasks)) if planted else None)
    if k is None:
        raise UsageError("--k: no planted groups to take the number of groups from; pass --k")
    if not 1 <= k <= num_tasks:
        raise UsageError(f"--k {k}: choose 1 <= k <= {num_tasks} (the number of tasks)")

    def cluster(affinity: Path, name: str) -> tuple[Path, Cost]:
        out = results / f"{name}_groups.txt"
        argv = ["--affinity", affinity, "--k", k, "--out", out, "--overwrite", *(["--planted", planted] if planted else [])]
        seconds = run("run_clustering", argv, name)
        return out, Cost(seconds, seconds, 0.0)  # the SDP's time counts; its FLOPs (SCS's) are not counted

    def sample(count: int, seed: int) -> Path:
        out = subsets_dir / f"{args.dataset}_m{count}_a{args.subset_size}_s{seed}.txt"
        argv = [*data, "--num-subsets", count, "--subset-size", args.subset_size, "--seed", seed, "--out", out, "--overwrite"]
        run("sample_subsets", argv, "subsets")
        return out

    def truth_csv(subsets: Path, mode: str, log: str) -> Path:
        init = ["--init-from", base_runs[0], *truth] if mode == "finetune" else []
        run("train_multitask", [*train, "--subsets-file", subsets, *init, "--results-dir", results, "--overwrite"], log)
        return results / f"{subsets.stem}_{mode}.csv"

    grouped: dict[tuple, tuple[Path, Cost]] = {}

    def train_groups(groups_file: Path, name: str, weights: Path | None) -> tuple[list[list[int]], float, Cost]:
        """One model per group, from scratch (a grouping met before is not trained twice; a weighted one always is)."""
        groups = [list(group) for group in read_subsets(groups_file, num_tasks)]
        key = (tuple(tuple(sorted(group)) for group in sorted(groups)), weights)
        if key not in grouped:
            argv = [*train, *final, "--subsets-file", groups_file, "--results-dir", results, "--results-name", f"{name}_trained"]
            argv += ["--task-weights", weights] if weights is not None else []
            run("train_multitask", [*argv, "--seed", args.seed, "--overwrite"], f"{name}_trained")
            csv = results / f"{name}_trained.csv"
            grouped[key] = (csv, results_cost(csv))
        csv, cost = grouped[key]
        return groups, partition_score(csv, groups, metric), cost

    def write_groups(groups: list[list[int]], name: str, header: str) -> Path:
        path = results / f"{name}_groups.txt"
        write_subsets(path, groups, header)
        return path

    def row(method: str, files: list[Path], find: Cost, note: str = "", weights: Path | None = None) -> MethodRow:
        trained = [train_groups(path, path.stem.removesuffix("_groups"), weights) for path in files]
        scores = [score for _, score, _ in trained]
        total = Cost()
        for _, _, cost in trained:
            total = total + cost
        aris = [ari for groups, _, _ in trained if (ari := planted_ari(groups, planted, num_tasks)) is not None]
        return MethodRow(method, [len(groups) for groups, _, _ in trained], scores, find, total, aris, note)

    rows: list[MethodRow] = []
    collected: set[Path] = set()
    subsets_file = sample(args.num_subsets, args.seed) if need_base else None
    affinity_kind = "pairwise" if subsets_file and is_pairwise(read_subsets(subsets_file, num_tasks)) else "higher_order"
    calibration, calibration_cost = [], Cost()
    if need_base and args.calibrate > 0 and any(method.startswith("gradtag") for method in wanted):
        calibration_csv = truth_csv(sample(args.calibrate, args.seed + 1), "finetune", "calibration")
        calibration, calibration_cost = ["--calibrate-with", calibration_csv], results_cost(calibration_csv)
    for method in wanted:
        if method == "stl":
            rows.append(row(method, [write_groups(single_task_groups(num_tasks), "stl", "STL")], Cost()))
        elif method == "mtl":
            rows.append(row(method, [write_groups(all_tasks_group(num_tasks), "mtl", "naive MTL")], Cost()))
        elif method == "random":
            files = [
                write_groups(random_groups(num_tasks, k, args.seed + draw), f"random{draw}", f"random draw {draw}")
                for draw in range(args.random_draws)
            ]
            rows.append(row(method, files, Cost(), f"{args.random_draws} draws"))
        elif method in ("gradtag1", "gradtag5"):
            bases = base_runs[: 1 if method == "gradtag1" else runs]
            folders = [gradients_dir / args.dataset / f"{base.name}_d{args.project_dim}" for base in bases]
            find = calibration_cost
            for base, folder in zip(bases, folders, strict=True):
                if folder not in collected:  # gradtag5 reuses gradtag1's base
                    argv = ["--checkpoint", base, "--project-dim", args.project_dim, "--out", folder, "--overwrite"]
                    run("collect_gradients", [*argv, *torch_flags], f"gradients_{base.name}")
                    collected.add(folder)
                find = find + checkpoint_cost(base) + gradients_cost(folder)
            argv = ["--gradients", *folders, "--subsets-file", subsets_file, "--l2", args.l2, *calibration]
            argv += shlex.split(args.estimate_args)
            run("fit_linear_estimates", [*argv, "--name", method, "--results-dir", results, *torch_flags], method)
            find = find + results_cost(results / f"{method}_estimate.csv")
            groups_file, cluster_cost = cluster(results / f"{method}_estimate_{affinity_kind}.npy", method)
            rows.append(row(method, [groups_file], find + cluster_cost, f"M = {len(bases)}, m = {args.num_subsets}"))
        elif method == "exact":
            csv = truth_csv(subsets_file, args.exact_truth, "exact")
            records = score_records(read_results(csv), "loss")
            meta = {"truth": str(csv), "score": "loss"}
            affinity = save_affinity(results / "exact", records, num_tasks, affinity_kind == "pairwise", meta)
            find = results_cost(csv) + (checkpoint_cost(base_runs[0]) if args.exact_truth == "finetune" else Cost())
            groups_file, cluster_cost = cluster(affinity, "exact")
            rows.append(row(method, [groups_file], find + cluster_cost, f"{args.exact_truth}, m = {args.num_subsets}"))
        elif method == "tag":
            tag_saved = work / "saved_tag"
            argv = [*train, "--runs", 1, "--seed", args.seed, "--saved-dir", tag_saved, "--record-tag"]
            run("train_multitask", [*argv, "--tag-every", args.tag_every, "--overwrite"], "tag")
            folder = tag_saved / args.dataset / f"all_seed{args.seed}"
            groups_file, cluster_cost = cluster(folder / "tag_affinity.npy", "tag")
            rows.append(row(method, [groups_file], checkpoint_cost(folder) + cluster_cost, f"every {args.tag_every} steps"))
        elif method == "datamaps":
            map_saved = work / "saved_datamap"
            argv = [*train, "--runs", 1, "--seed", args.seed, "--saved-dir", map_saved, "--record-data-map", "--overwrite"]
            run("train_multitask", argv, "datamaps")
            folder = map_saved / args.dataset / f"all_seed{args.seed}"
            out = results / "datamaps_groups.txt"
            argv = ["--data-map", folder, "--k", k, "--method", "fuzzy", "--fuzziness", args.fuzziness, "--out", out]
            seconds = run("run_clustering", [*argv, "--overwrite", *(["--planted", planted] if planted else [])], "datamaps")
            find = checkpoint_cost(folder) + Cost(seconds, seconds, 0.0)
            weights = out.with_name(f"{out.stem}_memberships.npy")  # STG-MTL: group g's model weighs task j by u_gj
            rows.append(row(method, [out], find, f"fuzzy c-means, m = {args.fuzziness}, membership-weighted", weights))
        steps_bar.update()
    steps_bar.close()

    lines = format_table(rows, metric)
    work.mkdir(parents=True, exist_ok=True)
    with atomic_set():  # the table's JSON and markdown appear together or not at all
        write_json(
            work / "table3.json",
            {"dataset": args.dataset, "num_tasks": num_tasks, "k": k, "metric": metric, "rows": [r.to_json() for r in rows]},
        )
        with atomic_path(table_path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    best = max(rows, key=lambda entry: np.mean(entry.scores))
    print(
        f"compare_methods: {len(rows)} methods on {args.dataset} (n={num_tasks}, k={k}), best {LABELS[best.method]} "
        f"-> wrote {table_path}, {work / 'table3.json'}, logs in {work / 'logs'}"
    )


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

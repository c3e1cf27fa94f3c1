"""Step 3: estimate f(S, j) for every sampled subset S by logistic regression on projected gradients (Eq. 3-5).

Usage:
    python fit_linear_estimates.py --gradients gradients/planted/all_seed0_d200 \
        --subsets-file sampled_tasks/planted_m200_a5_s0.txt
    python fit_linear_estimates.py --gradients gradients/planted/all_seed{0,1,2}_d200 --subsets-file ... --eval reconstructed

For each subset S it fits ŵ_S on the training rows of the tasks in S with the base model's logit as a fixed offset and
an L2 penalty, all subsets batched. Each task j in S is then scored on its validation (and test) samples, either
``linearized`` (logits = base logit + projected gradient · ŵ_S; no network pass), ``reconstructed`` (the network
with weights Ŵ_S = θ* + P ŵ_S; the paper's way) or ``second-order`` (the network's expansion to second order along
P ŵ_S, Remark 3.1: the linearized logits plus ½ Δᵀ∇²f Δ, by forward-mode Hessian-vector products at θ*). Scores are
averaged over the M meta-initializations given. Writes ``results/<name>_estimate.csv`` (one row per subset and
task) and the affinity matrix ``results/<name>_estimate_{pairwise,higher_order}.npy`` (pairwise when every subset is a
pair, Eq. (1) otherwise) with its counts and JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from data import load_dataset
from gradtag.artifacts import (
    UsageError,
    check_compatible,
    gradient_file,
    load_npy,
    locate_input,
    package_versions,
    read_config,
    read_json,
    read_results,
    read_subsets,
    run_main,
    subset_key,
    weights_fingerprint,
    write_json,
    write_results,
)
from gradtag.checks import NONNEGATIVE, POSITIVE_INT, ArgumentParser
from gradtag.evaluation import calibrate
from gradtag.exact_step import ExactStep
from gradtag.flops import count_flops, format_flops
from gradtag.gradients import flat_params, set_flat_params, taylor_logits
from gradtag.health import base_verdict
from gradtag.projection import Projector
from gradtag.regression import SOLVERS, fit_subsets, prepare_tasks
from gradtag.regression import linearized_scores as regression_scores
from gradtag.scores import SCORES, is_pairwise, save_affinity, score_records
from gradtag.training import class_weights, evaluate, load_checkpoint
from steps.cli import add_folder_args, add_run_args, add_strict_arg, resolve_device
from steps.launch import add_launcher_args, launch
from steps.merge import merge_shards
from steps.partition import add_shard_args, shard_indices, shard_suffix

EVAL_MODES = ("linearized", "reconstructed", "second-order")
STEP3_SOLVERS = (*SOLVERS, "exact-step")
# λ values the calibration tries: below 1e-2 newton-cg takes minutes on real graphs and never won (README, levers)
L2_GRID = (1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, 30.0, 100.0)


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gradients", nargs="+", required=True, help="step-2 folders, one per meta-initialization (M of them)")
    parser.add_argument("--subsets-file", required=True, help="sampled_tasks file: one subset of task indices per line")
    parser.add_argument(
        "--l2", type=NONNEGATIVE, default=0.01, help="L2 strength λ of the regression (on mean-normalised per-task losses)"
    )
    parser.add_argument(
        "--solver",
        default="newton-cg",
        choices=STEP3_SOLVERS,
        help="exact Newton (-cg: matrix-free), one Newton step from w=0, or exact-step: the strong-λ limit of every "
        "solver computed without the projection, Δ_S = −∇L_S(θ*)/λ scored by exact Jacobian-vector products at θ* "
        "(gradtag/exact_step.py; reads the checkpoint and dataset, not the gradient files)",
    )
    parser.add_argument("--eval", default="linearized", choices=EVAL_MODES, help="how each task of a subset is scored")
    parser.add_argument("--score", default="loss", choices=sorted(SCORES), help="affinity entry: -val loss or val F1")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=64, help="subsets fitted together (memory knob)")
    parser.add_argument(
        "--count-flops",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count the FLOPs of step 3 in a second, untimed pass (gradtag/flops.py); --no-count-flops skips it",
    )
    parser.add_argument(
        "--calibrate-with",
        nargs="+",
        default=None,
        metavar="TRUTH_CSV",
        help="truth CSVs (train_multitask.py --subsets-file) on a few subsets trained for real: λ is then the value of "
        "--l2-grid whose estimates match them best (per-task Spearman of --score), instead of --l2; the held-out ρ "
        "(chosen on half the subsets, scored on the other) is printed and recorded",
    )
    parser.add_argument(
        "--calibrate-solvers",
        nargs="+",
        default=None,
        choices=STEP3_SOLVERS,
        metavar="SOLVER",
        help="with --calibrate-with: choose the solver too, the best (solver, λ) of these solvers × --l2-grid "
        f"(from {', '.join(STEP3_SOLVERS)}; default: --solver only)",
    )
    parser.add_argument(
        "--l2-grid",
        nargs="+",
        type=NONNEGATIVE,
        default=list(L2_GRID),
        help="λ values tried by --calibrate-with",
    )
    parser.add_argument(
        "--data-dir", default=None, help="dataset files, if not where step 1 found them (reconstructed, second-order)"
    )
    parser.add_argument("--name", default=None, help="result name (default: the subsets file stem)")
    add_strict_arg(parser)
    add_run_args(parser)
    add_folder_args(parser, "results")
    add_shard_args(parser, "subsets (whole --batch-size batches)")
    add_launcher_args(parser)
    return parser


def load_gradient_folder(folder: Path, splits, tasks) -> dict:
    """Per split, lists (indexed by task) of projected gradients, base logits and labels; None for absent tasks."""
    rerun = f"rerun collect_gradients.py for {folder} (it recomputes damaged files)"
    data = {}
    for split in splits:
        arrays = {"gradients": [], "outputs": [], "labels": []}
        for task in range(tasks):
            for kind in arrays:
                path = gradient_file(folder, task, split, kind)
                arrays[kind].append(load_npy(path, rerun) if path.is_file() else None)
        data[split] = arrays
    return data


def check_folders(folders: list[Path]) -> list[dict]:
    """Read each step-2 config and refuse folders that disagree on dataset, task list or projection dimension, and
    folders whose θ* has been retrained since (its model.pt now holds other weights than the gradients were taken at)."""
    configs = [read_config(folder, "gradients") for folder in folders]
    for folder, config in zip(folders, configs, strict=True):
        config["checkpoint"] = str(locate_input(folder, config, "checkpoint"))  # found from the gradients folder
        weights = Path(config["checkpoint"]) / "model.pt"
        if weights.is_file() and weights_fingerprint(weights) != config["checkpoint_fingerprint"]:
            raise UsageError(
                f"{folder} holds gradients of other weights than {weights} now holds (θ* was retrained since); "
                f"rerun collect_gradients.py --checkpoint {config['checkpoint']} --overwrite"
            )
    first = configs[0]
    for folder, config in zip(folders[1:], configs[1:], strict=True):
        check_compatible(
            config,
            folder,
            dataset=first["dataset"],
            dataset_fingerprint=first["dataset_fingerprint"],
            task_names=first["task_names"],
        )
        if config["projection"]["project_dim"] != first["projection"]["project_dim"]:
            raise UsageError(
                f"{folder} has project_dim {config['projection']['project_dim']} but {folders[0]} has "
                f"{first['projection']['project_dim']}; average only bases projected to the same d"
            )
    return configs


def one_off_cost(folders: list[Path], configs: list[dict]) -> dict:
    """Seconds and FLOPs spent before step 3 on the base models: training θ* (step 1) and projecting gradients (step 2).

    Read from each checkpoint's metrics.json and each gradient folder's cost_shard*.json; None when either is missing
    or predates cost records.
    """
    seconds, flops = 0.0, 0
    for folder, config in zip(folders, configs, strict=True):
        training = Path(config["checkpoint"]) / "metrics.json"
        shards = sorted(folder.glob("cost_shard*.json"))
        if not training.is_file() or not shards:
            return {"seconds": None, "flops": None}
        costs = [read_json(path) for path in (training, *shards)]
        if any("flops" not in cost for cost in costs):
            return {"seconds": None, "flops": None}
        seconds += sum(cost["seconds"] for cost in costs)
        flops += sum(cost["flops"] for cost in costs)
    return {"seconds": seconds, "flops": flops}


def linearized_scores(data: dict, subsets, weights: np.ndarray) -> dict:
    """{(subset index, task): {"val_loss", "val_f1", "test_loss", "test_f1"}} from logits o + G ŵ_S (Eq. 4)."""
    scores = {}
    for split in ("val", "test"):
        arrays = data.get(split)
        if arrays is None:  # a split step 2 did not collect: NaN scores
            split_scores = {(index, task): (np.nan, np.nan) for index, subset in enumerate(subsets) for task in subset}
        else:
            split_scores = regression_scores(arrays["gradients"], arrays["outputs"], arrays["labels"], subsets, weights)
        for key, (loss, f1) in split_scores.items():
            scores.setdefault(key, {}).update({f"{split}_loss": loss, f"{split}_f1": f1})
    return scores


def network_scores(config: dict, subsets, weights: np.ndarray, mode: str, device, data_dir, progress: bool) -> dict:
    """Scores from the network itself on each task's validation and test samples, with Δ_S = P ŵ_S:

    ``reconstructed``: the network with weights Ŵ_S = θ* + Δ_S (Eq. 5); ``second-order``: its Taylor expansion
    f(θ*) + ∇f·Δ_S + ½ Δ_Sᵀ∇²f Δ_S (Remark 3.1; exact directional derivatives, no projection of the curvature).
    """
    dataset, model = load_base(config, device, data_dir)
    projector = Projector.from_spec(config["projection"])
    base = flat_params(model).detach().clone()
    scores = {}
    for index, subset in enumerate(tqdm(subsets, desc=f"{mode} eval", disable=not progress)):
        delta = projector.expand(torch.as_tensor(weights[index], dtype=torch.float32, device=device)).to(base)
        logits_fn = None
        if mode == "reconstructed":
            set_flat_params(model, base + delta)
        else:

            def logits_fn(nodes, delta=delta):
                value, slope, curvature = taylor_logits(model, base, delta, dataset.features[nodes].to(device))
                return (value + slope + 0.5 * curvature).cpu()

        metrics = evaluate(model, dataset, list(subset), device, splits=("val", "test"), logits_fn=logits_fn)
        for column, task in enumerate(subset):
            scores[index, task] = {f"{s}_{m}": metrics[s][m][column] for s in ("val", "test") for m in ("loss", "f1")}
    set_flat_params(model, base)
    return scores


def estimate_distances(config: dict, weights: np.ndarray, chunk: int) -> np.ndarray:
    """(m,) relative moves ‖P ŵ_S‖ / ‖θ*‖ of the estimates Ŵ_S = θ* + P ŵ_S (Eq. 5), from (m, d) weights; NaN when the
    gradient folder predates its ``base_norm`` record. Comparable with a truth's ``distance`` column. Expanded
    ``chunk`` subsets at a time: step 3's batch size, so that a shard (whole batches) expands the same blocks as an
    unsharded run and writes the same bytes."""
    base_norm = config.get("base_norm")
    if not base_norm:
        return np.full(len(weights), np.nan)
    projector = Projector.from_spec(config["projection"])
    norms = [
        projector.expand(torch.as_tensor(weights[start : start + chunk].T, dtype=torch.float64)).norm(dim=0).numpy()
        for start in range(0, len(weights), chunk)
    ]
    return np.concatenate(norms) / base_norm


def calibrate_l2(args, folders: list[Path], configs: list[dict], num_tasks: int, device) -> tuple[str, float, dict]:
    """The (solver, λ) of ``--calibrate-solvers`` × ``--l2-grid`` whose estimates best match the trained subsets of
    ``--calibrate-with`` (see :func:`gradtag.evaluation.calibrate`); returns them and a JSON-ready record."""
    truth_rows = []
    for path in args.calibrate_with:
        meta = read_json(Path(path).with_suffix(".json"))
        check_compatible(meta, path, dataset=configs[0]["dataset"], dataset_fingerprint=configs[0]["dataset_fingerprint"])
        truth_rows += read_results(path)
    truth = score_records(truth_rows, args.score)
    subsets = sorted({subset for subset, _, _ in truth})
    needed = sorted({task for subset in subsets for task in subset})
    solvers = args.calibrate_solvers or [args.solver]
    per_setting = {(solver, l2): [] for solver in solvers for l2 in args.l2_grid}
    for folder, config in zip(folders, configs, strict=True):
        for solver in solvers:
            estimator = base_estimator(args, folder, config, num_tasks, needed, device, ("val",), solver)
            for l2 in tqdm(args.l2_grid, desc=f"calibrate λ ({solver}, {folder.name})", disable=args.no_progress):
                per_setting[solver, l2].append(estimator(subsets, l2)[0])
    estimates = {key: score_records(averaged_rows(bases, subsets), args.score) for key, bases in per_setting.items()}
    result = calibrate(estimates, truth, seed=args.seed)
    solver, l2 = result.best
    record = {
        "truths": list(args.calibrate_with),
        "score": args.score,
        "subsets": result.n_subsets,
        "rho_by_l2": {str(value): rho for (name, value), rho in result.rho_by_value.items() if name == solver},
        "rho_by_setting": {f"{name} {value:g}": rho for (name, value), rho in result.rho_by_value.items()},
        "chosen_solver": solver,
        "chosen_l2": l2,
        "held_out_rho": result.held_out,
    }
    return solver, l2, record


def averaged_rows(per_base: list[dict], subsets, distances=None, ids=None) -> list[dict]:
    """Result rows (``RESULT_COLUMNS``), one per (subset, task): each score averaged over the bases' score dicts
    ``{(subset index, task): {column: value}}``; ``distance`` from ``distances`` (m,) when given, else NaN; the rows'
    ``subset_id`` is ``ids[index]`` (a shard's global ids) when given, else the index."""
    rows = []
    for index, subset in enumerate(subsets):
        for task in subset:
            values = {key: float(np.mean([base[index, task][key] for base in per_base])) for key in per_base[0][index, task]}
            distance = float(distances[index]) if distances is not None else float("nan")
            rows.append(
                {
                    "subset_id": index if ids is None else ids[index],
                    "subset": subset_key(subset),
                    "task": task,
                    "seed": -1,
                    **values,
                    "distance": distance,
                    "source": "estimate",
                }
            )
    return rows


def base_estimator(args, folder: Path, config: dict, num_tasks: int, needed: list[int], device, splits, solver: str):
    """What step 3 shares across subsets and λ values for one base model, as a function
    ``estimate(subsets, l2) -> (scores, distances, unconverged)``: the scores ``{(subset index, task): {column: value}}``
    of ``splits``, a callable giving the (m,) moves ‖Δ_S‖/‖θ*‖ (an untimed diagnostic) and the number of regressions
    that did not converge.

    ``--solver exact-step`` builds :class:`gradtag.exact_step.ExactStep` from the checkpoint (no gradient files read)
    and scores the validation split only (test scores NaN, as a regression on a folder without test gradients gives);
    the regression solvers read the folder's projected gradients (training rows, and ``splits`` to score on) once.
    """
    if solver == "exact-step":
        dataset, model = load_base(config, device, args.data_dir)
        balanced = config.get("training", {}).get("balanced", False)
        exact = ExactStep(model, dataset, needed, balanced, device, ("val",), progress=not args.no_progress)

        def estimate_exact(subsets, l2):
            return exact.scores(subsets, l2), lambda: exact.distances(subsets, l2), 0

        return estimate_exact
    data = load_gradient_folder(folder, ("train", *splits), num_tasks)
    missing = [task for task in needed if data["train"]["gradients"][task] is None]
    if missing:
        raise UsageError(f"{folder} lacks training gradients of tasks {missing[:10]}; run collect_gradients.py for them")
    if args.eval == "linearized":
        no_val = [task for task in needed if data["val"]["gradients"][task] is None]
        if no_val:
            raise UsageError(
                f"{folder} lacks validation gradients of tasks {no_val[:10]}, which --eval linearized scores with; "
                "rerun collect_gradients.py with --splits train val, or use --eval reconstructed or second-order"
            )
    train = data["train"]
    stand_in = train["gradients"][needed[0]]  # tasks outside every subset are never read; keep shapes valid
    labels = [y if y is not None else np.zeros(len(stand_in)) for y in train["labels"]]
    # the regression minimises the loss the base model was trained with: class-balanced if it was
    balanced = config.get("training", {}).get("balanced", False)
    task_data = prepare_tasks(
        [g if g is not None else stand_in for g in train["gradients"]],
        [o if o is not None else np.zeros(len(stand_in)) for o in train["outputs"]],
        labels,
        device=device,
        row_weights_list=[class_weights(y[:, None] > 0.5, np.ones((len(y), 1), bool), balanced)[:, 0] for y in labels],
    )

    def estimate_regression(subsets, l2):
        fit = fit_subsets(task_data, subsets, l2, solver=solver, batch_size=args.batch_size)
        weights = fit.weights.cpu().numpy()
        if args.eval == "linearized":
            scores = linearized_scores(data, subsets, weights)
        else:
            scores = network_scores(config, subsets, weights, args.eval, device, args.data_dir, not args.no_progress)
        return scores, lambda: estimate_distances(config, weights, args.batch_size), int((~fit.converged).sum())

    return estimate_regression


def load_base(config: dict, device, data_dir=None):
    """(dataset, θ*) of a step-2 folder's checkpoint, the dataset rebuilt from the checkpoint's own settings."""
    checkpoint = Path(config["checkpoint"])
    checkpoint_config = read_config(checkpoint, "checkpoint")
    dataset = load_dataset(config["dataset"], data_dir or checkpoint_config["args"].get("data_dir"), **config["dataset_options"])
    model, _ = load_checkpoint(checkpoint, device, dataset)
    return dataset, model


def main(args: argparse.Namespace) -> None:
    if "exact-step" in [args.solver, *(args.calibrate_solvers or [])] and (
        args.eval != "linearized" or args.l2 == 0 or min(args.l2_grid) == 0
    ):
        raise UsageError("--solver exact-step scores --eval linearized only and needs --l2 (and --l2-grid values) > 0")
    if args.calibrate_solvers and not args.calibrate_with:
        raise UsageError("--calibrate-solvers chooses among solvers on trained subsets: pass --calibrate-with too")
    if args.launcher != "none":
        launch("fit_linear_estimates", args)
        path, count = merge_shards(Path(args.results_dir) / f"{args.name or Path(args.subsets_file).stem}_estimate.csv")
        print(f"estimated {count} shards with --launcher {args.launcher}; merged them into {path} and its affinity matrix")
        return
    device = resolve_device(args.device)
    folders = [Path(folder) for folder in args.gradients]
    configs = check_folders(folders)
    for config in configs:  # before anything is written: --strict refuses a degenerate θ*
        verdict = base_verdict(config["checkpoint"], args.strict)
        if verdict:
            print(verdict, file=sys.stderr)
    num_tasks = len(configs[0]["task_names"])
    all_subsets = read_subsets(args.subsets_file, num_tasks)
    # a shard owns whole regression batches, so each subset is fitted in the same batch as in an unsharded run
    owned = shard_indices(len(all_subsets), args.num_shards, args.shard_id, block=args.batch_size)
    subsets = [all_subsets[index] for index in owned]
    needed = sorted({task for subset in subsets for task in subset})
    calibration = None
    if args.calibrate_with:
        args.solver, args.l2, calibration = calibrate_l2(args, folders, configs, num_tasks, device)
        rhos = ", ".join(f"{setting}: {rho:.3f}" for setting, rho in calibration["rho_by_setting"].items())
        print(
            f"calibrated λ on {calibration['subsets']} trained subsets ({args.score}; per-task ρ by solver and λ: {rhos}): "
            f"{args.solver}, λ = {args.l2:g}, held-out ρ {calibration['held_out_rho']:.3f}"
        )
    start = time.perf_counter()
    per_base, distance_fns, total_flops, counting_seconds = [], [], 0, 0.0
    for folder, config in zip(folders, configs, strict=True):
        estimator = base_estimator(args, folder, config, num_tasks, needed, device, ("val", "test"), args.solver)
        scores, distance_fn, unconverged = estimator(subsets, args.l2)
        per_base.append(scores)
        distance_fns.append(distance_fn)
        if args.count_flops:  # a second, untimed pass: the counter slows small ops several-fold
            counting_start = time.perf_counter()
            with count_flops() as flops:
                estimator = base_estimator(args, folder, config, num_tasks, needed, device, ("val", "test"), args.solver)
                estimator(subsets, args.l2)
            total_flops += flops.total
            counting_seconds += time.perf_counter() - counting_start
        if unconverged:
            print(f"warning: {unconverged} of {len(subsets)} regressions did not converge in {folder}")
    seconds = time.perf_counter() - start - counting_seconds
    # untimed diagnostic: how far each estimate moves θ*, averaged over the bases
    distances = np.mean([distance_fn() for distance_fn in distance_fns], axis=0)

    rows = averaged_rows(per_base, subsets, distances, ids=owned)
    dataset = configs[0]["dataset"]
    name = args.name or Path(args.subsets_file).stem
    results_dir = Path(args.results_dir)
    csv_path = results_dir / f"{name}_estimate{shard_suffix(args.num_shards, args.shard_id)}.csv"
    meta = {
        "dataset": dataset,
        "dataset_fingerprint": configs[0]["dataset_fingerprint"],
        "task_names": configs[0]["task_names"],
        "subsets_file": str(args.subsets_file),
        "subsets": [list(subset) for subset in all_subsets],
        **({"shard": {"num_shards": args.num_shards, "shard_id": args.shard_id}} if args.num_shards > 1 else {}),
        "gradients": [str(folder) for folder in folders],
        "bases": [
            {"checkpoint": config["checkpoint"], "checkpoint_fingerprint": config["checkpoint_fingerprint"]} for config in configs
        ],
        "l2": args.l2,
        "calibration": calibration,
        "solver": args.solver,
        "eval": args.eval,
        "score": args.score,
        "seconds": seconds,
        "flops": total_flops if args.count_flops else None,
        "one_off": one_off_cost(folders, configs),
        "versions": package_versions(),
    }
    write_results(csv_path, rows)
    write_json(csv_path.with_suffix(".json"), meta)
    if args.num_shards > 1:
        print(
            f"estimated shard {args.shard_id} of {args.num_shards}: {len(subsets)} of {len(all_subsets)} subsets x "
            f"{len(folders)} base model(s) in {seconds:.2f}s; wrote {csv_path} (merge the shards with merge_results.py)"
        )
        return
    matrix = save_affinity(
        results_dir / f"{name}_estimate", score_records(rows, args.score), num_tasks, is_pairwise(subsets), meta
    )
    print(
        f"estimated {len(subsets)} subsets x {len(folders)} base model(s) ({args.solver}, {args.eval}, λ={args.l2}) "
        f"in {seconds:.2f}s ({format_flops(total_flops if args.count_flops else None)}); wrote {csv_path} and {matrix}"
    )


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())

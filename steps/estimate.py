"""Step 3: estimate f(S, j) for every sampled subset S by logistic regression on projected gradients (Eq. 3-5).

:func:`run` takes a frozen :class:`EstimateJob`. For each subset S of this shard (whole batches of ``batch_size``
subsets) it fits ŵ_S on the training rows of the tasks in S with the base model's logit as a fixed offset and an L2
penalty, all subsets batched; each task j in S is then scored on its validation (and test) samples, ``linearized``,
``reconstructed`` or ``second-order`` (``fit_linear_estimates.py --help``), averaged over the M bases. Writes
``results/<name>_estimate[.shard<k>of<n>].csv`` and, unsharded, the affinity matrix with its counts and JSON.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from data import load_dataset
from gradtag.affinity import additive_shortfall
from gradtag.artifacts import (
    UsageError,
    atomic_set,
    check_compatible,
    load_npy,
    locate_input,
    package_versions,
    read_config,
    read_json,
    total_cost,
    write_json,
)
from gradtag.checkpoints import gradient_file, weights_fingerprint
from gradtag.evaluation import calibrate, calibration_problems
from gradtag.exact_step import ExactStep, preparation_flops
from gradtag.flops import count_flops, format_flops
from gradtag.gradients import flat_params, set_flat_params, taylor_logits
from gradtag.health import base_verdict
from gradtag.projection import projector_from_spec
from gradtag.regression import BATCH_SIZE, SOLVERS, fit_subsets, newton_cg_start, prepare_tasks
from gradtag.regression import linearized_scores as regression_scores
from gradtag.results import ESTIMATE_SEED, read_results, read_subsets, subset_key, write_results
from gradtag.scores import METRICS, is_pairwise, save_affinity, score_records
from gradtag.training import class_weights, evaluate, load_checkpoint
from steps.cli import job_from_flags, resolve_device, use_threads
from steps.partition import shard_indices, shard_suffix

EVAL_MODES = ("linearized", "reconstructed", "second-order")
AFFINITIES = ("mean", "additive")  # Eq. 1's T (always written), and the additive T beside it (gradtag.affinity)
STEP3_SOLVERS = (*SOLVERS, "exact-step")
# λ values the calibration tries: below 1e-2 newton-cg takes minutes on real graphs and never won (README, levers)
L2_GRID = (1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, 30.0, 100.0)


@dataclass(frozen=True)
class EstimateJob:
    """Everything :func:`run` needs, frozen (``fit_linear_estimates.py``'s flags)."""

    gradients: tuple[str, ...]
    subsets_file: str
    l2: float = 0.01
    solver: str = "newton-cg"
    eval: str = "linearized"
    score: str = "loss"
    affinity: str = "mean"
    batch_size: int = BATCH_SIZE
    count_flops: bool = True
    calibrate_with: tuple[str, ...] | None = None
    calibrate_solvers: tuple[str, ...] | None = None
    l2_grid: tuple[float, ...] = L2_GRID
    data_dir: str | None = None
    name: str | None = None
    strict: bool = False
    seed: int = 0
    device: str = "auto"
    no_progress: bool = False
    results_dir: str = "results"
    num_shards: int = 1
    shard_id: int = 0
    threads: int | None = None

    @classmethod
    def from_args(cls, args) -> EstimateJob:
        return job_from_flags(cls, args)

    def csv_path(self) -> Path:
        """The estimate CSV of the whole run (a shard's adds ``.shard<k>of<n>`` before ``.csv``)."""
        return Path(self.results_dir) / f"{self.name or Path(self.subsets_file).stem}_estimate.csv"


def check_job(job: EstimateJob) -> None:
    """Refuse flag combinations that make no sense, before anything is read or written."""
    if job.affinity not in AFFINITIES:
        raise UsageError(f"--affinity {job.affinity}: choose one of {', '.join(AFFINITIES)}")
    if "exact-step" in [job.solver, *(job.calibrate_solvers or [])] and (
        job.eval != "linearized" or job.l2 == 0 or min(job.l2_grid) == 0
    ):
        raise UsageError("--solver exact-step scores --eval linearized only and needs --l2 (and --l2-grid values) > 0")
    if job.calibrate_solvers and not job.calibrate_with:
        raise UsageError("--calibrate-solvers chooses among solvers on trained subsets: pass --calibrate-with too")


def save_affinities(prefix: Path, records, num_tasks: int, subsets, meta: dict, affinity: str = "mean") -> list[Path]:
    """Write the estimate's T (pairwise, or Eq. 1's ``_higher_order``) and, with ``affinity`` ``additive``, the additive
    T beside it (``_additive``, :func:`gradtag.scores.save_affinity`); warn when tasks are in fewer subsets than they
    have partners (the additive model is then underdetermined), with the number of subsets needed. Returns the paths."""
    paths = [save_affinity(prefix, records, num_tasks, is_pairwise(subsets), meta)]
    if affinity == "additive":
        paths.append(save_affinity(prefix, records, num_tasks, False, meta, "additive"))
        shortfall = additive_shortfall(records, num_tasks)
        if shortfall:
            task, (held, partners) = min(shortfall.items(), key=lambda item: item[1][0] - item[1][1])
            size = float(np.mean([len(subset) for subset in subsets]))
            needed = int(np.ceil(max(p for _, p in shortfall.values()) * num_tasks / size))
            print(
                f"warning: additive affinity: {len(shortfall)} of {num_tasks} tasks are in fewer subsets than they have "
                f"partners (task {task}: {held} subsets, {partners} partners); their partner effects are underdetermined "
                f"and shrunk by the ridge: sample about {needed} subsets of {size:g} (each task in as many subsets as it "
                f"has partners), not {len(subsets)}"
            )
    return paths


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
    """Wall and CPU seconds and FLOPs spent before step 3 on the base models: training θ* (step 1) and projecting
    gradients (step 2).

    Read from each checkpoint's metrics.json and each gradient folder's cost_shard*.json; None when either is missing
    or predates cost records.
    """
    costs = []
    for folder, config in zip(folders, configs, strict=True):
        training = Path(config["checkpoint"]) / "metrics.json"
        shards = sorted(folder.glob("cost_shard*.json"))
        if not training.is_file() or not shards:
            return {"seconds": None, "flops": None, "cpu_seconds": None}
        costs += [read_json(path) for path in (training, *shards)]
    if any("flops" not in cost for cost in costs):
        return {"seconds": None, "flops": None, "cpu_seconds": None}
    cpu_known = all("cpu_seconds" in cost for cost in costs)  # records written before CPU seconds were kept lack it
    return {
        "seconds": sum(cost["seconds"] for cost in costs),
        "flops": sum(cost["flops"] for cost in costs),
        "cpu_seconds": sum(cost["cpu_seconds"] for cost in costs) if cpu_known else None,
    }


def linearized_scores(data: dict, subsets, weights: np.ndarray) -> dict:
    """{(subset index, task): {"<split>_loss", "<split>_f1", "<split>_accuracy"}} from logits o + G ŵ_S (Eq. 4)."""
    scores = {}
    for split in ("val", "test"):
        arrays = data.get(split)
        if arrays is None:  # a split step 2 did not collect: NaN scores
            split_scores = {(index, task): (np.nan,) * len(METRICS) for index, subset in enumerate(subsets) for task in subset}
        else:
            split_scores = regression_scores(arrays["gradients"], arrays["outputs"], arrays["labels"], subsets, weights)
        for key, values in split_scores.items():  # linearized_scores gives them in METRICS order
            scores.setdefault(key, {}).update({f"{split}_{metric}": value for metric, value in zip(METRICS, values, strict=True)})
    return scores


def network_scores(config: dict, subsets, weights: np.ndarray, mode: str, device, data_dir, progress: bool) -> dict:
    """Scores from the network itself on each task's validation and test samples, with Δ_S = P ŵ_S:

    ``reconstructed``: the network with weights Ŵ_S = θ* + Δ_S (Eq. 5); ``second-order``: its Taylor expansion
    f(θ*) + ∇f·Δ_S + ½ Δ_Sᵀ∇²f Δ_S (Remark 3.1; exact directional derivatives, no projection of the curvature).
    """
    dataset, model = load_base(config, device, data_dir)
    projector = projector_from_spec(config["projection"])
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
            scores[index, task] = {f"{s}_{m}": metrics[s][m][column] for s in ("val", "test") for m in METRICS}
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
    projector = projector_from_spec(config["projection"])
    norms = [
        projector.expand(torch.as_tensor(weights[start : start + chunk].T, dtype=torch.float64)).norm(dim=0).numpy()
        for start in range(0, len(weights), chunk)
    ]
    return np.concatenate(norms) / base_norm


def calibrate_l2(
    job, folders: list[Path], configs: list[dict], num_tasks: int, device, shared: dict, also: list[int]
) -> tuple[str, float, dict]:
    """The (solver, λ) of ``--calibrate-solvers`` × ``--l2-grid`` whose estimates best match the trained subsets of
    ``--calibrate-with`` (see :func:`gradtag.evaluation.calibrate`); returns them and a JSON-ready record, with what
    the choice cost the estimate side: the sweep (``cost``: its wall and CPU seconds; FLOPs counted on one λ per solver
    and base, scaled to the grid) and the calibration subsets trained for real (``truth_cost``, from their sidecars).
    The exact step's products are built for the calibration's tasks and ``also`` (the estimate's) and kept in
    ``shared``, so the estimate reuses them (their cost is in the sweep's)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    truth_rows, truth_metas = [], []
    for path in job.calibrate_with:
        meta = read_json(Path(path).with_suffix(".json"))
        check_compatible(meta, path, dataset=configs[0]["dataset"], dataset_fingerprint=configs[0]["dataset_fingerprint"])
        truth_rows += read_results(path)
        truth_metas.append(meta)
    truth = score_records(truth_rows, job.score)
    subsets = sorted({subset for subset, _, _ in truth})
    needed = sorted({task for subset in subsets for task in subset} | set(also))
    solvers = job.calibrate_solvers or [job.solver]
    per_setting = {(solver, l2): [] for solver in solvers for l2 in job.l2_grid}
    for folder, config in zip(folders, configs, strict=True):
        for solver in solvers:
            estimator = base_estimator(job, folder, config, num_tasks, needed, device, ("val",), solver, shared)
            for l2 in tqdm(job.l2_grid, desc=f"calibrate λ ({solver}, {folder.name})", disable=job.no_progress):
                per_setting[solver, l2].append(estimator(subsets, l2)[0])
    estimates = {key: score_records(averaged_rows(bases, subsets), job.score) for key, bases in per_setting.items()}
    result = calibrate(estimates, truth, seed=job.seed)
    solver, l2 = result.best
    problems = calibration_problems(result, {name: job.l2_grid for name in solvers}, subsets, num_tasks)
    cost = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start, "flops": None}
    if job.count_flops:  # untimed, as step 3's own count: the per-task work, one λ's fits scaled to the grid
        cost["flops"] = 0
        for folder, config in zip(folders, configs, strict=True):
            for name in solvers:
                splits = ("val",)
                built = base_estimator(job, folder, config, num_tasks, needed, device, splits, name, shared)
                prepared, estimator = counted_preparation(
                    job, folder, config, num_tasks, needed, device, splits, name, built, shared
                )
                with count_flops() as fitting:
                    estimator(subsets, job.l2_grid[0])
                cost["flops"] += prepared + fitting.total * len(job.l2_grid)
    truth_cost = total_cost(truth_metas)
    record = {
        "truths": list(job.calibrate_with),
        "score": job.score,
        "subsets": result.n_subsets,
        "rho_by_l2": {str(value): rho for (name, value), rho in result.rho_by_value.items() if name == solver},
        "rho_by_setting": {f"{name} {value:g}": rho for (name, value), rho in result.rho_by_value.items()},
        "chosen_solver": solver,
        "chosen_l2": l2,
        "held_out_rho": result.held_out,
        "problems": problems,
        "cost": cost,
        "truth_cost": truth_cost,
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
                    "seed": ESTIMATE_SEED,
                    **values,
                    "distance": distance,
                    "source": "estimate",
                }
            )
    return rows


def base_estimator(job, folder: Path, config: dict, num_tasks: int, needed: list[int], device, splits, solver: str, shared=None):
    """What step 3 shares across subsets and λ values for one base model, as a function
    ``estimate(subsets, l2) -> (scores, distances, unconverged)``: the scores ``{(subset index, task): {column: value}}``
    of ``splits``, a callable giving the (m,) moves ‖Δ_S‖/‖θ*‖ (an untimed diagnostic) and the number of regressions
    that did not converge.

    ``--solver exact-step`` builds :class:`gradtag.exact_step.ExactStep` from the checkpoint (no gradient files read)
    and scores the validation split only (test scores NaN, as a regression on a folder without test gradients gives);
    the regression solvers read the folder's projected gradients (training rows, and ``splits`` to score on) once.
    ``shared`` (a dict, one per run) keeps each base's :class:`ExactStep`: its products are the exact step's whole
    per-task cost (n forward-mode products per task), and the calibration and the estimate need the same ones.
    """
    if solver == "exact-step":
        exact = (shared or {}).get(str(folder))
        if exact is None or not set(needed) <= set(exact.tasks):
            dataset, model = load_base(config, device, job.data_dir)
            balanced = config.get("training", {}).get("balanced", False)
            exact = ExactStep(model, dataset, needed, balanced, device, ("val",), progress=not job.no_progress)
            if shared is not None:
                shared[str(folder)] = exact

        def estimate_exact(subsets, l2):
            return exact.scores(subsets, l2), lambda: exact.distances(subsets, l2), 0

        return estimate_exact
    data = load_gradient_folder(folder, ("train", *splits), num_tasks)
    missing = [task for task in needed if data["train"]["gradients"][task] is None]
    if missing:
        raise UsageError(f"{folder} lacks training gradients of tasks {missing[:10]}; run collect_gradients.py for them")
    if job.eval == "linearized":
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
    if solver == "newton-cg":  # its start is per-task work: fitted here, so the FLOP count does not scale it with m
        newton_cg_start(task_data, job.l2)

    def estimate_regression(subsets, l2):
        fit = fit_subsets(task_data, subsets, l2, solver=solver, batch_size=job.batch_size)
        weights = fit.weights.cpu().numpy()
        if job.eval == "linearized":
            scores = linearized_scores(data, subsets, weights)
        else:
            scores = network_scores(config, subsets, weights, job.eval, device, job.data_dir, not job.no_progress)
        return scores, lambda: estimate_distances(config, weights, job.batch_size), int((~fit.converged).sum())

    return estimate_regression


def counted_preparation(job, folder: Path, config: dict, num_tasks: int, needed, device, splits, solver: str, built, shared):
    """(FLOPs of :func:`base_estimator`'s per-task work, an estimator to count the per-subset fits on). The exact step's
    products are counted on a sample of tasks and scaled (:func:`gradtag.exact_step.preparation_flops`, with the
    network and data of the :class:`ExactStep` ``shared`` holds), and ``built``, the timed estimator, counts the fits;
    a regression is rebuilt under the counter (its preparation is cheap)."""
    if solver == "exact-step":
        exact = shared[str(folder)]
        return preparation_flops(exact.model, exact.dataset, needed, exact.balanced, exact.device, exact.splits), built
    with count_flops() as preparation:
        estimator = base_estimator(job, folder, config, num_tasks, needed, device, splits, solver)
    return preparation.total, estimator


def load_base(config: dict, device, data_dir=None):
    """(dataset, θ*) of a step-2 folder's checkpoint, the dataset rebuilt from the checkpoint's own settings."""
    checkpoint = Path(config["checkpoint"])
    checkpoint_config = read_config(checkpoint, "checkpoint")
    dataset = load_dataset(config["dataset"], data_dir or checkpoint_config["args"].get("data_dir"), **config["dataset_options"])
    if dataset.domain != "graph":
        raise UsageError(
            f"{checkpoint} is a {dataset.domain} model: --solver exact-step and --eval reconstructed/second-order need the "
            "graph network; use the default newton-cg solver with --eval linearized"
        )
    model, _ = load_checkpoint(checkpoint, device, dataset)
    return dataset, model


def estimate_subsets(
    job, folders: list[Path], configs: list[dict], num_tasks: int, subsets, ids: list[int], device, shared: dict
):
    """Estimate ``subsets`` (global ids ``ids``) on every base: the averaged rows (``averaged_rows``), the wall and CPU
    seconds (without the FLOP count's second pass) and the FLOPs (counted on the first batch, scaled to all). Work
    ``shared`` with the calibration (:func:`base_estimator`) is neither timed nor counted again here."""
    needed = sorted({task for subset in subsets for task in subset})
    start, cpu_start = time.perf_counter(), time.process_time()
    per_base, distance_fns, total_flops, counting_seconds, counting_cpu = [], [], 0, 0.0, 0.0
    for folder, config in zip(folders, configs, strict=True):
        reused = job.solver == "exact-step" and str(folder) in shared  # built, timed and counted by the calibration
        estimator = base_estimator(job, folder, config, num_tasks, needed, device, ("val", "test"), job.solver, shared)
        scores, distance_fn, unconverged = estimator(subsets, job.l2)
        per_base.append(scores)
        distance_fns.append(distance_fn)
        if job.count_flops:  # a second, untimed pass (the counter slows small ops several-fold), on one batch only
            counting_start, counting_cpu_start = time.perf_counter(), time.process_time()
            sample = subsets[: job.batch_size]
            prepared = 0  # the per-task work (none when the calibration's is reused)
            if not reused:
                splits = ("val", "test")
                prepared, estimator = counted_preparation(
                    job, folder, config, num_tasks, needed, device, splits, job.solver, estimator, shared
                )
            with count_flops() as fitting:  # the per-subset work of the first batch, scaled to every subset
                estimator(sample, job.l2)
            total_flops += prepared + round(fitting.total * len(subsets) / len(sample))
            counting_seconds += time.perf_counter() - counting_start
            counting_cpu += time.process_time() - counting_cpu_start
        if unconverged:
            print(f"warning: {unconverged} of {len(subsets)} regressions did not converge in {folder}")
    seconds = time.perf_counter() - start - counting_seconds
    cpu_seconds = time.process_time() - cpu_start - counting_cpu
    # untimed diagnostic: how far each estimate moves θ*, averaged over the bases
    distances = np.mean([distance_fn() for distance_fn in distance_fns], axis=0)
    return averaged_rows(per_base, subsets, distances, ids=ids), seconds, cpu_seconds, total_flops


def run(job: EstimateJob) -> None:
    """Estimate what ``job`` asks for (see the module docstring)."""
    check_job(job)
    use_threads(job.threads)
    device = resolve_device(job.device)
    folders = [Path(folder) for folder in job.gradients]
    configs = check_folders(folders)
    for config in configs:  # before anything is written: --strict refuses a degenerate θ*
        verdict = base_verdict(config["checkpoint"], job.strict)
        if verdict:
            print(verdict, file=sys.stderr)
    num_tasks = len(configs[0]["task_names"])
    all_subsets = read_subsets(job.subsets_file, num_tasks)
    # a shard owns whole regression batches, so each subset is fitted in the same batch as in an unsharded run
    owned = shard_indices(len(all_subsets), job.num_shards, job.shard_id, block=job.batch_size)
    subsets = [all_subsets[index] for index in owned]
    if job.affinity == "additive" and is_pairwise(all_subsets):
        raise UsageError(
            f"--affinity additive models subsets of ≥ 3 tasks; every subset in {job.subsets_file} is a pair (the pairwise "
            "T is written): drop --affinity additive"
        )
    calibration, shared = None, {}  # the exact step's products, built once for the calibration and the estimate
    if job.calibrate_with:
        needed = sorted({task for subset in subsets for task in subset})
        solver, l2, calibration = calibrate_l2(job, folders, configs, num_tasks, device, shared, needed)
        job = dataclasses.replace(job, solver=solver, l2=l2)
        rhos = ", ".join(f"{setting}: {rho:.3f}" for setting, rho in calibration["rho_by_setting"].items())
        print(
            f"calibrated λ on {calibration['subsets']} trained subsets ({job.score}; per-task ρ by solver and λ: {rhos}): "
            f"{job.solver}, λ = {job.l2:g}, held-out ρ {calibration['held_out_rho']:.3f}"
        )
        for problem in calibration["problems"]:
            print(f"warning: calibration: {problem}", file=sys.stderr)
    if subsets:
        rows, seconds, cpu_seconds, total_flops = estimate_subsets(
            job, folders, configs, num_tasks, subsets, owned, device, shared
        )
    else:  # a shard owning no whole batch: its empty file tells the merge it is done
        rows, seconds, cpu_seconds, total_flops = [], 0.0, 0.0, 0
    dataset = configs[0]["dataset"]
    name = job.name or Path(job.subsets_file).stem
    results_dir = Path(job.results_dir)
    csv_path = results_dir / f"{name}_estimate{shard_suffix(job.num_shards, job.shard_id)}.csv"
    meta = {
        "dataset": dataset,
        "dataset_fingerprint": configs[0]["dataset_fingerprint"],
        "task_names": configs[0]["task_names"],
        "subsets_file": str(job.subsets_file),
        "subsets": [list(subset) for subset in all_subsets],
        **({"shard": {"num_shards": job.num_shards, "shard_id": job.shard_id}} if job.num_shards > 1 else {}),
        "gradients": [str(folder) for folder in folders],
        "bases": [{key: config[key] for key in ("checkpoint", "checkpoint_fingerprint", "projection")} for config in configs],
        "l2": job.l2,
        "calibration": calibration,
        "solver": job.solver,
        "eval": job.eval,
        "score": job.score,
        **({"affinity": job.affinity} if job.affinity != "mean" else {}),  # the default's sidecar as before the flag
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "flops": total_flops if job.count_flops else None,
        "flops_counted_subsets": min(len(subsets), job.batch_size) if job.count_flops else None,
        "one_off": one_off_cost(folders, configs),
        "versions": package_versions(),
    }
    with atomic_set():  # the CSV, its sidecar and (unsharded) the affinity files appear together or not at all
        write_results(csv_path, rows)
        write_json(csv_path.with_suffix(".json"), meta)
        if job.num_shards == 1:
            records = score_records(rows, job.score)
            matrices = save_affinities(results_dir / f"{name}_estimate", records, num_tasks, subsets, meta, job.affinity)
    if not subsets:
        batches = -(-len(all_subsets) // job.batch_size)
        print(
            f"shard {job.shard_id} of {job.num_shards} owns none of the {len(all_subsets)} subsets (shards own whole "
            f"--batch-size {job.batch_size} batches: {batches}); wrote an empty {csv_path} so the merge sees it done"
        )
        return
    if job.num_shards > 1:
        print(
            f"estimated shard {job.shard_id} of {job.num_shards}: {len(subsets)} of {len(all_subsets)} subsets x "
            f"{len(folders)} base model(s) in {seconds:.2f}s; wrote {csv_path} (merge the shards with merge_results.py)"
        )
        return
    print(
        f"estimated {len(subsets)} subsets x {len(folders)} base model(s) ({job.solver}, {job.eval}, λ={job.l2}) "
        f"in {seconds:.2f}s ({format_flops(total_flops if job.count_flops else None)}); wrote {csv_path} and "
        + " and ".join(map(str, matrices))
    )

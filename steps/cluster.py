"""Step 4: cluster a task-affinity matrix into groups (SDP by default; spectral and k-means to compare), or a step-1
data map (STG-MTL: fuzzy c-means or k-means on the tasks' data-map features, :mod:`gradtag.datamaps`).

:func:`run` takes a frozen :class:`ClusterJob` (``run_clustering.py --help``) and writes the groups file (the
sampled_tasks format, one group per line), its JSON summary and a heatmap ordered by group; from a data map also the
(k, n) membership matrix ``<stem>_memberships.npy`` (``train_multitask.py --task-weights``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data import read_planted_groups
from gradtag import datamaps
from gradtag.affinity import fill_uncovered
from gradtag.artifacts import UsageError, atomic_set, fingerprint, load_npz, read_json, save_npy, write_json
from gradtag.clustering import (
    METHODS,
    average_density,
    cluster,
    plot_affinity_heatmap,
    prepare_affinity,
    symmetrize,
)
from gradtag.evaluation import adjusted_rand
from gradtag.results import write_subsets
from steps.cli import job_from_flags
from steps.train import DATA_MAP_FILE, DATA_MAP_KEYS

DATA_MAP_METHODS = ("fuzzy", "kmeans")  # what clusters a data map's task features


@dataclass(frozen=True)
class ClusterJob:
    """Everything :func:`run` needs, frozen (``run_clustering.py``'s flags)."""

    affinity: str | None
    k: int
    out: str
    planted: str | None = None
    method: str | None = None  # None: sdp for an affinity, fuzzy for a data map
    data_map: str | None = None
    fuzziness: float = datamaps.FUZZINESS
    data_map_features: str = "mean"
    center: str = "rows"
    temperature: float | None = None
    rounding: str = "greedy"
    seed: int = 0
    compare_methods: bool = False
    heatmap: str | None = None
    overwrite: bool = False

    @classmethod
    def from_args(cls, args) -> ClusterJob:
        return job_from_flags(cls, args)


def load_affinity(path: str | Path) -> np.ndarray:
    """Load and check the affinity matrix: a finite, real, square 2-D ``.npy`` array; returns it as float64."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"affinity file {path} does not exist; run step 3 (task affinity) first")
    try:
        T = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UsageError(f"{path} is not a loadable .npy array ({type(err).__name__}); pass the .npy file step 3 wrote") from None
    if not isinstance(T, np.ndarray) or T.dtype.kind not in "biuf":
        raise UsageError(f"{path} holds {getattr(T, 'dtype', type(T))} data; the affinity must be a real numeric array")
    if T.ndim != 2 or T.shape[0] != T.shape[1] or T.shape[0] == 0:
        raise UsageError(f"{path} has shape {T.shape}; the affinity must be a non-empty square (n, n) matrix")
    T = T.astype(np.float64)
    bad = np.argwhere(np.isinf(T))
    if bad.size:
        i, j = bad[0]
        raise UsageError(f"{path} has {len(bad)} infinite entries (first at [{i}, {j}] = {T[i, j]}); fix step 3's output")
    try:
        T, filled = fill_uncovered(T)
    except UsageError as err:
        raise UsageError(f"{path}: {err}; add subsets holding every task") from None
    if filled:  # step 3's rule for pairs no subset covers: NaN in T, given its row's mean here and in compare
        print(f"note: {filled} entries of {path} are NaN (pairs no subset covers); clustering gives them their row's mean")
    return T


def memberships_path(out: str | Path) -> Path:
    """Where a data-map clustering writes its (k, n) memberships: ``<out stem>_memberships.npy`` beside ``--out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_memberships.npy")


def output_paths(job, *extra: Path) -> tuple[Path, Path, Path]:
    """The groups file, its JSON sidecar and the heatmap, refusing collisions and (without --overwrite) existing files;
    ``extra`` paths (the memberships) are checked alike."""
    out = Path(job.out)
    summary = out.with_suffix(".json")
    heatmap = Path(job.heatmap) if job.heatmap else out.with_suffix(".png")
    paths = (out, summary, heatmap, *extra)
    if len({path.resolve() for path in paths}) != len(paths):
        raise UsageError(f"--out {out} collides with its summary {summary} or heatmap {heatmap}; use a .txt name for --out")
    for path in paths:
        if path.is_dir():
            raise UsageError(f"{path} is a directory; --out and --heatmap name files")
        if path.exists() and not job.overwrite:
            raise UsageError(f"{path} already exists; pass --overwrite to replace it")
    return out, summary, heatmap


def run(job: ClusterJob) -> tuple[dict, dict]:
    """Cluster what ``job`` names and write the groups file, its JSON summary and the heatmap. Returns the summary
    and, per method run, its figures."""
    if (job.affinity is None) == (job.data_map is None):
        raise UsageError("pass exactly one of --affinity (a step-3 matrix) and --data-map (a step-1 data map)")
    if job.data_map is not None:
        return run_data_map(job)
    if job.method is not None and job.method not in METHODS:
        raise UsageError(f"--method {job.method} clusters a data map; with --affinity choose from {', '.join(sorted(METHODS))}")
    job = dataclasses.replace(job, method=job.method or "sdp")
    T = load_affinity(job.affinity)
    n = T.shape[0]
    if not 1 <= job.k <= n:
        raise UsageError(f"--k {job.k} is out of range; it must be between 1 and the number of tasks n={n}")
    out, summary_path, heatmap_path = output_paths(job)
    planted = read_planted_groups(job.planted, n) if job.planted else None

    S = prepare_affinity(T, center=job.center, temperature=job.temperature)
    methods = [job.method] + ([m for m in sorted(METHODS) if m != job.method] if job.compare_methods else [])
    results = {method: cluster(S, job.k, method=method, seed=job.seed, rounding=job.rounding) for method in methods}
    main_result = results[job.method]

    comparison = {}
    for method, result in results.items():
        comparison[method] = {
            "objective": result.objective,
            "objective_input": average_density(symmetrize(T), result.groups),
            "seconds": round(result.seconds, 4),
            "n_groups": len(result.groups),
            "groups": result.groups,
        }
        if planted is not None:
            comparison[method]["ari"] = adjusted_rand(result.groups, planted, n)

    lam_text = f"{main_result.lam:.6g}" if main_result.lam is not None else "none"
    transform = f"center={job.center} temperature={job.temperature if job.temperature is not None else 'off'}"
    header = (
        f"groups from run_clustering.py: method={job.method} k={job.k} lambda={lam_text} exact_k={main_result.exact} "
        f"{transform}\naffinity={job.affinity}"
    )
    summary = {
        "affinity": str(job.affinity),
        "affinity_fingerprint": fingerprint(T),
        "n": n,
        "k": job.k,
        "method": job.method,
        "center": job.center,
        "temperature": job.temperature,
        "rounding": job.rounding,
        "seed": job.seed,
        "groups": main_result.groups,
        "n_groups": len(main_result.groups),
        "exact_k": main_result.exact,
        "lambda": main_result.lam,
        "message": main_result.message,
        "repaired": main_result.repaired,
        "singletons": [group[0] for group in main_result.groups if len(group) == 1] if 1 < job.k < n else [],
        "structured": main_result.structured,
        "objective": main_result.objective,
        "objective_note": "objective: Eq. 7 average density of the clustered (centred/exp'd) matrix; "
        "objective_input: of the symmetrised input",
        "solve_seconds": round(main_result.seconds, 4),
        "methods": comparison,
        "groups_file": str(out),
        "heatmap": str(heatmap_path),
    }
    if planted is not None:
        summary["planted"] = str(job.planted)
        summary["ari"] = comparison[job.method]["ari"]

    with atomic_set():  # the groups file, its summary and the heatmap appear together or not at all
        write_subsets(out, main_result.groups, header=header)
        write_json(summary_path, summary)
        plot_affinity_heatmap(
            S,
            main_result.groups,
            heatmap_path,
            title=f"{job.method}, k={job.k}, {transform}, Eq. 7 = {main_result.objective:.4g}",
        )
    return summary, comparison


# ---------------------------------------------------------------------------------------------------------- data maps
def load_data_map(path: str | Path) -> tuple[dict[str, np.ndarray], Path]:
    """A step-1 data map: ``data_map.npz`` in the checkpoint folder ``path`` (or the file itself), checked: a 2-D
    (epochs >= 1, pairs) trace of probabilities in [0, 1], one task id per pair, every task 0..n−1 holding a pair.
    Returns its arrays and the file's path."""
    path = Path(path)
    file = path / DATA_MAP_FILE if path.is_dir() else path
    rerun = "train that checkpoint with train_multitask.py --record-data-map (step 1), or pass its folder"
    arrays = load_npz(file, DATA_MAP_KEYS, rerun)
    trace, tasks, n = arrays["probabilities"], arrays["tasks"], arrays["num_tasks"]
    if trace.dtype.kind != "f" or trace.ndim != 2 or trace.shape[0] == 0 or tasks.shape != (trace.shape[1],):
        raise UsageError(f"{file} holds a {trace.dtype} trace of shape {trace.shape} for {tasks.shape} pairs; {rerun}")
    if not np.all(np.isfinite(trace)) or trace.min() < 0 or trace.max() > 1:
        raise UsageError(f"{file} has probabilities outside [0, 1]; {rerun}")
    if tasks.dtype.kind not in "iu" or n.ndim != 0 or sorted(set(tasks.tolist())) != list(range(int(n))):
        raise UsageError(f"{file} does not cover every task 0..{int(n) - 1} of its dataset; record it with --tasks all")
    return arrays, file


def cluster_data_map(features: np.ndarray, k: int, method: str, fuzziness: float, seed: int) -> datamaps.FuzzyClustering:
    """``method`` (fuzzy or kmeans) on the task features (n, f); see :mod:`gradtag.datamaps`."""
    if method == "fuzzy":
        return datamaps.fuzzy_memberships(features, k, fuzziness=fuzziness, seed=seed)
    return datamaps.kmeans_memberships(features, k, seed=seed)


def run_data_map(job: ClusterJob) -> tuple[dict, dict]:
    """STG-MTL's grouping of a data map: the groups file (argmax memberships, no group empty), its JSON summary, the
    memberships (k, n) float64 ``<stem>_memberships.npy`` and a heatmap of the co-membership UᵀU (n, n)."""
    method = job.method or "fuzzy"
    if method not in DATA_MAP_METHODS:
        raise UsageError(f"--method {method} clusters an affinity; with --data-map choose from {', '.join(DATA_MAP_METHODS)}")
    if not job.fuzziness > 1:
        raise UsageError(f"--fuzziness {job.fuzziness}: fuzzy c-means needs m > 1 (STG-MTL: {datamaps.FUZZINESS})")
    arrays, file = load_data_map(job.data_map)
    n = int(arrays["num_tasks"])
    if not 1 <= job.k <= n:
        raise UsageError(f"--k {job.k} is out of range; it must be between 1 and the number of tasks n={n}")
    members_path = memberships_path(job.out)
    out, summary_path, heatmap_path = output_paths(job, members_path)
    planted = read_planted_groups(job.planted, n) if job.planted else None

    features = datamaps.task_features(arrays["probabilities"], arrays["tasks"], n, job.data_map_features)
    methods = [method] + ([m for m in DATA_MAP_METHODS if m != method] if job.compare_methods else [])
    comparison, results = {}, {}
    for name in methods:
        start = time.perf_counter()
        result = cluster_data_map(features, job.k, name, job.fuzziness, job.seed)
        groups = datamaps.hard_groups(result.memberships)
        results[name] = (result, groups)
        comparison[name] = {
            "objective": result.objective,
            "seconds": round(time.perf_counter() - start, 4),
            "n_groups": len(groups),
            "groups": groups,
        }
        if planted is not None:
            comparison[name]["ari"] = adjusted_rand(groups, planted, n)
    result, groups = results[method]
    checkpoint = file.parent
    config_path = checkpoint / "config.json"
    task_names = read_json(config_path).get("task_names") if config_path.is_file() else None
    settings = f"fuzziness={job.fuzziness}" if method == "fuzzy" else "hard"
    header = (
        f"groups from run_clustering.py: data map, method={method} k={job.k} {settings} features={job.data_map_features}\n"
        f"data_map={file}"
    )
    summary = {
        "affinity": None,
        "data_map": str(file),
        "data_map_fingerprint": fingerprint(arrays["probabilities"], arrays["tasks"], arrays["samples"]),
        "epochs": int(arrays["probabilities"].shape[0]),
        "n": n,
        "k": job.k,
        "method": method,
        "fuzziness": job.fuzziness if method == "fuzzy" else None,
        "features": job.data_map_features,
        "task_features": features.tolist(),
        "seed": job.seed,
        "groups": groups,
        "n_groups": len(groups),
        "exact_k": len(groups) == job.k,
        "lambda": None,
        "message": "",
        "objective": result.objective,
        "objective_note": "fuzzy: J_m = sum of u^m times squared distance to the centres; kmeans: inertia",
        "solve_seconds": comparison[method]["seconds"],
        "methods": comparison,
        "groups_file": str(out),
        "memberships_file": str(members_path),
        "heatmap": str(heatmap_path),
    }
    if planted is not None:
        summary["planted"] = str(job.planted)
        summary["ari"] = comparison[method]["ari"]

    with atomic_set():  # the groups, memberships, summary and heatmap appear together or not at all
        write_subsets(out, groups, header=header)
        save_npy(members_path, result.memberships)
        write_json(summary_path, summary)
        # the existing (n, n) heatmap on the co-membership UᵀU: entry (i, j) = Σ_g u_gi u_gj, 1 for two tasks sharing a group
        plot_affinity_heatmap(
            result.memberships.T @ result.memberships,
            groups,
            heatmap_path,
            task_names=task_names,
            title=f"data map, {method}, k={job.k}, {settings}: co-membership UᵀU",
        )
    return summary, comparison

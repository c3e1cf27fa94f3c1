"""Step 4: cluster a task-affinity matrix into groups (SDP by default; spectral and k-means to compare).

:func:`run` takes a frozen :class:`ClusterJob` (``run_clustering.py --help``) and writes the groups file (the
sampled_tasks format, one group per line), its JSON summary and a heatmap ordered by group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data import read_planted_groups
from gradtag.affinity import fill_uncovered
from gradtag.artifacts import UsageError, fingerprint, write_json
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


@dataclass(frozen=True)
class ClusterJob:
    """Everything :func:`run` needs, frozen (``run_clustering.py``'s flags)."""

    affinity: str
    k: int
    out: str
    planted: str | None = None
    method: str = "sdp"
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


def output_paths(job) -> tuple[Path, Path, Path]:
    """The groups file, its JSON sidecar and the heatmap, refusing collisions and (without --overwrite) existing files."""
    out = Path(job.out)
    summary = out.with_suffix(".json")
    heatmap = Path(job.heatmap) if job.heatmap else out.with_suffix(".png")
    if len({out.resolve(), summary.resolve(), heatmap.resolve()}) != 3:
        raise UsageError(f"--out {out} collides with its summary {summary} or heatmap {heatmap}; use a .txt name for --out")
    for path in (out, summary, heatmap):
        if path.is_dir():
            raise UsageError(f"{path} is a directory; --out and --heatmap name files")
        if path.exists() and not job.overwrite:
            raise UsageError(f"{path} already exists; pass --overwrite to replace it")
    return out, summary, heatmap


def run(job: ClusterJob) -> tuple[dict, dict]:
    """Cluster what ``job`` names and write the groups file, its JSON summary and the heatmap. Returns the summary
    and, per method run, its figures."""
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

    write_subsets(out, main_result.groups, header=header)
    write_json(summary_path, summary)
    plot_affinity_heatmap(
        S, main_result.groups, heatmap_path, title=f"{job.method}, k={job.k}, {transform}, Eq. 7 = {main_result.objective:.4g}"
    )
    return summary, comparison

"""Step 4: group tasks by their affinity matrix (paper Alg. 2 steps 5-6, Sec. 4.2, Eq. 7).

Convention: ``T`` is an ``(n, n)`` float64 matrix, ``T[i, j]`` the affinity of task ``i`` to task ``j``, higher = more
affinity (step 3 stores negative losses, so no sign flip happens here). A grouping is a list of groups, each a sorted
list of 0-based task indices, groups ordered by their smallest task; every task is in exactly one group.

The SDP relaxes the average-density objective (Eq. 7). For a partition into ``k`` groups with indicator vectors
``v_1..v_k`` the matrix ``X = sum_i v_i v_i^T / |v_i|`` satisfies ``X e = e``, ``Tr X = k``, ``X >= 0`` and ``X`` PSD,
and ``<T, X> = sum_i v_i^T T v_i / |v_i|`` = ``k * average_density``. Dropping integrality leaves the SDP of Alg. 2
step 5, solved with SCS; the rounding of step 6 thresholds the solution ``X_hat``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradtag import affinity
from gradtag.artifacts import atomic_path

# SCS settings: with eps 1e-4 the rounding recovered planted groups at n = 20..500 (benchmarks/bench_sdp.py); n = 100
# solves in ~1-3 s and n = 500 in ~70 s / 0.8 GB on 2 cores. The iteration cap bounds the worst case (~10 min at n = 500).
SCS_EPS = 1e-4
SCS_MAX_ITERS = 10000
SCS_INTERRUPTED = -5  # SCS's status when it caught SIGINT itself (cvxpy reports it as a solver failure)
LAMBDA_GRID_SIZE = 91  # thresholds 1/n, 1.1/n, ..., 10/n
# When no grid threshold gives k groups: the group count changes only where the threshold crosses an entry of X, so
# the entries themselves are tried (at most this many, as quantiles: ~1 s at n = 500).
MAX_FINE_THRESHOLDS = 2000


# ---------------------------------------------------------------------------------------------------------- transforms
def symmetrize(T: np.ndarray) -> np.ndarray:
    """``(T + T^T) / 2`` as float64; ``T`` is ``(n, n)``. Affinity from step 3 need not be symmetric (i->j != j->i)."""
    T = np.asarray(T, dtype=np.float64)
    return (T + T.T) / 2


def row_center(T: np.ndarray, symmetric: bool = True) -> np.ndarray:
    """Subtract each row's mean (each task's level), then by default symmetrise; ``(n, n)`` -> ``(n, n)`` float64.

    Row ``i`` holds how much every task helps task ``i``; its mean ``m_i`` is task ``i``'s level (how easy it is
    overall), which would otherwise make easy tasks look alike. With ``symmetric=False`` every row has mean 0; with
    ``symmetric=True`` the result is ``S_ij = (T_ij + T_ji - m_i - m_j) / 2`` (total sum 0). Note: under the SDP
    constraint ``X e = e`` the term ``-(m_i + m_j) / 2`` adds the constant ``-sum(m)`` to ``<T, X>``, and likewise to
    every partition's Eq. 7 sum, so centring changes the SDP's grouping only when followed by :func:`exp_transform`;
    it does change spectral clustering and k-means.
    """
    centred = affinity.row_center(T)
    return symmetrize(centred) if symmetric else centred


def exp_transform(T: np.ndarray, temperature: float) -> np.ndarray:
    """``exp((T - max T) / temperature)``, ``(n, n)`` float64 in ``(0, 1]``, as in the paper's code (``exp(T / t)``).

    Subtracting ``max T`` only rescales the result by a positive constant (no overflow), which changes neither the
    SDP's maximiser nor spectral clustering's labels. Small ``temperature`` sharpens the strongest affinities.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    T = np.asarray(T, dtype=np.float64)
    return np.exp((T - T.max()) / temperature)


def prepare_affinity(T: np.ndarray, center: str = "rows", temperature: float | None = None) -> np.ndarray:
    """The matrix that is clustered: symmetrise, optionally row-centre (``center="rows"``), optionally exp-transform.

    ``T`` is ``(n, n)``; returns ``(n, n)`` float64, symmetric. ``center`` is ``"rows"`` or ``"none"``.
    """
    if center not in ("rows", "none"):
        raise ValueError(f"center must be 'rows' or 'none', got {center!r}")
    S = row_center(T) if center == "rows" else symmetrize(T)
    if temperature is not None:
        S = exp_transform(S, temperature)
    return S


# ---------------------------------------------------------------------------------------------------------- groups
def labels_to_groups(labels: Sequence[int]) -> list[list[int]]:
    """Cluster labels ``(n,)`` -> groups: sorted task lists, ordered by smallest task. Label values are irrelevant."""
    groups: dict[int, list[int]] = {}
    for task, label in enumerate(np.asarray(labels).tolist()):
        groups.setdefault(label, []).append(task)
    return sorted(groups.values(), key=lambda group: group[0])


def groups_to_labels(groups: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """Groups -> labels ``(n,)`` int64 (label = position of the group); raises ValueError unless a partition of 0..n-1."""
    if sorted(task for group in groups for task in group) != list(range(n)):
        raise ValueError(f"the groups are not a partition of tasks 0..{n - 1}: every task must be in exactly one group")
    return affinity.groups_to_labels(groups, n)


def average_density(T: np.ndarray, groups: Sequence[Sequence[int]]) -> float:
    """Eq. 7: ``(1/k) * sum_i (v_i^T T v_i) / (v_i^T v_i)`` for the indicator vectors ``v_i`` of the ``k`` groups.

    Our reading: the density of a group is the sum of ``T_uv`` over all ordered pairs ``u, v`` in it, diagonal
    included, divided by the group's size; the objective is the mean over groups. ``T`` is ``(n, n)``.
    """
    T = np.asarray(T, dtype=np.float64)
    total = 0.0
    for group in groups:
        index = np.asarray(group, dtype=np.int64)
        total += T[np.ix_(index, index)].sum() / len(index)
    return float(total / len(groups))


# ---------------------------------------------------------------------------------------------------------- SDP
def sdp_cluster(T: np.ndarray, k: int, eps: float = SCS_EPS, max_iters: int = SCS_MAX_ITERS, verbose: bool = False) -> np.ndarray:
    """Solve Alg. 2 step 5: ``max <T, X>`` s.t. ``X e = e``, ``Tr X = k``, ``X >= 0`` elementwise, ``X`` PSD.

    ``T`` is ``(n, n)``, symmetrised here; returns ``X_hat`` ``(n, n)`` float64, symmetric. Solved by SCS (memory
    grows like n^2; interior-point solvers such as Clarabel need tens of GB at n = 200). Before solving, ``T`` is
    shifted by its mean and divided by its spread: with ``X e = e`` a constant shift adds ``c * n`` to the objective
    and a positive scale multiplies it, so the maximiser is the same and SCS converges faster.
    Raises RuntimeError when SCS returns no solution, and KeyboardInterrupt when it stopped because of Ctrl-C: SCS
    catches SIGINT while it solves, so Python never sees it.
    """
    import cvxpy as cp

    S = symmetrize(T)
    n = S.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    spread = S.max() - S.min()
    S = (S - S.mean()) / (spread if spread > 0 else 1.0)
    X = cp.Variable((n, n), PSD=True)
    constraints = [cp.sum(X, axis=1) == 1, cp.trace(X) == k, X >= 0]
    problem = cp.Problem(cp.Maximize(cp.sum(cp.multiply(S, X))), constraints)
    data, chain, inverse_data = problem.get_problem_data(cp.SCS)  # problem.solve's steps, to see SCS's own status
    raw = chain.solve_via_data(problem, data, verbose=verbose, solver_opts=dict(eps_abs=eps, eps_rel=eps, max_iters=max_iters))
    if raw["info"]["status_val"] == SCS_INTERRUPTED:
        raise KeyboardInterrupt
    try:
        problem.unpack_results(raw, chain, inverse_data)
    except cp.error.SolverError:
        pass  # X stays None: reported below
    if X.value is None:
        raise RuntimeError(f"SCS found no solution of the SDP (status {problem.status}); try a larger max_iters")
    return symmetrize(X.value)


def threshold_groups(X: np.ndarray, lam: float, rounding: str = "greedy") -> list[list[int]]:
    """Tasks ``u, v`` together when ``X[u, v] >= lam`` (Alg. 2 step 6). ``X`` is ``(n, n)``; returns a partition.

    ``rounding="greedy"`` (the paper's code): take the first unassigned task ``u``; its group is ``u`` plus every
    unassigned ``v`` with ``X[u, v] >= lam``. ``rounding="components"``: connected components of the graph with an
    edge wherever ``X[u, v] >= lam`` (order-free, but a chain of weak links can merge two groups).
    """
    above = np.asarray(X) >= lam
    n = above.shape[0]
    if rounding == "components":
        from scipy.sparse.csgraph import connected_components

        _, labels = connected_components(above | above.T, directed=False)
        return labels_to_groups(labels)
    if rounding != "greedy":
        raise ValueError(f"rounding must be 'greedy' or 'components', got {rounding!r}")
    assigned = np.zeros(n, dtype=bool)
    groups = []
    for u in range(n):
        if assigned[u]:
            continue
        members = np.flatnonzero(above[u] & ~assigned)
        group = sorted({u, *members.tolist()})
        assigned[group] = True
        groups.append(group)
    return groups


@dataclass
class Rounding:
    """Outcome of :func:`round_sdp`: the groups, the threshold used, whether exactly ``k`` groups came out, and
    ``repaired``: the number of merges (positive) or splits (negative) that took the nearest threshold's groups to
    ``k`` (0 when a threshold gave them)."""

    groups: list[list[int]]
    lam: float | None
    exact: bool
    message: str
    repaired: int = 0


def _nearest_threshold(X: np.ndarray, T: np.ndarray, k: int, rounding: str, thresholds) -> tuple[tuple, float, list]:
    """Of ``thresholds``, the one whose groups are nearest ``k`` in number, then highest in Eq. 7 (then smallest)."""
    best = None
    for lam in thresholds:
        groups = threshold_groups(X, lam, rounding)
        key = (abs(len(groups) - k), -average_density(T, groups))
        if best is None or key < best[0]:
            best = (key, float(lam), groups)
    return best


def merge_to_k(T: np.ndarray, groups: list[list[int]], k: int) -> list[list[int]]:
    """Merge groups two at a time, each time the pair whose union raises Eq. 7's sum of group densities most (lowers it
    least), until ``k`` remain. ``T`` ``(n, n)`` is symmetrised; a group's density is its block's sum over its size."""
    S = symmetrize(T)
    groups = [list(group) for group in groups]
    indicator = np.zeros((S.shape[0], len(groups)))
    for column, group in enumerate(groups):
        indicator[group, column] = 1.0
    cross = indicator.T @ S @ indicator  # (G, G): block sums between groups, within on the diagonal
    sizes = indicator.sum(axis=0)
    while len(groups) > k:
        within = np.diag(cross)
        merged = (within[:, None] + within[None, :] + 2 * cross) / (sizes[:, None] + sizes[None, :])
        gain = merged - (within / sizes)[:, None] - (within / sizes)[None, :]
        gain[np.tril_indices(len(groups))] = -np.inf
        a, b = np.unravel_index(np.argmax(gain), gain.shape)
        groups[a] = sorted(groups[a] + groups[b])
        cross[a, :] += cross[b, :]
        cross[:, a] += cross[:, b]
        sizes[a] += sizes[b]
        keep = np.arange(len(groups)) != b
        groups.pop(b)
        cross, sizes = cross[np.ix_(keep, keep)], sizes[keep]
    return sorted(groups, key=lambda group: group[0])


def _bisect(S: np.ndarray, group: list[int]) -> tuple[list[int], list[int]]:
    """Split ``group`` in two by the sign of the leading eigenvector of its centred block of ``S`` (the tasks that
    agree with each other most end up together); when the signs agree, the least attached task leaves alone."""
    block = S[np.ix_(group, group)]
    _, vectors = np.linalg.eigh(block - block.mean())
    side = vectors[:, -1] >= 0
    if side.all() or not side.any():
        side = np.ones(len(group), dtype=bool)
        side[np.argmin(block.sum(axis=1))] = False
    members = np.asarray(group)
    return members[side].tolist(), members[~side].tolist()


def split_to_k(T: np.ndarray, groups: list[list[int]], k: int) -> list[list[int]]:
    """Split groups one at a time (:func:`_bisect`), each time the one whose split raises Eq. 7's sum of group densities
    most, until ``k`` groups exist (``k`` at most the number of tasks)."""
    S = symmetrize(T)
    groups = [list(group) for group in groups]

    def density(group):
        return S[np.ix_(group, group)].sum() / len(group)

    def gain(option):
        index, (left, right) = option
        return density(left) + density(right) - density(groups[index])

    while len(groups) < k:
        options = [(index, _bisect(S, group)) for index, group in enumerate(groups) if len(group) > 1]
        index, (left, right) = max(options, key=gain)
        groups[index : index + 1] = [left, right]
    return sorted((sorted(group) for group in groups), key=lambda group: group[0])


def round_sdp(X: np.ndarray, T: np.ndarray, k: int, rounding: str = "greedy", grid_size: int = LAMBDA_GRID_SIZE) -> Rounding:
    """Exactly ``k`` groups from the SDP solution ``X`` ``(n, n)``: a threshold ``lam`` (Alg. 2 step 6), else a repair.

    Thresholds on a linear grid over ``[1/n, 10/n]`` first, then (if none gives ``k``) the entries of ``X`` themselves,
    where the group count changes (at most ``MAX_FINE_THRESHOLDS``). ``T`` ``(n, n)``, the matrix clustered, chooses
    among thresholds: of those giving ``k`` groups, the highest :func:`average_density` (then the smallest ``lam``).
    When no threshold gives ``k``, the nearest count's groups are merged (:func:`merge_to_k`) or split
    (:func:`split_to_k`) by Eq. 7 until ``k`` remain; ``repaired`` and ``message`` say so. For an exact block solution
    ``X_uv = 1/|group|`` inside a group and 0 outside, so any ``lam`` in ``(0, 1/largest group]`` recovers the groups.
    ``k = 1`` and ``k = n`` admit one partition each, returned without thresholding (``lam=None``).
    """
    n = X.shape[0]
    if k in (1, n):
        groups = [list(range(n))] if k == 1 else [[task] for task in range(n)]
        return Rounding(groups=groups, lam=None, exact=True, message=f"k={k} of n={n}: the only partition, no threshold")
    best = _nearest_threshold(X, T, k, rounding, np.linspace(1 / n, 10 / n, grid_size))
    if best[0][0] != 0:
        entries = np.unique(X[np.triu_indices(n, 1)])
        entries = entries[entries > 0]
        if len(entries) > MAX_FINE_THRESHOLDS:
            entries = np.unique(np.quantile(entries, np.linspace(0, 1, MAX_FINE_THRESHOLDS)))
        best = min(best, _nearest_threshold(X, T, k, rounding, entries), key=lambda candidate: candidate[0])
    (miss, _), lam, groups = best
    if miss == 0:
        return Rounding(groups=groups, lam=lam, exact=True, message=f"exactly {k} groups at lambda={lam:.4g}")
    nearest = len(groups)
    repaired = merge_to_k(T, groups, k) if nearest > k else split_to_k(T, groups, k)
    how = f"merged {nearest - k} pair(s)" if nearest > k else f"split {k - nearest} group(s)"
    message = f"no threshold gives exactly {k} groups (nearest: {nearest} at lambda={lam:.4g}); {how} by Eq. 7 to reach {k}"
    return Rounding(groups=repaired, lam=lam, exact=True, message=message, repaired=nearest - k)


# ---------------------------------------------------------------------------------------------------------- baselines
def nonnegative_affinity(T: np.ndarray) -> np.ndarray:
    """Symmetrised ``T`` shifted by ``-min(T)`` when it has a negative entry, so that the smallest affinity is 0.

    A constant shift keeps the order of all affinities; it is what makes a centred or negative-loss matrix a valid
    graph for spectral clustering (pass an exp-transformed ``T`` to use the paper's ``exp(T)`` instead).
    """
    S = symmetrize(T)
    return S - S.min() if S.min() < 0 else S


def spectral_cluster(T: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> list[list[int]]:
    """sklearn ``SpectralClustering(affinity="precomputed")`` on :func:`nonnegative_affinity` of ``T`` ``(n, n)``.

    sklearn ignores the diagonal of a precomputed affinity (graph Laplacian), so self-affinity plays no role here.
    """
    from sklearn.cluster import SpectralClustering

    model = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed, n_init=n_init)
    return labels_to_groups(model.fit_predict(nonnegative_affinity(T)))


def kmeans_cluster(T: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> list[list[int]]:
    """sklearn ``KMeans`` on the rows of symmetrised ``T`` ``(n, n)``: task ``i`` is the point ``T[i]`` in R^n."""
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=k, random_state=seed, n_init=n_init)
    return labels_to_groups(model.fit_predict(symmetrize(T)))


# ---------------------------------------------------------------------------------------------------------- no structure
def has_no_structure(T: np.ndarray) -> bool:
    """Whether ``T`` ``(n, n)`` ranks no grouping above another: symmetrised, its diagonal entries are all equal and
    so are its off-diagonal ones (``a I + b 11ᵀ``: a constant matrix, a (boolean) identity), so every split into ``k``
    groups has the same Eq. 7 value, for the SDP and the baselines alike. Row centring and the exp transform keep
    this form, so the raw and the prepared matrix agree. Rounding errors (1e-12 of the largest entry) are ignored."""
    S = symmetrize(T)
    n = S.shape[0]
    off = S[~np.eye(n, dtype=bool)]
    diagonal = np.diag(S)
    tolerance = 1e-12 * max(1.0, float(np.abs(S).max()))
    return n > 1 and np.ptp(off) <= tolerance and np.ptp(diagonal) <= tolerance


def consecutive_groups(n: int, k: int) -> list[list[int]]:
    """Tasks ``0..n-1`` cut in order into ``k`` groups whose sizes differ by at most one (the larger ones first)."""
    return [part.tolist() for part in np.array_split(np.arange(n), k)]


# ---------------------------------------------------------------------------------------------------------- registry
@dataclass
class Clustering:
    """One method's grouping of the matrix it was given: groups, Eq. 7 objective, seconds, and SDP rounding details;
    ``structured`` is False when the matrix had nothing to cluster (:func:`has_no_structure`), ``message`` then says
    so."""

    method: str
    groups: list[list[int]]
    objective: float
    seconds: float
    exact: bool = True
    lam: float | None = None
    message: str = ""
    structured: bool = True
    repaired: int = 0  # the SDP's: merges (> 0) or splits (< 0) that took the nearest threshold to k (round_sdp)


def _sdp(T: np.ndarray, k: int, seed: int, rounding: str) -> tuple[list[list[int]], bool, float | None, str, int]:
    result = round_sdp(sdp_cluster(T, k), T, k, rounding=rounding)
    return result.groups, result.exact, result.lam, result.message, result.repaired


def _spectral(T: np.ndarray, k: int, seed: int, rounding: str) -> tuple[list[list[int]], bool, float | None, str, int]:
    groups = spectral_cluster(T, k, seed)
    return groups, len(groups) == k, None, f"{len(groups)} groups", 0


def _kmeans(T: np.ndarray, k: int, seed: int, rounding: str) -> tuple[list[list[int]], bool, float | None, str, int]:
    groups = kmeans_cluster(T, k, seed)
    return groups, len(groups) == k, None, f"{len(groups)} groups", 0


METHODS: dict[str, Callable] = {"sdp": _sdp, "spectral": _spectral, "kmeans": _kmeans}


def cluster(T: np.ndarray, k: int, method: str = "sdp", seed: int = 0, rounding: str = "greedy") -> Clustering:
    """Group the tasks of ``T`` ``(n, n)`` (already prepared, see :func:`prepare_affinity`) into ``k`` groups by name.

    ``method`` in :data:`METHODS`; ``seed`` feeds the k-means inits of spectral and k-means (the SDP is deterministic);
    ``rounding`` is used by the SDP only. The objective is :func:`average_density` of ``T``. A ``T`` with no
    structure (:func:`has_no_structure`) and ``1 < k < n`` gets :func:`consecutive_groups`, exactly ``k`` of them,
    with ``structured=False`` and the reason in ``message``: any method would return an arbitrary split (the SDP's
    rounding, often ``n`` singletons).
    """
    if method not in METHODS:
        raise KeyError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    start = time.perf_counter()
    n = T.shape[0]
    if 1 < k < n and has_no_structure(T):
        groups = consecutive_groups(n, k)
        message = (
            f"has no structure to cluster: every pair of tasks has the same affinity, so every split into {k} groups "
            f"scores the same; wrote {k} groups of consecutive tasks (check the step that made it)"
        )
        return Clustering(
            method, groups, average_density(T, groups), time.perf_counter() - start, message=message, structured=False
        )
    groups, exact, lam, message, repaired = METHODS[method](T, k, seed, rounding)
    seconds = time.perf_counter() - start
    objective = average_density(T, groups)
    return Clustering(method, groups, objective, seconds, exact=exact, lam=lam, message=message, repaired=repaired)


# ---------------------------------------------------------------------------------------------------------- plot
def plot_affinity_heatmap(
    T: np.ndarray, groups: Sequence[Sequence[int]], path: str | Path, task_names: Sequence[str] | None = None, title: str = ""
) -> None:
    """Save a PNG heatmap of ``T`` ``(n, n)`` with tasks ordered group by group and each group's block outlined.

    Uses the Agg canvas directly (no pyplot state, no display needed); written atomically to ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    T = np.asarray(T, dtype=np.float64)
    order = [task for group in groups for task in group]
    n = len(order)
    size = min(4 + 0.18 * n, 14)  # inches
    fig = Figure(figsize=(size + 1.2, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(T[np.ix_(order, order)], cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="affinity (higher = more)")
    start = 0
    for group in groups:
        ax.add_patch(Rectangle((start - 0.5, start - 0.5), len(group), len(group), fill=False, edgecolor="red", linewidth=1.5))
        start += len(group)
    if n <= 60:
        labels = [task_names[task] if task_names is not None else str(task) for task in order]
        ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("task (ordered by group)")
    ax.set_ylabel("task (ordered by group)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)

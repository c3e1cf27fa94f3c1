"""How well an estimated score table matches a true one — metrics that do not flatter (FIDELITY §2–3).

Scores follow :mod:`gradtag.affinity`: one f(S, j) per (subset, task), higher is better, tables as mappings or
``(subset, task, score)`` records keyed by sorted subset. Task difficulty dominates pooled statistics (pooled
Spearman ≥ 0.8 and raw relative distance ≈ 0.01 even for poor estimates), so the headline numbers are *per task*:

- :func:`per_task_spearman_subsets` — for each task, Spearman over the subsets holding it, averaged over tasks;
- :func:`per_task_spearman_rows` — Spearman per row of the affinity matrix T, averaged: *partner ρ*, how well the
  estimate ranks the partners j of each task i (row i: T_ij over j ≠ i, all task i's own scores);
- :func:`per_task_spearman_columns` — the paper's orientation (App. C.2.2): Spearman per column [T_1i, …, T_ni],
  averaged; its entries are *different* tasks' own scores, so task levels rank them and it stays near 1 even for an
  estimate with no partner information — report it beside partner ρ, never instead;
- :func:`relative_distance` on row-centred T (:func:`gradtag.affinity.row_center`) beside the raw one;
- :func:`pooled_spearman` only beside them, labelled pooled;
- :func:`seed_ceiling` — the truth's own seed-to-seed per-task Spearman, the ceiling for any estimate;
- :func:`group_effect` — score change per same-group partner with per-task fixed effects (vets a planted truth);
- :func:`split_half_reliability` — T against itself across two halves of the subsets: the ceiling at this m;
- :func:`partner_effects` — per task, whether its score depends on its partners at all (F-test): a truth worth matching;
- :func:`distance_summary` — how far the models behind a table moved, ‖W − W₀‖ / ‖W₀‖ (the first-order regime).
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score

from gradtag.affinity import fill_uncovered, groups_to_labels, higher_order_affinity, row_center, score_table
from gradtag.artifacts import UsageError


class PerTaskSpearman(NamedTuple):
    """mean: Spearman averaged over the tasks used (NaN if none); per_task: {task: ρ} for those tasks;
    n_used / n_skipped: tasks with / without enough non-constant values."""

    mean: float
    per_task: dict[int, float]
    n_used: int
    n_skipped: int


class SeedCeiling(NamedTuple):
    """mean: per-task Spearman averaged over all pairs of seeds; per_pair: {(a, b): mean per-task ρ}."""

    mean: float
    per_pair: dict[tuple[int, int], float]


class GroupEffect(NamedTuple):
    """slope: change of a task's score per same-group partner in S (within-task, OLS); std_error and t_stat of the
    slope; n_records / n_tasks: (subset, task) scores and tasks used."""

    slope: float
    std_error: float
    t_stat: float
    n_records: int
    n_tasks: int


def _aligned(est, true) -> tuple[list, np.ndarray, np.ndarray]:
    """Keys common to both tables (sorted) and the two score vectors on them; UsageError if none are shared."""
    est, true = score_table(est), score_table(true)
    keys = sorted(est.keys() & true.keys())
    if not keys:
        raise UsageError("the estimated and true score tables share no (subset, task); check they use the same subsets")
    return keys, np.array([est[k] for k in keys]), np.array([true[k] for k in keys])


def _spearman_or_none(a: np.ndarray, b: np.ndarray, min_values: int) -> float | None:
    if len(a) < min_values or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def _summarise(rhos: dict[int, float | None]) -> PerTaskSpearman:
    used = {task: rho for task, rho in rhos.items() if rho is not None}
    mean = float(np.mean(list(used.values()))) if used else float("nan")
    return PerTaskSpearman(mean, used, len(used), len(rhos) - len(used))


def per_task_spearman_subsets(est: Mapping | Iterable, true: Mapping | Iterable, min_subsets: int = 3) -> PerTaskSpearman:
    """For each task j, Spearman between f_est(S, j) and f_true(S, j) over the subsets S holding j; mean over tasks.

    Only (subset, task) keys present in both tables count. A task with fewer than ``min_subsets`` subsets, or
    constant values in either table, is skipped (counted in ``n_skipped``).
    """
    keys, a, b = _aligned(est, true)
    tasks = np.array([task for _, task in keys])
    return _summarise({int(j): _spearman_or_none(a[tasks == j], b[tasks == j], min_subsets) for j in np.unique(tasks)})


def per_task_spearman_rows(T_est: np.ndarray, T_true: np.ndarray, min_entries: int = 3) -> PerTaskSpearman:
    """Partner ρ: Spearman between row i of T_est and of T_true, averaged over rows. Row i holds task i's own scores
    with each partner j, so it measures the partner effects alone (:func:`per_task_spearman_columns` is the paper's
    orientation).

    T_est, T_true: (n, n) float. The diagonal is left out: T_ii is task i alone (pairwise) or over every subset
    holding i (Eq. 1), a different quantity from its affinity to other tasks, and it would mostly rank task i's own
    level. Entries NaN in either matrix are left out; a row with fewer than ``min_entries`` entries or constant
    values is skipped.
    """
    T_est, T_true = _check_pair(T_est, T_true)
    off_diagonal = ~np.eye(len(T_est), dtype=bool)
    rhos = {}
    for i in range(len(T_est)):
        keep = off_diagonal[i] & np.isfinite(T_est[i]) & np.isfinite(T_true[i])
        rhos[i] = _spearman_or_none(T_est[i, keep], T_true[i, keep], min_entries)
    return _summarise(rhos)


def per_task_spearman_columns(T_est: np.ndarray, T_true: np.ndarray, min_entries: int = 3) -> PerTaskSpearman:
    """The paper's orientation (App. C.2.2): Spearman between column i of T_est and of T_true, [T_1i, …, T_ni] as the
    paper writes it (diagonal included), averaged over columns.

    T_est, T_true: (n, n) float. Column i's entries T_ki are the scores of different tasks k (each with partner i), so
    the tasks' own levels rank them: an estimate that knows the levels and nothing of the partners scores near 1 here
    while its partner ρ (:func:`per_task_spearman_rows`) is 0. Entries NaN in either matrix are left out; a column
    with fewer than ``min_entries`` entries or constant values is skipped.
    """
    T_est, T_true = _check_pair(T_est, T_true)
    rhos = {}
    for i in range(len(T_est)):
        keep = np.isfinite(T_est[:, i]) & np.isfinite(T_true[:, i])
        rhos[i] = _spearman_or_none(T_est[keep, i], T_true[keep, i], min_entries)
    return _summarise(rhos)


def pooled_spearman(est: Mapping | Iterable, true: Mapping | Iterable) -> float:
    """Spearman over all shared (subset, task) keys at once. Pooled: task difficulty dominates it — report it only
    beside the per-task figures."""
    _, a, b = _aligned(est, true)
    return float(spearmanr(a, b).statistic) if len(a) >= 2 else float("nan")


def _check_pair(T_est, T_true) -> tuple[np.ndarray, np.ndarray]:
    T_est, T_true = np.asarray(T_est, dtype=np.float64), np.asarray(T_true, dtype=np.float64)
    if T_est.shape != T_true.shape or T_est.ndim != 2:
        raise UsageError(f"affinity matrices must be (n, n) of one shape; got {T_est.shape} and {T_true.shape}")
    return T_est, T_true


def relative_distance(T_est: np.ndarray, T_true: np.ndarray) -> float:
    """‖T_est − T_true‖²_F / ‖T_true‖²_F over the entries finite in both; inf if T_true is zero there.

    On raw T task levels dominate (0.01–0.03 for poor estimates); pass :func:`gradtag.affinity.row_center` of both
    for the figure that reflects affinity structure.
    """
    T_est, T_true = _check_pair(T_est, T_true)
    keep = np.isfinite(T_est) & np.isfinite(T_true)
    if not keep.any():
        raise UsageError("the two affinity matrices have no finite entry in common")
    denominator = float((T_true[keep] ** 2).sum())
    numerator = float(((T_est[keep] - T_true[keep]) ** 2).sum())
    return numerator / denominator if denominator > 0 else float("inf")


def seed_ceiling(true_by_seed: Sequence[Mapping | Iterable], min_subsets: int = 3) -> SeedCeiling:
    """The truth's seed-to-seed agreement: :func:`per_task_spearman_subsets` between each pair of seeds' tables,
    averaged over pairs. true_by_seed: ≥ 2 score tables of the same subsets, one per seed."""
    tables = [score_table(table) for table in true_by_seed]
    if len(tables) < 2:
        raise UsageError(f"the seed ceiling needs scores from at least 2 seeds, got {len(tables)}")
    per_pair = {
        (a, b): per_task_spearman_subsets(tables[a], tables[b], min_subsets).mean
        for a, b in itertools.combinations(range(len(tables)), 2)
    }
    return SeedCeiling(float(np.nanmean(list(per_pair.values()))), per_pair)


def group_effect(scores: Mapping | Iterable, groups: Sequence[Sequence[int]], n: int | None = None) -> GroupEffect:
    """Slope of f(S, j) on the number of same-group partners of j in S, with per-task fixed effects.

    For each record (S, j), x = |{k ∈ S, k ≠ j, group(k) = group(j)}|. Both x and f are demeaned within task j, and
    the slope is the OLS fit of one on the other (the fixed-effects estimator); its standard error uses
    N − (tasks) − 1 degrees of freedom. A flat truth gives a slope near 0; planted structure a clearly non-zero one
    (positive when higher scores are better and partners help). Records of a task in no group are left out.
    groups: list of groups of task indices; n: number of tasks (default: largest index in scores or groups + 1).
    """
    table = score_table(scores)
    top = max([max(s) for s, _ in table] + [int(t) for g in groups for t in g]) + 1
    labels = groups_to_labels(groups, n if n is not None else top)
    grouped = {int(t) for g in groups for t in g}
    rows = [
        (task, sum(labels[k] == labels[task] for k in subset if k != task), score)
        for (subset, task), score in table.items()
        if task in grouped
    ]
    if not rows:
        raise UsageError("no scored task belongs to a group")
    tasks, x, y = (np.array(column, dtype=float) for column in zip(*rows, strict=True))
    x_w, y_w = x.copy(), y.copy()
    for task in np.unique(tasks):
        mask = tasks == task
        x_w[mask] -= x[mask].mean()
        y_w[mask] -= y[mask].mean()
    n_tasks = len(np.unique(tasks))
    sxx = float(x_w @ x_w)
    if sxx == 0:
        raise UsageError("the number of same-group partners never varies within a task; the slope is undefined")
    slope = float(x_w @ y_w) / sxx
    dof = len(rows) - n_tasks - 1
    residual = y_w - slope * x_w
    std_error = float(np.sqrt(residual @ residual / dof / sxx)) if dof > 0 else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        t_stat = float(np.divide(slope, std_error))  # ±inf for an exact fit, NaN without residual degrees of freedom
    return GroupEffect(slope, std_error, t_stat, len(rows), n_tasks)


def adjusted_rand(groups_a: Sequence[Sequence[int]], groups_b: Sequence[Sequence[int]], n: int) -> float:
    """Adjusted Rand index between two groupings of n tasks, each a list of groups (tasks in no group: singletons)."""
    return float(adjusted_rand_score(groups_to_labels(groups_a, n), groups_to_labels(groups_b, n)))


def comparison_report(est: Mapping | Iterable, true: Mapping | Iterable, n: int | None = None) -> dict:
    """All estimate-versus-truth figures for two score tables, as a JSON-ready dict.

    T is the higher-order affinity (Eq. 1) of each table restricted to the shared keys. Keys: ``n_scores``,
    ``spearman_per_task_subsets`` (+ ``_tasks_used``), ``spearman_per_task_rows`` (partner ρ, + ``_tasks_used``),
    ``spearman_per_task_columns`` (the paper's orientation, + ``_tasks_used``), ``spearman_pooled``,
    ``relative_distance_raw``, ``relative_distance_row_centered``.
    """
    keys, a, b = _aligned(est, true)
    est_table, true_table = dict(zip(keys, a, strict=True)), dict(zip(keys, b, strict=True))
    if n is None:
        n = max(max(subset) for subset, _ in keys) + 1
    T_est, _ = higher_order_affinity(est_table, n)
    T_true, _ = higher_order_affinity(true_table, n)
    subsets = per_task_spearman_subsets(est_table, true_table)
    rows = per_task_spearman_rows(T_est, T_true)
    columns = per_task_spearman_columns(T_est, T_true)
    return {
        "n_scores": len(keys),
        "spearman_per_task_subsets": subsets.mean,
        "spearman_per_task_subsets_tasks_used": subsets.n_used,
        "spearman_per_task_rows": rows.mean,
        "spearman_per_task_rows_tasks_used": rows.n_used,
        "spearman_per_task_columns": columns.mean,
        "spearman_per_task_columns_tasks_used": columns.n_used,
        "spearman_pooled": pooled_spearman(est_table, true_table),
        "relative_distance_raw": relative_distance(T_est, T_true),
        "relative_distance_row_centered": relative_distance(row_center(T_est), row_center(T_true)),
    }


def rows_spearman(
    est: Mapping | Iterable, true: Mapping | Iterable, n: int, affinity_fn=higher_order_affinity
) -> PerTaskSpearman:
    """:func:`per_task_spearman_rows` between the T of two score tables, each built by ``affinity_fn`` ((table, n) ->
    (T, counts); default Eq. 1) on the (subset, task) keys both tables hold."""
    keys, a, b = _aligned(est, true)
    T_est = affinity_fn(dict(zip(keys, a, strict=True)), n)[0]
    T_true = affinity_fn(dict(zip(keys, b, strict=True)), n)[0]
    return per_task_spearman_rows(T_est, T_true)


class SplitHalf(NamedTuple):
    """Agreement of T with itself across disjoint halves of the subsets (FIDELITY §6: a noisy T cannot be matched).

    rows: per-task Spearman over rows of T between the two halves' matrices, averaged over random splits;
    rows_full: the same corrected to all m subsets by Spearman–Brown, 2r / (1 + r) — the reliability of the full T;
    ari: ARI between the clusterings of the two halves (None without k); splits: random splits averaged.
    """

    rows: float
    rows_full: float
    ari: float | None
    splits: int


def split_half_reliability(
    scores: Mapping | Iterable, n: int, splits: int = 5, seed: int = 0, cluster_fn=None, affinity_fn=higher_order_affinity
) -> SplitHalf:
    """Split the subsets into two random disjoint halves, build the higher-order T of each, and compare them.

    scores: a score table over subsets of size ≥ 3 (pairwise tables have one subset per entry: no halves to compare).
    cluster_fn: optional ``T (n, n) -> groups`` (e.g. the SDP at the report's k) for the ARI between halves.
    affinity_fn: ``(table, n) -> (T, counts)``, the definition of T (default Eq. 1; one of
    :data:`gradtag.affinity.DEFINITIONS`).
    For a deterministic truth (fine-tuned θ*) this is the only measure of how much T depends on which subsets were
    sampled; it bounds what any estimate can reach against it at the same m.
    """
    table = score_table(scores)
    subsets = sorted({subset for subset, _ in table})
    rng = np.random.default_rng(seed)
    rhos, aris = [], []
    for _ in range(splits):
        first = {subsets[i] for i in rng.permutation(len(subsets))[: len(subsets) // 2]}
        halves = [{key: value for key, value in table.items() if (key[0] in first) == side} for side in (True, False)]
        matrices = [affinity_fn(half, n)[0] for half in halves]
        rho = per_task_spearman_rows(*matrices).mean
        if np.isfinite(rho):
            rhos.append(rho)
        if cluster_fn is not None:
            groups = [cluster_fn(fill_uncovered(matrix)[0]) for matrix in matrices]
            aris.append(adjusted_rand(groups[0], groups[1], n))
    rows = float(np.mean(rhos)) if rhos else float("nan")
    full = 2 * rows / (1 + rows) if np.isfinite(rows) and rows > -1 else float("nan")
    return SplitHalf(rows, full, float(np.mean(aris)) if aris else None, splits)


class PartnerEffects(NamedTuple):
    """Per task j: whether an additive partner model f(S, j) = a_j + Σ_{k∈S, k≠j} b_jk beats a_j alone.

    p_values: {task: p} for the tasks tested; share_significant: share of those with p < alpha; n_tested /
    n_untested: tasks with / without a test (a task needs at least ``MIN_PARTNER_TEST_SUBSETS`` subsets and two
    distinct partner sets); n_permutation: tested tasks with fewer subsets than partners + 2, tested by permutation
    instead of the F-test; alpha: the level used.
    """

    p_values: dict[int, float]
    share_significant: float
    n_tested: int
    n_untested: int
    alpha: float
    n_permutation: int = 0


# Below this many subsets a task's partner test has too few scores to permute (6! = 720 orderings at the least).
MIN_PARTNER_TEST_SUBSETS = 6
PARTNER_PERMUTATIONS = 199  # p resolves to 1 / 200: enough for alpha = 0.05
PARTNER_RIDGE = 1.0  # the permutation test's ridge on 0/1 partner indicators (one subset's worth of evidence)


def _ridge_loo_error(design: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """Leave-one-out squared error of a ridge regression (intercept unpenalised) of each column of ``y``.

    design: (m, p) partner indicators; y: (m, P) responses. Returns (P,) Σ_i (y_i − ŷ_{-i})². Kernel form: the hat
    matrix of the centred design is K (K + λI)⁻¹ with K = X_c X_cᵀ (m × m), so its cost does not grow with p."""
    centred = design - design.mean(axis=0)
    kernel = centred @ centred.T
    hat = kernel @ np.linalg.inv(kernel + l2 * np.eye(len(y)))
    hat += 1.0 / len(y)  # the intercept's share of the hat matrix
    residuals = (np.eye(len(y)) - hat) @ y
    return ((residuals / (1.0 - np.diag(hat))[:, None]) ** 2).sum(axis=0)


def partner_effects(scores: Mapping | Iterable, n: int, alpha: float = 0.05, seed: int = 0) -> PartnerEffects:
    """Whether each task's score depends on which partners share its subset, beyond what chance would give.

    For task j, regress f(S, j) over the subsets S ∋ j on indicators of the partners k ≠ j present (one coefficient
    each, plus an intercept). With more subsets than partners + 1, F-test all partner coefficients against zero. With
    fewer (100 tasks, a few dozen subsets each), the F-test has no degrees of freedom left, so the test is a permutation
    one: the leave-one-out error of a ridge fit (λ = ``PARTNER_RIDGE``) against the same error with the scores shuffled
    over j's subsets (``PARTNER_PERMUTATIONS`` shuffles, ``seed``) — exchangeable exactly when partners do not matter.
    A truth "has a partner effect" for j when p < alpha: a truth so lazy that every subset gives task j the same score
    fails it, and then matching it proves nothing. A task with one partner set only, or (without the F-test) in fewer
    than ``MIN_PARTNER_TEST_SUBSETS`` subsets or with every partner in one subset (pairwise files), is untested.
    """
    from scipy.stats import f as f_distribution

    table = score_table(scores)
    rng = np.random.default_rng(seed)
    p_values, untested, permuted = {}, 0, 0
    for task in sorted({task for _, task in table}):
        entries = [(subset, value) for (subset, t), value in table.items() if t == task]
        partners = sorted({k for subset, _ in entries for k in subset if k != task})
        column = {k: c for c, k in enumerate(partners)}
        design = np.zeros((len(entries), len(partners) + 1))
        design[:, -1] = 1.0
        for row, (subset, _) in enumerate(entries):
            for k in subset:
                if k != task:
                    design[row, column[k]] = 1.0
        y = np.array([value for _, value in entries])
        rank = np.linalg.matrix_rank(design)
        dof = len(y) - rank
        seen_twice = design[:, :-1].sum(axis=0).max() >= 2  # else each partner has one score: nothing to compare
        if rank < 2 or (dof < 1 and (len(y) < MIN_PARTNER_TEST_SUBSETS or not seen_twice)):
            untested += 1
            continue
        rss_null = float(((y - y.mean()) ** 2).sum())
        if rss_null == 0:
            p_values[task] = 1.0
            continue
        if dof < 1:
            shuffled = np.stack([y, *(rng.permutation(y) for _ in range(PARTNER_PERMUTATIONS))], axis=1)
            errors = _ridge_loo_error(design[:, :-1], shuffled, PARTNER_RIDGE)
            p_values[task] = float((errors[1:] <= errors[0]).sum() + 1) / (PARTNER_PERMUTATIONS + 1)
            permuted += 1
            continue
        residual = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
        rss_full = float(residual @ residual)
        statistic = ((rss_null - rss_full) / (rank - 1)) / max(rss_full / dof, np.finfo(float).tiny)
        p_values[task] = float(f_distribution.sf(statistic, rank - 1, dof))
    share = float(np.mean([p < alpha for p in p_values.values()])) if p_values else float("nan")
    return PartnerEffects(p_values, share, len(p_values), untested, alpha, permuted)


def distance_summary(rows: Sequence[Mapping]) -> dict | None:
    """Median and 10th / 90th percentiles of the ``distance`` column over the models behind result rows (one value
    per subset and seed), or None when no row records one."""
    per_model = {(row["subset_id"], row["seed"]): row.get("distance", float("nan")) for row in rows}
    values = np.array([value for value in per_model.values() if np.isfinite(value)])
    if len(values) == 0:
        return None
    p10, median, p90 = np.percentile(values, [10, 50, 90])
    return {"median": float(median), "p10": float(p10), "p90": float(p90), "models": len(values)}


class Calibration(NamedTuple):
    """A setting chosen to match a few trained subsets (``--calibrate-with``).

    best: the value with the highest per-task Spearman on all calibration subsets; rho_by_value: {value: that ρ};
    held_out: per-task Spearman on each half of the subsets of the value chosen on the other half, averaged over the
    two halves (what the choice is worth on subsets it did not see); n_subsets: calibration subsets used.
    """

    best: Hashable
    rho_by_value: dict[Hashable, float]
    held_out: float
    n_subsets: int


MIN_CALIBRATION_SUBSETS = 4  # the held-out figure chooses on one half and scores on the other: 2 subsets each at least
# Calibration subsets per task, on average, below which the choice has too little to go on: the criterion is Spearman
# over each task's subsets (3 at least, per_task_spearman_subsets), and the held-out figure halves them. K subsets of α
# of n tasks give K·α/n per task, so K = 6·n/α (24 at n = 20, α = 5; 60 at n = 100, α = 10).
CALIBRATION_SUBSETS_PER_TASK = 6
# Held-out ρ below which the calibration found no signal: its choice is as good as a guess (measured at 100 tasks,
# m = 200: held-out −0.006 / −0.053 with λ at the grid's edge and the estimate off scale).
CALIBRATION_RHO_FLOOR = 0.2


def calibration_subsets_needed(num_tasks: int, subset_size: int) -> int:
    """Calibration subsets of ``subset_size`` tasks that give each of ``num_tasks`` tasks
    ``CALIBRATION_SUBSETS_PER_TASK`` subsets on average (and at least ``MIN_CALIBRATION_SUBSETS``)."""
    return max(MIN_CALIBRATION_SUBSETS, -(-CALIBRATION_SUBSETS_PER_TASK * num_tasks // subset_size))


def calibration_problems(result: Calibration, grids: Mapping[Hashable, Sequence[float]], subsets, num_tasks: int) -> list[str]:
    """Why a calibration's choice may be worth nothing, one phrase each (empty when none).

    result: :func:`calibrate`'s, over (solver, λ) values; grids: {solver: the λ values it tried}; subsets: the
    calibration subsets (tuples of task indices); num_tasks: n. Flags too few subsets per task (with the count
    needed, :func:`calibration_subsets_needed`), a held-out ρ below ``CALIBRATION_RHO_FLOOR`` (or undefined), and a
    chosen λ on the edge of its solver's grid (the best may lie beyond it).
    """
    problems = []
    sizes = [len(subset) for subset in subsets]
    per_task = len(subsets) * float(np.mean(sizes)) / num_tasks
    if per_task < CALIBRATION_SUBSETS_PER_TASK:
        needed = calibration_subsets_needed(num_tasks, round(float(np.mean(sizes))))
        problems.append(
            f"{len(subsets)} subsets give each task {per_task:.1f} calibration subsets on average, fewer than "
            f"{CALIBRATION_SUBSETS_PER_TASK}: train {needed} subsets for the calibration"
        )
    if not np.isfinite(result.held_out) or result.held_out < CALIBRATION_RHO_FLOOR:
        problems.append(
            f"held-out ρ {result.held_out:.3f} is below {CALIBRATION_RHO_FLOOR}: the calibration found no signal, so its "
            "choice is a guess (the truth may have no partner structure at this m; see compare_affinities.py's split-half)"
        )
    solver, l2 = result.best
    grid = sorted(grids[solver])
    if len(grid) > 1 and l2 in (grid[0], grid[-1]):
        problems.append(f"{solver}'s λ = {l2:g} is on the edge of its grid {grid[0]:g}..{grid[-1]:g}: extend --l2-grid past it")
    return problems


def calibrate(estimates_by_value: Mapping[Hashable, Mapping | Iterable], truth: Mapping | Iterable, seed: int = 0) -> Calibration:
    """Pick the setting (the regression's λ, a (solver, λ) pair) whose estimates best match a truth trained on a few subsets.

    estimates_by_value: {value: score table of the estimate made with it}, on (at least) the truth's subsets;
    truth: the trained score table. The criterion is :func:`per_task_spearman_subsets` (the headline figure); the
    held-out figure splits the calibration subsets into two random halves (``seed``), chooses on one, scores on the
    other, and averages both directions — so a choice that only fits noise shows a low held-out ρ.
    """
    truth = score_table(truth)
    estimates = {value: score_table(table) for value, table in estimates_by_value.items()}
    subsets = sorted({subset for subset, _ in truth})
    if len(subsets) < MIN_CALIBRATION_SUBSETS:
        raise UsageError(f"calibration needs at least {MIN_CALIBRATION_SUBSETS} trained subsets, got {len(subsets)}")

    def rho(value: Hashable, keep: set) -> float:
        part = {key: score for key, score in truth.items() if key[0] in keep}
        return per_task_spearman_subsets(estimates[value], part).mean

    everything = set(subsets)
    rho_by_value = {value: rho(value, everything) for value in estimates}
    order = np.random.default_rng(seed).permutation(len(subsets))
    halves = [{subsets[i] for i in order[: len(order) // 2]}, {subsets[i] for i in order[len(order) // 2 :]}]
    held_out = []
    for chosen_on, scored_on in (halves, halves[::-1]):
        fitted = {value: rho(value, chosen_on) for value in estimates}
        best_here = max(fitted, key=lambda value: -np.inf if np.isnan(fitted[value]) else fitted[value])
        held_out.append(rho(best_here, scored_on))
    best = max(rho_by_value, key=lambda value: -np.inf if np.isnan(rho_by_value[value]) else rho_by_value[value])
    return Calibration(best, rho_by_value, float(np.nanmean(held_out)), len(subsets))

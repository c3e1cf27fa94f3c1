"""Task affinity matrices from per-(subset, task) scores: pairwise, higher-order (paper Eq. 1) and additive.

A *score table* holds one score f(S, j) per subset S and task j ∈ S, estimated (step 3) or from training (truth).
Convention: **higher is better**. For a loss, pass its negative (``score = -loss``), so that T_ij large means
"task j in the subset helps task i" for every metric alike.

Subsets are keyed by their sorted tuple of task indices, so ``(2, 0)`` and ``(0, 2)`` are the same subset.
Tables are accepted as a mapping ``{(subset, task): score}`` or as an iterable of ``(subset, task, score)`` records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from gradtag.artifacts import UsageError

Key = tuple[tuple[int, ...], int]


def score_table(scores: Mapping | Iterable) -> dict[Key, float]:
    """Normalise a score table to ``{(sorted subset tuple, task): float}``.

    scores: mapping ``{(subset, task): score}`` or iterable of ``(subset, task, score)``. Raises
    :class:`UsageError` on a task not in its subset, a subset listed twice for one task, or a non-finite score
    (average seeds, or drop a diverged run, before building the table).
    """
    items = scores.items() if isinstance(scores, Mapping) else ((tuple(r[:2]), r[2]) for r in scores)
    table: dict[Key, float] = {}
    for (subset, task), score in items:
        key = (tuple(sorted(int(t) for t in subset)), int(task))
        if key[1] not in key[0]:
            raise UsageError(f"task {key[1]} has a score for subset {key[0]} that does not hold it")
        if key in table:
            raise UsageError(f"subset {key[0]} has two scores for task {key[1]}; average or deduplicate them first")
        if not np.isfinite(score):
            raise UsageError(f"subset {key[0]}, task {key[1]}: score {score} is not finite")
        table[key] = float(score)
    if not table:
        raise UsageError("the score table is empty")
    return table


def _n_tasks(table: dict[Key, float], n: int | None) -> int:
    top = max(max(subset) for subset, _ in table) + 1
    if n is None:
        return top
    if top > n:
        raise UsageError(f"scores mention task {top - 1} but only {n} tasks were given")
    return n


def pairwise_affinity(scores: Mapping | Iterable, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise affinity: T_ij = f({i, j}, i), T_ii = f({i}, i).

    scores: a score table (see :func:`score_table`); records of subsets of other sizes are ignored.
    n: number of tasks (default: largest index + 1). Returns T (n, n) float64, NaN where the pair or singleton has
    no score, and counts (n, n) int64, 1 where T is defined and 0 elsewhere.
    """
    table = score_table(scores)
    n = _n_tasks(table, n)
    T = np.full((n, n), np.nan)
    counts = np.zeros((n, n), dtype=np.int64)
    for (subset, task), score in table.items():
        if len(subset) == 1:
            T[task, task], counts[task, task] = score, 1
        elif len(subset) == 2:
            other = subset[0] if subset[1] == task else subset[1]
            T[task, other], counts[task, other] = score, 1
    return T, counts


def higher_order_affinity(scores: Mapping | Iterable, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Higher-order affinity, paper Eq. (1): T_ij = (1/n_ij) Σ_{S ∋ i, j} f(S, i).

    Row i averages task i's own score over the subsets holding both i and j; the diagonal T_ii averages it over all
    subsets holding i. T is not symmetric. scores: a score table (see :func:`score_table`); n: number of tasks
    (default: largest index + 1). Returns T (n, n) float64 and n_ij (n, n) int64, the number of scores averaged;
    where n_ij = 0 T is NaN — report those with :func:`uncovered_pairs`.
    """
    table = score_table(scores)
    n = _n_tasks(table, n)
    sums = np.zeros((n, n))
    counts = np.zeros((n, n), dtype=np.int64)
    for (subset, task), score in table.items():
        members = list(subset)
        sums[task, members] += score
        counts[task, members] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        T = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return T, counts


# λ of the additive affinity's ridge, in units of subsets (the design is 0/1, so λ does not depend on the score's
# scale). The truth's split-half rows ρ peaks at λ = 0.1–1 on DBLP-20 and the embedded default (loss and F1); 0.3 is
# within 0.02 of each peak (docs/affinity_definitions.md). λ → ∞ tends to Eq. 1 (see additive_affinity).
ADDITIVE_L2 = 0.3


def additive_affinity(scores: Mapping | Iterable, n: int | None = None, l2: float = ADDITIVE_L2) -> tuple[np.ndarray, np.ndarray]:
    """Additive affinity: partner effects b_ik by a ridge regression per task (a datamodel), as T_ik = level_i + b_ik.

    For each task i, over the subsets S holding i: f(S, i) = a_i + Σ_{k ∈ S, k ≠ i} b_ik 1[k ∈ S] + noise, fitted with
    an unpenalised intercept and penalty l2 · Σ_k b_ik² on the partners k seen with i. b_ik is what partner k adds to
    task i's score with the other partners held fixed, where Eq. 1 (:func:`higher_order_affinity`) averages over them.
    With subsets of one size the partners' indicators sum to a constant, so only the differences between b_ik are
    identifiable; the ridge then returns b_ik summing to 0 over the partners seen. As l2 → ∞, b_ik → n_ik (T_ik − T_ii)
    / l2 with Eq. 1's T and counts: the marginal means, scaled; small l2 conditions each partner on the others.

    Written in Eq. 1's format, so that :func:`row_center` and clustering treat both alike: level_i = the mean of
    f(S, i) over the subsets holding i (Eq. 1's T_ii), T_ik = level_i + b_ik for k ≠ i seen with i, T_ii = level_i
    (no partner, no effect), NaN where no subset holds both. With subsets of one size, each row of T then has mean
    level_i over its finite entries, so ``row_center(T)`` is b with a zero diagonal.

    scores: a score table (see :func:`score_table`); n: number of tasks (default: largest index + 1); l2: ridge
    strength λ ≥ 0 in units of subsets (0: the minimum-norm least-squares fit). Returns T (n, n) float64 and counts
    (n, n) int64, n_ik = subsets holding both i and k (n_ii: subsets holding i), as :func:`higher_order_affinity`.
    A task in fewer subsets than it has partners is underdetermined (:func:`additive_shortfall`): its b_ik are the
    ridge's shrunken, minimum-norm solution. One (min(m_i, p_i))² solve per task for m_i subsets and p_i partners.
    """
    if not l2 >= 0:
        raise UsageError(f"the additive affinity's ridge strength must be ≥ 0, got {l2}")
    table = score_table(scores)
    n = _n_tasks(table, n)
    keys = list(table)
    tasks = np.array([task for _, task in keys])
    values = np.array([table[key] for key in keys])
    members = np.zeros((len(keys), n))
    for row, (subset, _) in enumerate(keys):
        members[row, list(subset)] = 1.0
    T = np.full((n, n), np.nan)
    counts = np.zeros((n, n), dtype=np.int64)
    order = np.argsort(tasks, kind="stable")
    starts = np.searchsorted(tasks[order], np.arange(n + 1))
    for i in range(n):
        rows = order[starts[i] : starts[i + 1]]
        if len(rows) == 0:
            continue
        X, y = members[rows], values[rows]
        counts[i] = X.sum(0).astype(np.int64)
        partners = np.flatnonzero(counts[i] > 0)
        partners = partners[partners != i]
        level = y.mean()
        T[i, i] = level
        if len(partners) == 0:
            continue
        Xc = X[:, partners] - X[:, partners].mean(0)
        yc = y - level
        if l2 == 0:
            b = np.linalg.lstsq(Xc, yc, rcond=None)[0]
        elif len(rows) < len(partners):  # dual form: the (m_i, m_i) system
            b = Xc.T @ np.linalg.solve(Xc @ Xc.T + l2 * np.eye(len(rows)), yc)
        else:
            b = np.linalg.solve(Xc.T @ Xc + l2 * np.eye(len(partners)), Xc.T @ yc)
        T[i, partners] = level + b
    return T, counts


def additive_shortfall(scores: Mapping | Iterable, n: int | None = None) -> dict[int, tuple[int, int]]:
    """Tasks the additive affinity cannot determine: {task: (subsets holding it, distinct partners)} for each task in
    fewer subsets than it has partners seen with it (the partner effects then outnumber the scores)."""
    _, counts = higher_order_affinity(scores, n)
    partners = (counts > 0).sum(1) - (np.diag(counts) > 0)
    subsets = np.diag(counts)
    return {int(i): (int(subsets[i]), int(partners[i])) for i in np.flatnonzero((subsets > 0) & (subsets < partners))}


# the definitions of a higher-order T from subsets of ≥ 3 tasks, by name (the ``--affinity`` flags): each maps a score
# table and n to (T, counts) (n, n), T in one format
DEFINITIONS = {"mean": higher_order_affinity, "additive": additive_affinity}


def uncovered_pairs(counts: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (i, j), i ≤ j, where T_ij or T_ji rests on no score (``counts == 0``), e.g. to warn before clustering.

    counts: (n, n) int from :func:`higher_order_affinity` or :func:`pairwise_affinity`. (i, i) means task i is in no
    scored subset.
    """
    missing = (counts == 0) | (counts.T == 0)
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(missing)), strict=True)]


def row_center(T: np.ndarray) -> np.ndarray:
    """Each row of T minus its mean over finite entries (diagonal included): removes task difficulty (FIDELITY §3).

    T: (n, n) float; NaN entries stay NaN, an all-NaN row stays NaN. Returns (n, n) float64.
    """
    T = np.asarray(T, dtype=np.float64)
    finite = np.isfinite(T)
    means = np.where(finite, T, 0.0).sum(1) / np.maximum(finite.sum(1), 1)
    return T - means[:, None]


def groups_to_labels(groups: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """Cluster label per task from a list of groups: (n,) int64, group g → label g.

    A task in no group gets a label of its own (a singleton). Raises :class:`UsageError` on a task in two groups or
    an index outside ``[0, n)``.
    """
    labels = np.full(n, -1, dtype=np.int64)
    for label, group in enumerate(groups):
        for task in group:
            if not 0 <= int(task) < n:
                raise UsageError(f"group {label} holds task {task}, outside 0..{n - 1}")
            if labels[int(task)] >= 0:
                raise UsageError(f"task {task} is in two groups")
            labels[int(task)] = label
    free = np.flatnonzero(labels < 0)
    labels[free] = len(groups) + np.arange(len(free))
    return labels


def fill_uncovered(T: np.ndarray) -> tuple[np.ndarray, int]:
    """Give each entry of T that no subset covers (NaN) its row's mean — no evidence either way — for clustering.

    T: (n, n) float. Returns the filled (n, n) float64 matrix and the number of entries filled. Raises
    :class:`UsageError` when a whole row is NaN (a task in no subset cannot be placed).
    """
    T = np.asarray(T, dtype=np.float64)
    missing = ~np.isfinite(T)
    if missing.all(axis=1).any():
        raise UsageError("a task is in no scored subset; its affinities are unknown, so it cannot be clustered")
    if not missing.any():
        return T, 0
    return np.where(missing, np.nanmean(np.where(missing, np.nan, T), axis=1, keepdims=True), T), int(missing.sum())

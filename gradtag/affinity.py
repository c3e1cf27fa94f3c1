"""Task affinity matrices from per-(subset, task) scores: pairwise and higher-order (paper Eq. 1).

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

"""The comparison metrics on constructed tables whose answers are known."""

import numpy as np
import pytest

from gradtag.affinity import row_center
from gradtag.artifacts import UsageError
from gradtag.evaluation import (
    adjusted_rand,
    comparison_report,
    group_effect,
    per_task_spearman_rows,
    per_task_spearman_subsets,
    pooled_spearman,
    relative_distance,
    seed_ceiling,
)


def test_row_shift_leaves_row_centred_distance_zero():
    rng = np.random.default_rng(0)
    T_true = rng.normal(size=(6, 6))
    T_est = T_true + rng.normal(size=(6, 1)) * 3  # a constant per row: task difficulty only
    assert relative_distance(T_est, T_true) > 0.1
    assert relative_distance(row_center(T_est), row_center(T_true)) == pytest.approx(0.0, abs=1e-20)
    assert per_task_spearman_rows(T_est, T_true).mean == pytest.approx(1.0)


def test_pooled_high_while_per_task_zero():
    # Task levels far apart; within each task the estimate ranks its 5 subsets with Spearman exactly 0:
    # true ranks 1..5 against 2, 5, 3, 1, 4 gives Σd² = 20 and ρ = 1 − 6·20 / (5·24) = 0.
    n = 8
    true, est = {}, {}
    for task in range(n):
        for k, est_rank in enumerate([2, 5, 3, 1, 4]):
            subset = tuple(sorted({task, (task + k + 1) % n}))
            true[(subset, task)] = 100.0 * task + k + 1
            est[(subset, task)] = 100.0 * task + est_rank
    per_task = per_task_spearman_subsets(est, true)
    assert per_task.mean == pytest.approx(0.0, abs=1e-12) and per_task.n_used == n
    assert pooled_spearman(est, true) > 0.9


def test_per_task_skips_short_and_constant_tasks():
    true = {((0, k), 0): float(k) for k in range(1, 5)} | {((1, 2), 1): 1.0, ((1, 3), 1): 2.0}
    true |= {((2, k), 2): 1.0 for k in (3, 4, 5)}
    est = {key: value + 0.5 for key, value in true.items()}
    result = per_task_spearman_subsets(est, true)
    assert result.per_task == {0: pytest.approx(1.0)} and result.n_skipped == 2


def test_rows_ignore_diagonal_and_nan():
    rng = np.random.default_rng(1)
    T_true = rng.normal(size=(5, 5))
    T_est = T_true.copy()
    np.fill_diagonal(T_est, -T_true.diagonal() * 100)
    T_est[0, 1] = np.nan
    result = per_task_spearman_rows(T_est, T_true)
    assert result.mean == pytest.approx(1.0) and result.n_used == 5


def test_seed_ceiling_of_identical_seeds_is_one():
    rng = np.random.default_rng(2)
    table = {((task, other), task): rng.normal() for task in range(4) for other in range(4, 10)}
    ceiling = seed_ceiling([table, dict(table), dict(table)])
    assert ceiling.mean == pytest.approx(1.0) and len(ceiling.per_pair) == 3
    with pytest.raises(UsageError):
        seed_ceiling([table])


def planted_records(slope, seed=0, shuffle=False):
    rng = np.random.default_rng(seed)
    groups = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    group_of = {task: g for g, group in enumerate(groups) for task in group}
    level = rng.normal(0, 5, size=12)
    subsets = set()
    while len(subsets) < 300:
        subsets.add(tuple(sorted(int(t) for t in rng.choice(12, size=4, replace=False))))
    records = []
    for subset in sorted(subsets):
        for task in subset:
            partners = sum(group_of[k] == group_of[task] for k in subset if k != task)
            records.append((subset, task, level[task] + slope * partners + rng.normal(0, 0.1)))
    if shuffle:  # permute each task's scores over its subsets: the partner effect is gone, levels stay
        by_task = {}
        for i, (_, task, _) in enumerate(records):
            by_task.setdefault(task, []).append(i)
        scores = [r[2] for r in records]
        for idx in by_task.values():
            for i, j in zip(idx, rng.permutation(idx), strict=True):
                records[i] = (records[i][0], records[i][1], scores[j])
    return records, groups


def test_group_effect_recovers_planted_slope():
    records, groups = planted_records(slope=0.5)
    effect = group_effect(records, groups)
    assert effect.slope == pytest.approx(0.5, abs=0.02) and effect.t_stat > 20 and effect.n_tasks == 12
    flat = group_effect(*planted_records(slope=0.5, shuffle=True))
    assert abs(flat.slope) < 0.1 and abs(flat.t_stat) < 3


def test_adjusted_rand():
    assert adjusted_rand([[0, 1], [2, 3]], [[3, 2], [1, 0]], 4) == pytest.approx(1.0)
    assert adjusted_rand([[0, 1], [2, 3]], [[0, 2], [1, 3]], 4) < 0.1


def test_comparison_report_keys_and_perfect_estimate():
    records, _ = planted_records(slope=0.5)
    true = {(r[0], r[1]): r[2] for r in records}
    report = comparison_report(true, true, 12)
    assert report["spearman_per_task_subsets"] == pytest.approx(1.0)
    assert report["spearman_per_task_rows"] == pytest.approx(1.0)
    assert report["relative_distance_raw"] == 0.0 and report["relative_distance_row_centered"] == 0.0
    with pytest.raises(UsageError):
        comparison_report({((0, 1), 0): 1.0}, {((0, 2), 0): 1.0})

"""The comparison metrics on constructed tables whose answers are known."""

import numpy as np
import pytest

from gradtag.affinity import row_center
from gradtag.artifacts import UsageError
from gradtag.clustering import cluster, prepare_affinity
from gradtag.evaluation import (
    CALIBRATION_SUBSETS_PER_TASK,
    adjusted_rand,
    calibrate,
    calibration_problems,
    calibration_subsets_needed,
    comparison_report,
    distance_summary,
    group_effect,
    partner_effects,
    per_task_spearman_columns,
    per_task_spearman_rows,
    per_task_spearman_subsets,
    pooled_spearman,
    relative_distance,
    seed_ceiling,
    split_half_reliability,
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


def test_calibration_says_when_it_found_no_signal_or_had_too_little_to_go_on():
    records, _ = planted_records(slope=0.5)
    truth = {(r[0], r[1]): r[2] for r in records}
    subsets = sorted({subset for subset, _ in truth})
    rng = np.random.default_rng(3)
    grids = {"newton-cg": [0.01, 0.1, 1.0]}
    good = {("newton-cg", 0.1): {key: value + rng.normal(0, 0.05) for key, value in truth.items()}}
    good[("newton-cg", 0.01)] = good[("newton-cg", 1.0)] = {key: rng.normal() for key in truth}
    assert calibration_problems(calibrate(good, truth), grids, subsets, 12) == []  # 300 subsets of 12 tasks: plenty

    signal_free = {("newton-cg", l2): {key: rng.normal() for key in truth} for l2 in grids["newton-cg"]}
    problems = calibration_problems(calibrate(signal_free, truth), grids, subsets, 12)
    assert any(problem.startswith("held-out ρ") and "found no signal" in problem for problem in problems), problems

    edge = {**good, ("newton-cg", 1.0): good[("newton-cg", 0.1)], ("newton-cg", 0.1): good[("newton-cg", 0.01)]}
    problems = calibration_problems(calibrate(edge, truth), grids, subsets, 12)
    assert problems == ["newton-cg's λ = 1 is on the edge of its grid 0.01..1: extend --l2-grid past it"]

    few = subsets[:8]  # 8 subsets of 4 of 12 tasks: 2.7 per task
    few_truth = {key: value for key, value in truth.items() if key[0] in few}
    problems = calibration_problems(calibrate(good, few_truth), grids, few, 12)
    needed = calibration_subsets_needed(12, 4)
    assert needed == CALIBRATION_SUBSETS_PER_TASK * 12 // 4
    assert "give each task 2.7 calibration subsets on average" in problems[0] and f"train {needed} subsets" in problems[0]
    assert calibration_subsets_needed(100, 10) == 60 and calibration_subsets_needed(20, 5) == 24


def test_partner_rho_and_the_papers_column_orientation_measure_different_things():
    """A hand-made T = task level + partner effect: an estimate that knows only the levels scores ~1 in the paper's
    orientation (columns: different tasks' scores) and ~0 in partner ρ (rows); one that knows only the partners, the
    reverse."""
    n = 12
    rng = np.random.default_rng(0)
    levels, partners = np.linspace(-3.0, 0.0, n), rng.normal(0.0, 0.05, (n, n))
    T_true = levels[:, None] + partners
    levels_only = levels[:, None] + rng.normal(0.0, 0.05, (n, n))  # partner entries unrelated to the truth's
    partners_only = partners + rng.normal(0.0, 1.0, n)[:, None]  # right partners, task levels scrambled
    assert per_task_spearman_columns(levels_only, T_true).mean > 0.95
    assert abs(per_task_spearman_rows(levels_only, T_true).mean) < 0.2
    assert per_task_spearman_rows(partners_only, T_true).mean == pytest.approx(1.0)
    assert per_task_spearman_columns(partners_only, T_true).mean < 0.7
    # by hand on a 3 x 3 case: column 0 is (T_00, T_10, T_20), diagonal included
    T = np.array([[1.0, 5.0, 9.0], [2.0, 6.0, 7.0], [3.0, 4.0, 8.0]])
    flipped = T.copy()
    flipped[:, 0] = [3.0, 2.0, 1.0]
    columns = per_task_spearman_columns(flipped, T)
    assert columns.per_task[0] == pytest.approx(-1.0) and columns.per_task[1] == pytest.approx(1.0)
    assert columns.mean == pytest.approx(1.0 / 3.0)
    assert per_task_spearman_rows(flipped, T).n_used == 0  # 2 off-diagonal entries per row: fewer than 3


def test_adjusted_rand():
    assert adjusted_rand([[0, 1], [2, 3]], [[3, 2], [1, 0]], 4) == pytest.approx(1.0)
    assert adjusted_rand([[0, 1], [2, 3]], [[0, 2], [1, 3]], 4) < 0.1


def test_comparison_report_keys_and_perfect_estimate():
    records, _ = planted_records(slope=0.5)
    true = {(r[0], r[1]): r[2] for r in records}
    report = comparison_report(true, true, 12)
    assert report["spearman_per_task_subsets"] == pytest.approx(1.0)
    assert report["spearman_per_task_rows"] == pytest.approx(1.0)
    assert report["spearman_per_task_columns"] == pytest.approx(1.0) and report["spearman_per_task_columns_tasks_used"] == 12
    assert report["relative_distance_raw"] == 0.0 and report["relative_distance_row_centered"] == 0.0
    with pytest.raises(UsageError):
        comparison_report({((0, 1), 0): 1.0}, {((0, 2), 0): 1.0})


def test_split_half_reliability_is_high_for_structure_and_near_zero_for_noise():
    records, groups = planted_records(slope=0.5)
    by_groups = split_half_reliability(records, 12, cluster_fn=lambda T: cluster(prepare_affinity(T), 3, "sdp").groups)
    # within a group the entries of a row tie up to noise, so even perfect groups rank rows only partly alike
    assert by_groups.rows > 0.4 and by_groups.rows_full >= by_groups.rows and by_groups.ari == pytest.approx(1.0)
    noise, _ = planted_records(slope=0.0)
    flat = split_half_reliability(noise, 12)
    assert abs(flat.rows) < 0.3 and flat.ari is None and flat.splits == 5
    # Spearman–Brown: the reliability of all m subsets from the correlation of two halves
    assert by_groups.rows_full == pytest.approx(2 * by_groups.rows / (1 + by_groups.rows))


def test_partner_effects_find_partners_in_a_structured_truth_and_not_in_noise():
    records, _ = planted_records(slope=0.5)
    structured = partner_effects(records, 12)
    assert structured.n_tested == 12 and structured.share_significant == 1.0
    assert max(structured.p_values.values()) < 1e-6
    noise = partner_effects(planted_records(slope=0.5, shuffle=True)[0], 12)
    assert noise.n_tested == 12 and noise.share_significant <= 0.25  # 5% expected by chance
    assert structured.n_permutation == noise.n_permutation == 0  # 100 subsets per task, 11 partners: the F-test
    # a task seen in too few subsets to test at all
    few = partner_effects([((0, 1), 0, 1.0), ((0, 2), 0, 2.0), ((0, 1), 1, 0.5), ((1, 2), 1, 0.7)], 3)
    assert few.n_tested == 0 and few.n_untested == 2 and np.isnan(few.share_significant)


def test_partner_effects_are_tested_with_fewer_subsets_than_partners():
    """60 tasks in 6 planted groups, 150 subsets of 8: each task sits in ~20 subsets against 59 possible partners, so
    the F-test has no degrees of freedom; the permutation test still finds the planted partners, and not in noise."""
    rng = np.random.default_rng(0)
    group_of = np.repeat(np.arange(6), 10)
    level = rng.normal(0, 5, 60)
    subsets = [tuple(sorted(int(t) for t in rng.choice(60, 8, replace=False))) for _ in range(150)]

    def records(slope, shuffle):
        out = []
        for subset in subsets:
            for task in subset:
                partners = sum(group_of[k] == group_of[task] for k in subset if k != task)
                out.append((subset, task, level[task] + slope * partners + rng.normal(0, 0.1)))
        if shuffle:  # each task's scores over its subsets in a random order: partners carry no information
            by_task = {}
            for index, (_, task, _) in enumerate(out):
                by_task.setdefault(task, []).append(index)
            values = [score for _, _, score in out]
            for indices in by_task.values():
                for index, source in zip(indices, rng.permutation(indices), strict=True):
                    out[index] = (out[index][0], out[index][1], values[source])
        return out

    planted = records(0.5, shuffle=False)
    structured = partner_effects(planted, 60)
    # ~2.4 subsets per partner: the power is modest (0.5 here; the F-test's 1.0 above needs > 60 subsets per task),
    # while the false-positive rate stays at alpha (0.048 over 8 signal-free tables of this shape)
    assert structured.n_permutation == structured.n_tested == 60 and structured.share_significant >= 0.4
    noise = partner_effects(records(0.5, shuffle=True), 60)
    assert noise.n_permutation == noise.n_tested and noise.share_significant <= 0.15
    assert partner_effects(planted, 60).p_values == structured.p_values  # seeded: repeatable


def test_distance_summary_counts_each_model_once():
    rows = [{"subset_id": s, "seed": 0, "distance": d} for s, d in enumerate([0.1, 0.2, 0.3, 0.4, 0.5]) for _ in range(3)]
    summary = distance_summary(rows)
    assert summary["models"] == 5 and summary["median"] == pytest.approx(0.3)
    assert summary["p10"] == pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4, 0.5], 10))
    assert distance_summary([{"subset_id": 0, "seed": 0, "distance": float("nan")}]) is None


def test_calibrate_picks_the_setting_that_matches_the_truth_and_reports_held_out_rho():
    records, _ = planted_records(slope=0.5)
    truth = {(r[0], r[1]): r[2] for r in records}
    rng = np.random.default_rng(3)
    estimates = {
        0.01: {key: value + rng.normal(0, 0.05) for key, value in truth.items()},  # close to the truth
        1.0: {key: rng.normal() for key in truth},  # unrelated
    }
    result = calibrate(estimates, truth, seed=0)
    assert result.best == 0.01 and result.rho_by_value[0.01] > 0.8 > 0.2 > abs(result.rho_by_value[1.0])
    assert result.held_out > 0.8 and result.n_subsets == 300
    with pytest.raises(UsageError, match="at least 4 trained subsets"):
        calibrate({0.1: {((0, 1), 0): 1.0}}, {((0, 1), 0): 1.0})

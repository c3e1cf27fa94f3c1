"""Affinity matrices against values computed by hand from paper Eq. (1)."""

import itertools

import numpy as np
import pytest

from gradtag.affinity import (
    groups_to_labels,
    higher_order_affinity,
    pairwise_affinity,
    row_center,
    score_table,
    uncovered_pairs,
)
from gradtag.artifacts import UsageError

# f(S, j) for 4 tasks; tasks 0 and 3 never share a subset.
RECORDS = [
    ((0, 1, 2), 0, 1.0),
    ((0, 1, 2), 1, 2.0),
    ((0, 1, 2), 2, 3.0),
    ((1, 0), 0, 4.0),
    ((1, 0), 1, 5.0),
    ((1, 2, 3), 1, 6.0),
    ((1, 2, 3), 2, 7.0),
    ((1, 2, 3), 3, 8.0),
    ((0,), 0, 9.0),
]


def test_higher_order_is_eq1_by_hand():
    T, counts = higher_order_affinity(RECORDS, 4)
    nan = np.nan
    expected = np.array(
        [
            [(1 + 4 + 9) / 3, (1 + 4) / 2, 1, nan],
            [(2 + 5) / 2, (2 + 5 + 6) / 3, (2 + 6) / 2, 6],
            [3, (3 + 7) / 2, (3 + 7) / 2, 7],
            [nan, 8, 8, 8],
        ]
    )
    np.testing.assert_allclose(T, expected)
    np.testing.assert_array_equal(counts, [[3, 2, 1, 0], [2, 3, 2, 1], [1, 2, 2, 1], [0, 1, 1, 1]])
    assert uncovered_pairs(counts) == [(0, 3)]


def test_pairwise_from_all_pairs():
    n = 3
    scores = {((i,), i): 10.0 * i for i in range(n)}
    scores.update({((i, j), i): 10.0 * i + j for i, j in itertools.permutations(range(n), 2)})
    T, counts = pairwise_affinity(scores)
    np.testing.assert_allclose(T, [[0, 1, 2], [10, 10, 12], [20, 21, 20]])
    assert (counts == 1).all() and uncovered_pairs(counts) == []
    T, counts = pairwise_affinity({k: v for k, v in scores.items() if len(k[0]) == 2}, n)
    assert np.isnan(np.diag(T)).all() and uncovered_pairs(counts) == [(0, 0), (1, 1), (2, 2)]


def test_row_center_removes_row_means_ignoring_nan():
    T = np.array([[1.0, 2.0, np.nan], [4.0, 6.0, 8.0], [np.nan, np.nan, np.nan]])
    centred = row_center(T)
    np.testing.assert_allclose(centred[:2], [[-0.5, 0.5, np.nan], [-2.0, 0.0, 2.0]])
    assert np.isnan(centred[2]).all()


def test_score_table_rejects_bad_records():
    assert score_table([((2, 0), 0, 1.5)]) == {((0, 2), 0): 1.5}
    for bad in ([((0, 1), 2, 1.0)], [((0, 1), 0, 1.0), ((1, 0), 0, 2.0)], [((0,), 0, float("nan"))], []):
        with pytest.raises(UsageError):
            score_table(bad)


def test_groups_to_labels():
    np.testing.assert_array_equal(groups_to_labels([[2, 0], [1]], 4), [0, 1, 0, 2])
    with pytest.raises(UsageError):
        groups_to_labels([[0, 1], [1]], 3)

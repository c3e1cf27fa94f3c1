"""Step 4: SDP grouping against a planted truth and the paper's Example 4.1, baselines, Eq. 7, and the CLI's checks."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradtag.artifacts import UsageError
from gradtag.clustering import (
    average_density,
    groups_to_labels,
    kmeans_cluster,
    prepare_affinity,
    round_sdp,
    row_center,
    sdp_cluster,
    spectral_cluster,
    threshold_groups,
)
from gradtag.results import read_subsets
from run_clustering import get_args_parser, main
from steps.cluster import load_affinity

REPO = Path(__file__).resolve().parents[1]
TRUE_GROUPS = [[0, 1], [2, 3], [4, 5]]


def example_4_1() -> np.ndarray:
    """A 6x6 affinity with clusters {0,1}, {2,3}, {4,5} (App. B, Example 4.1 in spirit).

    {0,1} and {2,3} are dense (within 1.0) and strongly linked to each other (0.85); {4,5} is weak: self-affinity 0.3,
    and 0.2 to each other and to every other task. Eq. 7 prefers the true partition (sum of group densities 4.5 vs 4.3
    for {0,1,2,3},{4},{5}), but the normalised cut that spectral clustering approximates prefers to cut the weak pair.
    """
    T = np.full((6, 6), 0.2)
    T[:4, :4] = 0.85
    T[0, 1] = T[1, 0] = T[2, 3] = T[3, 2] = 1.0
    np.fill_diagonal(T, 1.0)
    T[4, 4] = T[5, 5] = 0.3
    return T


def planted_blocks(n: int, k: int, noise: float, seed: int) -> tuple[np.ndarray, list[list[int]]]:
    """Block matrix: 1 within a group, 0 across, plus Gaussian noise; tasks shuffled so groups are not contiguous."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % k)
    T = (labels[:, None] == labels[None, :]).astype(np.float64) + noise * rng.standard_normal((n, n))
    groups = sorted(([int(t) for t in np.flatnonzero(labels == g)] for g in range(k)), key=lambda group: group[0])
    return T, groups


def run_cli(*argv: str) -> dict:
    return main(get_args_parser().parse_args(list(argv)))


# ---------------------------------------------------------------------------------------------------------- math
def test_example_4_1_sdp_recovers_clusters_spectral_merges_dense_ones():
    T = example_4_1()
    rounding = round_sdp(sdp_cluster(T, 3), T, 3)
    assert rounding.exact and rounding.groups == TRUE_GROUPS
    assert average_density(T, TRUE_GROUPS) == pytest.approx(4.5 / 3)
    assert average_density(T, [[0, 1, 2, 3], [4], [5]]) == pytest.approx(4.3 / 3)

    spectral = spectral_cluster(T, 3, seed=0)
    assert spectral == [[0, 1, 2, 3], [4], [5]]
    # k-means on the rows separates the two dense pairs here: their rows differ by 0.15 in four coordinates.
    assert kmeans_cluster(T, 3, seed=0) == TRUE_GROUPS


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")  # spectral on the shifted row-centred matrix
def test_example_4_1_cli_writes_true_clusters(tmp_path):
    np.save(tmp_path / "T.npy", example_4_1())
    (tmp_path / "true.txt").write_text("0 1\n2 3\n4 5\n")
    out = tmp_path / "groups.txt"
    summary = run_cli(
        "--affinity",
        str(tmp_path / "T.npy"),
        "--k",
        "3",
        "--method",
        "sdp",
        "--out",
        str(out),
        "--planted",
        str(tmp_path / "true.txt"),
        "--compare-methods",
    )
    assert [list(g) for g in read_subsets(out, 6)] == TRUE_GROUPS
    assert "method=sdp" in out.read_text().splitlines()[0]
    stored = json.loads(out.with_suffix(".json").read_text())
    assert stored == json.loads(json.dumps(summary))
    assert stored["groups"] == TRUE_GROUPS and stored["exact_k"] and stored["ari"] == pytest.approx(1.0)
    assert set(stored["methods"]) == {"sdp", "spectral", "kmeans"}
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rounding_recovers_noisy_planted_groups():
    T, groups = planted_blocks(n=20, k=4, noise=0.3, seed=1)
    X = sdp_cluster(T, 4)
    assert X.shape == (20, 20) and X.dtype == np.float64
    rounding = round_sdp(X, T, 4)
    assert rounding.exact and len(rounding.groups) == 4
    assert rounding.groups == groups
    assert sorted(t for g in rounding.groups for t in g) == list(range(20))
    assert (groups_to_labels(threshold_groups(X, 1 / 20, "components"), 20) >= 0).all()


def test_rounding_gives_exactly_k_groups_when_no_threshold_does():
    """Three blocks of three in X: a threshold gives 3 groups or 9 singletons, never 2 (the rounding used to return
    k + 1 = 3). The repair merges the two blocks T says belong together, and says so; asking for 4 splits a block."""
    blocks = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    X = np.zeros((9, 9))
    for block in blocks:
        X[np.ix_(block, block)] = 1 / 3
    T = -np.ones((9, 9))
    for block in blocks:
        T[np.ix_(block, block)] = 1.0
    T[np.ix_(blocks[1], blocks[2])] = T[np.ix_(blocks[2], blocks[1])] = 0.5  # blocks 1 and 2 are nearer each other
    T[6, 7] = T[7, 6] = T[7, 8] = T[8, 7] = 0.6  # and inside block 2, task 7 is the odd one out
    rounding = round_sdp(X, T, 2)
    assert rounding.exact and rounding.groups == [[0, 1, 2], [3, 4, 5, 6, 7, 8]] and rounding.repaired == 1
    assert "no threshold gives exactly 2 groups (nearest: 3" in rounding.message and "merged 1 pair(s)" in rounding.message
    rounding = round_sdp(X, T, 4)
    assert rounding.exact and len(rounding.groups) == 4 and rounding.repaired == -1 and "split 1 group(s)" in rounding.message
    assert sorted(t for g in rounding.groups for t in g) == list(range(9)) and [7] in rounding.groups
    three = round_sdp(X, T, 3)  # a threshold gives k: no repair
    assert three.groups == blocks and three.repaired == 0 and three.message.startswith("exactly 3 groups")


def test_fine_thresholds_find_k_where_the_grid_does_not():
    """A group count reached only between two grid points (spacing 0.1/n) is found among X's own entries."""
    X = np.full((4, 4), 0.0)
    X[0, 1] = X[1, 0] = 0.2502  # {0, 1} together only for lam <= 0.2502; the grid's first points are 0.25, 0.275
    X[2, 3] = X[3, 2] = 0.26
    rounding = round_sdp(X, np.eye(4), 3)  # {0}, {1}, {2, 3}: lam in (0.2502, 0.26]
    assert rounding.exact and rounding.repaired == 0 and rounding.groups == [[0], [1], [2, 3]]
    assert 0.2502 < rounding.lam <= 0.26


def test_rounding_trivial_k():
    X = np.full((5, 5), 0.2 - 1e-6)  # the k = 1 solution as SCS returns it: just below the grid's end 1/n
    assert round_sdp(X, np.eye(5), 1).groups == [[0, 1, 2, 3, 4]]
    assert round_sdp(np.eye(5), np.eye(5), 5).groups == [[0], [1], [2], [3], [4]]


def test_row_center_zero_row_means_and_symmetric():
    T = np.random.default_rng(0).standard_normal((7, 7)) + np.arange(7)[:, None]
    centred = row_center(T, symmetric=False)
    assert np.allclose(centred.mean(axis=1), 0)
    assert np.allclose(centred - T, -T.mean(axis=1, keepdims=True))  # a per-row constant, nothing else
    S = row_center(T)
    assert np.allclose(S, (centred + centred.T) / 2)
    assert np.allclose(S.sum(), 0)  # symmetrising a zero-row-mean matrix keeps the total at 0
    assert np.allclose(prepare_affinity(T, center="none"), (T + T.T) / 2)


def test_average_density_hand_computed():
    T = np.array([[1.0, 2.0, 0.0], [4.0, 3.0, 0.0], [0.0, 0.0, 5.0]])
    # group {0,1}: (1 + 2 + 4 + 3) / 2 = 5; group {2}: 5 / 1 = 5; mean over k = 2 groups = 5
    assert average_density(T, [[0, 1], [2]]) == pytest.approx(5.0)
    # one group: 15 / 3 = 5; three singletons: (1 + 3 + 5) / 3 = 3
    assert average_density(T, [[0, 1, 2]]) == pytest.approx(5.0)
    assert average_density(T, [[0], [1], [2]]) == pytest.approx(3.0)


# ---------------------------------------------------------------------------------------------------------- CLI errors
def _bad_inputs(tmp_path: Path):
    good = tmp_path / "good.npy"
    np.save(good, example_4_1())
    nonsquare = tmp_path / "nonsquare.npy"
    np.save(nonsquare, np.ones((3, 4)))
    with_inf = tmp_path / "inf.npy"
    T = example_4_1()
    T[2, 3] = np.inf
    np.save(with_inf, T)
    task_in_no_subset = tmp_path / "nan_row.npy"
    T = example_4_1()
    T[1, :] = np.nan
    np.save(task_in_no_subset, T)
    not_npy = tmp_path / "text.npy"
    not_npy.write_text("not an array")
    return {
        "k=0": (good, "0", "--k: must be an integer >= 1"),
        "k>n": (good, "7", "--k 7"),
        "non-square": (nonsquare, "2", "shape (3, 4)"),
        "inf": (with_inf, "2", "infinite entries"),
        "task in no subset": (task_in_no_subset, "2", "in no scored subset"),
        "missing": (tmp_path / "missing.npy", "2", "does not exist"),
        "not npy": (not_npy, "2", "not a loadable .npy"),
    }


@pytest.mark.parametrize("case", ["k=0", "k>n", "non-square", "inf", "task in no subset", "missing", "not npy"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, case):
    affinity, k, expected = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out" / "groups.txt"
    if case == "k=0":  # one real subprocess run: exit status and stderr as a user sees them
        proc = subprocess.run(
            [sys.executable, str(REPO / "run_clustering.py"), "--affinity", str(affinity), "--k", k, "--out", str(out)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        status, stderr = proc.returncode, proc.stderr
    else:
        with pytest.raises(UsageError) as err:
            run_cli("--affinity", str(affinity), "--k", k, "--out", str(out))
        status, stderr = 2, f"error: {err.value}\n"
    assert status == 2
    assert expected in stderr and stderr.count("\n") == 1
    assert not out.parent.exists()


def test_uncovered_pairs_get_their_row_mean_as_in_compare(tmp_path, capsys):
    """Step 3's rule for a pair no subset covers (NaN in T): clustering fills it with its row's mean, as compare does."""
    T = example_4_1()
    T[0, 3] = T[3, 0] = np.nan
    path = tmp_path / "uncovered.npy"
    np.save(path, T)
    filled = T.copy()
    filled[0, 3] = np.nanmean(T[0])
    filled[3, 0] = np.nanmean(T[3])
    assert np.allclose(load_affinity(path), filled)
    assert "2 entries" in capsys.readouterr().out
    run_cli("--affinity", str(path), "--k", "2", "--out", str(tmp_path / "groups.txt"))
    assert (tmp_path / "groups.txt").is_file()


def test_refuses_to_overwrite(tmp_path):
    np.save(tmp_path / "T.npy", example_4_1())
    out = tmp_path / "groups.txt"
    out.write_text("0 1 2 3 4 5\n")
    with pytest.raises(UsageError, match="--overwrite"):
        run_cli("--affinity", str(tmp_path / "T.npy"), "--k", "3", "--out", str(out))
    assert out.read_text() == "0 1 2 3 4 5\n"

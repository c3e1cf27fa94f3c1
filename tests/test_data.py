"""Datasets: the SNAP loader on hand-written files, the real amazon_clare files, missing files, the paper's splits,
deterministic features, and the planted default's recorded grouping."""

import hashlib

import numpy as np
import pytest
import torch

import data
from data import DATASETS, load_dataset, planted_groups_path, read_planted_groups
from data.snap import load_snap
from gradtag.artifacts import UsageError
from tests.conftest import SHARED_DATA, TINY_PLANTED, run_script, write_snap

# SNAP formats: '#' header lines, tab-separated ids; a self-loop, a repeated edge and edges leaving the chosen
# communities, all of which the induced subgraph must drop.
SNAP_EDGES = """# Undirected graph: a test graph
# Nodes: 9 Edges: 12
# FromNodeId\tToNodeId
10\t20
20\t30
30\t10
10\t10
20\t10
40\t50
50\t60
60\t70
70\t40
30\t40
80\t90
10\t80
"""
# Line 1 has 5 distinct members; line 3 has 6 ids but only 4 distinct (size counts members, not ids); lines 0 and 4
# tie at 3 and file order breaks the tie. So the 3 largest are lines 1, 3, 0, in that order.
SNAP_COMMUNITIES = "10\t20\t30\n40\t50\t60\t70\t30\n80\t90\n20\t50\t60\t70\t70\t70\n10\t40\t90\n"
# Nodes of lines 1, 3, 0: 10 20 30 40 50 60 70, renumbered 0..6 in ascending original id.
SNAP_NEW_EDGES = [[0, 1], [0, 2], [1, 2], [2, 3], [3, 4], [3, 6], [4, 5], [5, 6]]
SNAP_MEMBERS = [[2, 3, 4, 5, 6], [1, 4, 5, 6], [0, 1, 2]]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_snap_loader_takes_largest_communities_of_induced_subgraph(tmp_path, gz):
    folder = tmp_path / "dblp"
    write_snap(folder, "dblp", SNAP_EDGES, SNAP_COMMUNITIES, gz=gz)
    spec = DATASETS["dblp"]
    edges, labels, names = load_snap("dblp", folder, spec["edge_stems"], spec["community_stems"], 3)
    assert edges.tolist() == SNAP_NEW_EDGES
    assert names == ["cmty1", "cmty3", "cmty0"]
    assert [np.flatnonzero(labels[:, task]).tolist() for task in range(3)] == SNAP_MEMBERS

    dataset = load_dataset("dblp", data_dir=folder, cache_dir=tmp_path / "cache", num_tasks=3, embedding_dim=4)
    assert dataset.num_nodes == 7 and dataset.num_tasks == 3
    assert dataset.task_names == ["cmty1", "cmty3", "cmty0"]
    assert dataset.labels.dtype == bool
    assert [np.flatnonzero(dataset.labels[:, task]).tolist() for task in range(3)] == SNAP_MEMBERS
    assert dataset.features.shape[:2] == (7, DATASETS["dblp"]["defaults"]["num_hops"] + 1)
    assert sorted(path.name for path in folder.iterdir()) == sorted(  # the data folder is only read
        f"{stem}.gz" if gz else stem for stem in ("com-dblp.ungraph.txt", "com-dblp.top5000.cmty.txt")
    )


def test_snap_loader_refuses_more_tasks_than_communities(tmp_path):
    write_snap(tmp_path, "dblp", SNAP_EDGES, SNAP_COMMUNITIES)
    with pytest.raises(UsageError, match="holds 5 communities"):
        load_dataset("dblp", data_dir=tmp_path, cache_dir=tmp_path / "cache", num_tasks=6)


def test_snap_loader_names_a_bad_community_line(tmp_path):
    write_snap(tmp_path, "dblp", SNAP_EDGES, "10\t20\n30\tx\n")
    with pytest.raises(UsageError, match=r"com-dblp.top5000.cmty.txt:2: .*non-integer"):
        load_dataset("dblp", data_dir=tmp_path, cache_dir=tmp_path / "cache", num_tasks=1)


def test_snap_loader_names_a_bad_edge_file(tmp_path):
    write_snap(tmp_path, "dblp", "# header\n10\t20\n20\tx\n", SNAP_COMMUNITIES)
    with pytest.raises(UsageError, match="com-dblp.ungraph.txt"):
        load_dataset("dblp", data_dir=tmp_path, cache_dir=tmp_path / "cache", num_tasks=1)


def _digests(folder):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def test_amazon_clare_real_files_read_unchanged(tmp_path, monkeypatch):
    folder = SHARED_DATA / "amazon_clare"
    if not (folder / "amazon-1.90.cmty.txt").is_file():
        pytest.skip(f"optional real data {folder} is absent (only the project's own test machine has it)")
    # This test is about reading the files; skip the features (a dense 1,690-node eigensolve: seconds on 2 cores).
    monkeypatch.setattr(data, "cached_features", lambda cache_dir, edges, num_nodes, options: torch.zeros(num_nodes, 1, 1))
    before = _digests(folder)
    # Expected tasks, computed independently: the 100 largest communities (distinct members), ties by file order.
    communities = [sorted(set(line.split())) for line in (folder / "amazon-1.90.cmty.txt").read_text().splitlines()]
    order = sorted(range(len(communities)), key=lambda index: (-len(communities[index]), index))[:100]
    union = set().union(*(communities[index] for index in order))

    dataset = load_dataset("amazon_clare", data_dir=folder, cache_dir=tmp_path / "cache", num_tasks=100)
    assert dataset.num_tasks == 100
    # 1,630 nodes. (The data README's 1,690 is the union when ties at size 20 go to later lines; the loader breaks
    # ties by file order, as its docstring says.)
    assert dataset.num_nodes == len(union)
    assert dataset.labels.sum(axis=0).tolist() == [len(communities[index]) for index in order]
    assert dataset.task_names == [f"cmty{index}" for index in order]
    assert _digests(folder) == before  # nothing changed or added in ../shared


def test_missing_files_say_where_to_download_and_put_them(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError) as err:
        load_dataset("dblp", data_dir=empty, cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "https://snap.stanford.edu/" in message and "com-dblp.ungraph.txt" in message and str(empty) in message
    assert "\n" not in message

    (empty / "com-dblp.ungraph.txt").write_text(SNAP_EDGES)  # edges present, communities missing
    with pytest.raises(UsageError, match="com-dblp.top5000.cmty.txt"):
        load_dataset("dblp", data_dir=empty, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_missing_amazon_clare_points_to_where_its_files_exist(tmp_path):
    with pytest.raises(UsageError) as err:
        load_dataset("amazon_clare", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert "amazon-1.90.ungraph.txt" in str(err.value)
    assert "snap.stanford.edu/data/bigdata/communities/amazon-1.90" not in str(err.value)


def test_train_multitask_with_missing_data_exits_2_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    flags = ["--dataset", "dblp", "--data-dir", str(empty), "--saved-dir", "saved", "--results-dir", "results"]
    proc = run_script("train_multitask.py", *flags, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "snap.stanford.edu" in proc.stderr and str(empty) in proc.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]  # no saved/, results/, datasets/cache
    assert list(empty.iterdir()) == []


def test_unknown_dataset_without_files_is_refused(tmp_path):
    with pytest.raises(UsageError, match="unknown dataset 'nope' and no folder"):
        load_dataset("nope", data_dir=tmp_path / "absent", cache_dir=tmp_path / "cache")
    with pytest.raises(UsageError, match=r"exactly one \*\.ungraph\.txt"):
        load_dataset("nope", data_dir=tmp_path, cache_dir=tmp_path / "cache")


def test_any_name_reads_snap_format_files_from_data_dir(tmp_path):
    """A graph the project has never heard of: any name, with --data-dir holding one edge list and one community file."""
    folder, known = tmp_path / "mygraph", tmp_path / "dblp"
    write_snap(folder, "whatever", SNAP_EDGES, SNAP_COMMUNITIES, gz=True)
    write_snap(known, "dblp", SNAP_EDGES, SNAP_COMMUNITIES)
    options = dict(num_tasks=2, embedding_dim=2)
    dataset = load_dataset("mygraph", data_dir=folder, cache_dir=tmp_path / "cache", **options)
    reference = load_dataset("dblp", data_dir=known, cache_dir=tmp_path / "cache", **options)
    assert dataset.name == "mygraph" and dataset.task_names == reference.task_names
    np.testing.assert_array_equal(dataset.labels, reference.labels)
    (folder / "extra.cmty.txt").write_text("1 2 3\n")
    with pytest.raises(UsageError, match="exactly one"):
        load_dataset("mygraph", data_dir=folder, cache_dir=tmp_path / "cache", **options)


def test_paper_splits_sizes_disjoint_covering_and_seeded(tmp_path):
    options = dict(TINY_PLANTED, train_frac=0.1, val_frac=0.2)
    dataset = load_dataset("planted", data_dir=tmp_path / "planted", cache_dir=tmp_path / "cache", **options)
    masks, labels, num_nodes = dataset.masks, dataset.labels, dataset.num_nodes
    for task in range(dataset.num_tasks):
        positives, negatives = labels[:, task].sum(), (~labels[:, task]).sum()
        train, val, test = (masks[split][:, task] for split in ("train", "val", "test"))
        # Sec. 5.1.2: train_frac of the community and train_frac of the rest; val_frac of what remains; test the rest.
        assert (train & labels[:, task]).sum() == max(1, round(0.1 * positives))
        assert (train & ~labels[:, task]).sum() == max(1, round(0.1 * negatives))
        assert val.sum() == round(0.2 * (num_nodes - train.sum()))
        assert test.sum() == num_nodes - train.sum() - val.sum()
        assert not (train & val).any() and not (train & test).any() and not (val & test).any()
        assert (train | val | test).all()
        assert labels[test, task].any()  # the test split holds positives to score

    again = load_dataset("planted", data_dir=tmp_path / "planted", cache_dir=tmp_path / "cache2", **options)
    other = load_dataset("planted", data_dir=tmp_path / "planted1", cache_dir=tmp_path / "cache", split_seed=1, **options)
    for split in ("train", "val", "test"):
        assert np.array_equal(again.masks[split], masks[split])
        assert not np.array_equal(other.masks[split], masks[split])
    assert again.fingerprint == dataset.fingerprint != other.fingerprint
    # Features are computed afresh in a second cache folder and come out bit-identical.
    assert torch.equal(again.features, dataset.features)
    assert dataset.features.dtype == torch.float32


def test_planted_groups_recorded_and_real(tmp_path):
    data_dir = tmp_path / "planted"
    dataset = load_dataset("planted", data_dir=data_dir, cache_dir=tmp_path / "cache", **TINY_PLANTED)
    groups = read_planted_groups(planted_groups_path(data_dir), dataset.num_tasks)  # checks it is a partition
    assert groups == dataset.planted_groups == [[0, 1], [2, 3]]
    assert (data_dir / "com-planted.ungraph.txt").is_file() and (data_dir / "com-planted.cmty.txt").is_file()

    labels = dataset.labels
    group_of = {task: index for index, group in enumerate(groups) for task in group}
    for first in range(dataset.num_tasks):
        for second in range(first + 1, dataset.num_tasks):
            overlap = (labels[:, first] & labels[:, second]).sum()
            jaccard = overlap / (labels[:, first] | labels[:, second]).sum()
            if group_of[first] == group_of[second]:
                assert jaccard > 0.6, (first, second, jaccard)
            else:
                assert overlap == 0, (first, second)

    # The communities written in SNAP's format read back as the same tasks.
    edges, snap_labels, _ = load_snap("planted", data_dir, ["com-planted.ungraph.txt"], ["com-planted.cmty.txt"], 4)
    members = np.flatnonzero(labels.any(axis=1))
    assert np.array_equal(snap_labels, labels[members])

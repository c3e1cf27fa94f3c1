"""Unreadable data files end in one line: the SNAP reader owns its compression and encoding errors, the subsets reader
(also groups and ``--planted`` files) its encoding errors, a damaged feature cache is recomputed, and community files
whose tasks cannot be split, or that are given twice (plain and gzipped), are refused naming the file and the fix.

Each bad case runs a script in-process (``check_data.py``, the first step of the dataset scripts, and the steps that
read subsets files) and checks: exit status 2, one ``error:`` line holding the expected words, the folder unchanged.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import check_data
import compare_affinities
import fit_linear_estimates
import run_clustering
import train_multitask
from data import load_dataset
from tests.conftest import exit_status, write_snap
from tests.test_bad_inputs import AFFINITY, ESTIMATE, GRADS, SUBSETS, TRAIN, TRUTH, refused, root  # noqa: F401 (fixture)
from tests.test_data import SNAP_COMMUNITIES, SNAP_EDGES

CMTY = "com-dblp.top5000.cmty.txt"
EDGES = "com-dblp.ungraph.txt"
BINARY = bytes(range(256)) * 4  # every byte value, NUL and invalid UTF-8 included


def check(folder: str, num_tasks: int = 3) -> list[str]:
    return ["--dataset", "dblp", "--data-dir", folder, "--num-tasks", str(num_tasks), "--embedding-dim", "2"]


def snap(folder: str, communities: str = SNAP_COMMUNITIES, edges: str = SNAP_EDGES, gz: bool = False) -> Path:
    write_snap(Path(folder), "dblp", edges, communities, gz=gz)
    return Path(folder)


# ---------------------------------------------------------------------------------------------------------- damage
def gz_that_is_not_gzip() -> str:
    folder = snap("bad/notgz")
    (folder / CMTY).rename(folder / f"{CMTY}.gz")
    return str(folder)


def gz_truncated() -> str:
    folder = snap("bad/truncated", gz=True)
    edges = SNAP_EDGES + "".join(f"{node}\t{node + 1}\n" for node in range(1000, 6000))
    (folder / f"{EDGES}.gz").write_bytes(gzip.compress(edges.encode())[:-100])
    return str(folder)


def gz_corrupt() -> str:
    folder = snap("bad/corrupt", gz=True)
    path = folder / f"{CMTY}.gz"
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # the CRC at the end no longer matches
    path.write_bytes(bytes(data))
    return str(folder)


def plain_that_is_gzip() -> str:
    folder = snap("bad/gzplain")
    (folder / CMTY).write_bytes(gzip.compress(SNAP_COMMUNITIES.encode()))
    return str(folder)


def latin1_in_a_data_line() -> str:
    folder = snap("bad/latin1data")
    (folder / CMTY).write_bytes(b"10\t20\t30\n40\t50\xe9\t60\n" + SNAP_COMMUNITIES.encode())
    return str(folder)


def binary_edges() -> str:
    folder = snap("bad/binedges")
    (folder / EDGES).write_bytes(BINARY)
    return str(folder)


def identical_communities() -> str:
    return str(snap("bad/same", communities="10\t20\t30\n" * 6))


def community_covering_every_node() -> str:
    return str(snap("bad/cover", communities="10\t20\t30\t40\t50\n10\t20\n40\t50\n"))


def community_of_one_node() -> str:
    return str(snap("bad/single", communities="10\t20\t30\n40\t50\t60\n70\n"))


def community_file_plain_and_gzipped() -> str:
    folder = snap("bad/both")
    (folder / f"{CMTY}.gz").write_bytes(gzip.compress(b"10\t20\n"))
    return str(folder)


def both_files_plain_and_gzipped() -> str:
    snap("bad/both", gz=True)
    return str(snap("bad/both"))


def binary_file(name: str) -> str:
    Path("bad").mkdir(exist_ok=True)
    Path("bad", name).write_bytes(BINARY)
    return f"bad/{name}"


# ---------------------------------------------------------------------------------------------------------- cases
# name: (script, argv (callables build damaged inputs first), what the error line must contain)
CASES = {
    "a .gz that is not gzip": (check_data, check(gz_that_is_not_gzip), [f"{CMTY}.gz is not gzip-compressed", "rename"]),
    "a truncated .gz": (check_data, check(gz_truncated), [f"{EDGES}.gz", "ends early", "download it again"]),
    "a .gz with a bad checksum": (check_data, check(gz_corrupt), [f"{CMTY}.gz", "damaged", "download it again"]),
    "gzip data without .gz": (check_data, check(plain_that_is_gzip), [f"{CMTY} is gzip-compressed", f"{CMTY}.gz"]),
    "Latin-1 byte in a data line": (check_data, check(latin1_in_a_data_line), [f"{CMTY}:2:", "not ASCII"]),
    "binary edge list": (check_data, check(binary_edges), [f"{EDGES}:", "not ASCII"]),
    "six identical communities": (
        check_data,
        check(identical_communities, num_tasks=6),
        [CMTY, "cmty0, cmty1, cmty2, cmty3, cmty4, cmty5", "no negative node", "communities that differ"],
    ),
    "a community covering every node": (
        check_data,
        check(community_covering_every_node),
        [CMTY, "cmty0", "no negative node"],
    ),
    "a community of one node": (check_data, check(community_of_one_node), [CMTY, "cmty2", "fewer than 2 member", "--num-tasks"]),
    "plain and gzipped community file": (
        check_data,
        check(community_file_plain_and_gzipped),
        [f"both {CMTY} and {CMTY}.gz", "remove one"],
    ),
    "plain and gzipped, any dataset name": (
        check_data,
        ["--dataset", "mygraph", "--data-dir", both_files_plain_and_gzipped, "--num-tasks", "2"],
        [f"both {EDGES} and {EDGES}.gz", "remove one"],
    ),
    "truth on a binary subsets file": (
        train_multitask,
        [*TRAIN, "--subsets-file", lambda: binary_file("subsets.txt")],
        ["bad/subsets.txt:1:", "not text"],
    ),
    "fit on a binary subsets file": (
        fit_linear_estimates,
        ["--gradients", GRADS, "--subsets-file", lambda: binary_file("subsets.txt")],
        ["bad/subsets.txt:1:", "not text"],
    ),
    "cluster with a binary --planted": (
        run_clustering,
        ["--affinity", AFFINITY, "--k", "2", "--out", "g.txt", "--planted", lambda: binary_file("planted.txt")],
        ["bad/planted.txt:1:", "not text"],
    ),
    "compare with a binary --planted": (
        compare_affinities,
        ["--estimated", ESTIMATE, "--trained", TRUTH, "--planted", lambda: binary_file("planted.txt")],
        ["bad/planted.txt:1:", "not text"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unreadable_input_exits_2_with_one_line_and_changes_nothing(root, monkeypatch, capsys, case):  # noqa: F811
    module, argv, fragments = CASES[case]
    monkeypatch.chdir(root)
    argv = [arg() if callable(arg) else arg for arg in argv]
    try:
        error = refused(module, argv, root, capsys)
        for fragment in fragments:
            assert fragment in error, (fragment, error)
    finally:
        shutil.rmtree(root / "bad", ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------- readable
def test_undecodable_bytes_in_comment_lines_are_ignored(tmp_path):
    """SNAP's headers are free text: a Latin-1 byte in a ``#`` line (either file, plain or gzipped) changes nothing."""
    options = dict(cache_dir=tmp_path / "cache", num_tasks=3, embedding_dim=2)
    reference = load_dataset("dblp", data_dir=snap(tmp_path / "clean"), **options)
    for gz in (False, True):
        folder = tmp_path / f"latin1_{gz}"
        edges = SNAP_EDGES.replace("# Undirected graph: a test graph", "# Undirected graph by Jos\xe9")
        write_snap(folder, "dblp", "", "", gz=gz)
        for name, text in ((EDGES, edges), (CMTY, "# communit\xe9s\n" + SNAP_COMMUNITIES)):
            data = text.encode("latin-1")
            (folder / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
        dataset = load_dataset("dblp", data_dir=folder, **options)
        assert dataset.fingerprint == reference.fingerprint
        assert torch.equal(dataset.features, reference.features)


def test_a_subsets_file_with_a_latin1_comment_reads(tmp_path):
    from gradtag.results import read_subsets

    path = tmp_path / "subsets.txt"
    path.write_bytes(b"# made by Jos\xe9\n0 1  # caf\xe9\n2\n")
    assert read_subsets(path, 3) == [(0, 1), (2,)]


def test_a_truncated_feature_cache_is_recomputed_with_the_same_features(tmp_path, capsys):
    folder, cache = snap(tmp_path / "dblp"), tmp_path / "cache"
    options = dict(data_dir=folder, cache_dir=cache, num_tasks=3, embedding_dim=2)
    first = load_dataset("dblp", **options)
    (cache_file,) = (cache / "dblp").iterdir()
    data = cache_file.read_bytes()
    for damaged in (data[: len(data) // 2], b"", torch_saved({"not": "a tensor"})):
        cache_file.write_bytes(damaged)
        capsys.readouterr()
        again = load_dataset("dblp", **options)
        notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
        assert len(notes) == 1 and str(cache_file) in notes[0] and "recomputing" in notes[0], notes
        assert torch.equal(again.features, first.features)
        assert torch.equal(torch.load(cache_file), first.features)  # rewritten whole
    capsys.readouterr()
    load_dataset("dblp", **options)  # a sound cache is used without a note
    assert capsys.readouterr().out == ""


def torch_saved(value) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_community_nodes_missing_from_the_edge_list_are_kept_isolated_with_a_note(tmp_path, capsys):
    # 100 and 101 appear in no edge; 90 appears in an edge that leaves the chosen communities, so it is not missing
    folder = snap(tmp_path / "dblp", communities="10\t20\t30\t100\n40\t50\t60\t101\n90\t20\t30\n")
    dataset = load_dataset("dblp", data_dir=folder, cache_dir=tmp_path / "cache", num_tasks=3, embedding_dim=2)
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"note: 2 of the 9 community nodes (e.g. 100, 101) are in no edge of {folder / EDGES}; they stay as isolated nodes"
    ], out
    assert dataset.num_nodes == 9 and dataset.labels[-2:].any(axis=1).all()  # 100, 101 are the last two nodes

    write_snap(tmp_path / "valid", "dblp", SNAP_EDGES, SNAP_COMMUNITIES)
    load_dataset("dblp", data_dir=tmp_path / "valid", cache_dir=tmp_path / "cache", num_tasks=3, embedding_dim=2)
    assert capsys.readouterr().out == ""  # a valid graph: no note, as before


def test_check_data_prints_the_missing_nodes_note_before_any_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    snap("dblp", communities="10\t20\t30\t100\n40\t50\t60\n90\t20\t30\n")
    assert exit_status(check_data.main, check_data.get_args_parser(), check("dblp")) == 0
    out = capsys.readouterr().out
    assert "note: 1 of the 8 community nodes (e.g. 100) are in no edge of dblp/com-dblp.ungraph.txt" in out
    assert np.any([line.startswith("dblp: 3 tasks") for line in out.splitlines()])

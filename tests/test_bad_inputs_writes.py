"""Faults while writing, interrupts and wrong-but-accepted inputs (issue 25, items 6, 7 and 9): a disk that fills up
midway through a step's result set, Ctrl-C during the SDP, output flags naming a folder, swapped compare inputs, an
affinity with no structure and a groups file that is not a partition.

Each refusal is checked as in ``tests/test_bad_inputs.py``: exit status 2, one error line naming the file or flag and
the fix, and nothing under the working folder changed (same files, same bytes); a previous complete result set stays
as it was.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import collect_gradients
import compare_affinities
import fit_linear_estimates
import merge_results
import pipeline_summary
import run_clustering
import sample_subsets
import taylor_check
import train_multitask
from tests import test_bad_inputs
from tests.conftest import REPO, exit_status, without_base_warnings
from tests.test_bad_inputs import (
    AFFINITY,
    CKPT,
    DATA,
    ESTIMATE,
    GRADS,
    SUBSETS,
    TRAIN,
    TRUTH,
    call,
    refused,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """tests/test_bad_inputs.py's tiny pipeline (θ*, gradients, subsets, estimate, truth, affinity), built for this module."""
    return test_bad_inputs.root.__wrapped__(tmp_path_factory)


FULL = "no space left on device; free space and rerun (finished work is kept)"


def disk_full_on(monkeypatch, fragment: str) -> list[str]:
    """Make every write of a temporary file whose name holds ``fragment`` write half its bytes, then fail as a full
    disk does (ENOSPC), whichever writer (text, ``np.save``, ``savefig``) does it. Returns the names that failed."""
    import io

    failed = []
    real_open = open

    class FullFile(io.BufferedWriter):
        def write(self, data):
            failed.append(Path(self.name).name)
            super().write(bytes(data)[: len(data) // 2])
            super().flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str | Path) and fragment in Path(file).name and Path(file).name.endswith(".tmp") and "w" in mode:
            raw = io.FileIO(file, "w")
            handle = FullFile(raw)
            return io.TextIOWrapper(handle, encoding="utf-8") if "b" not in mode else handle
        return real_open(file, mode, *args, **kwargs)

    def write_text(self, text, *args, **kwargs):
        with full_open(self, "w") as handle:
            handle.write(text)

    import builtins

    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr(Path, "write_text", write_text)
    return failed


# ---------------------------------------------------------------------------------------------------------- item 6
@pytest.mark.parametrize("failing", ["_estimate.json", "_estimate_higher_order.npy", "_estimate_higher_order_counts.npy"])
def test_a_full_disk_midway_through_the_estimate_keeps_the_previous_set_whole(root, monkeypatch, capsys, failing):
    monkeypatch.chdir(root)
    failed = disk_full_on(monkeypatch, f"planted_m4_a3_s0{failing}")
    error = refused(fit_linear_estimates, ["--gradients", GRADS, "--subsets-file", SUBSETS, "--no-progress"], root, capsys)
    assert failed, "the simulated full disk was never hit"
    assert error == f"error: cannot write results/planted_m4_a3_s0{failing}: {FULL}"


def test_a_full_disk_leaves_no_file_of_a_new_estimate(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    disk_full_on(monkeypatch, "fresh_estimate.json")
    argv = ["--gradients", GRADS, "--subsets-file", SUBSETS, "--no-progress", "--name", "fresh"]
    assert FULL in refused(fit_linear_estimates, argv, root, capsys)
    assert not list(Path("results").glob("*fresh*")) and not list(Path("results").glob(".*.tmp"))


def test_a_full_disk_during_the_merge_writes_no_part_of_the_merged_set(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    flags = ["--gradients", GRADS, "--subsets-file", SUBSETS, "--no-progress", "--name", "sharded", "--batch-size", "2"]
    for shard in (0, 1):
        call(fit_linear_estimates, *flags, "--num-shards", 2, "--shard-id", shard)
    try:
        disk_full_on(monkeypatch, "sharded_estimate_higher_order.npy")
        assert FULL in refused(merge_results, ["results/sharded_estimate.csv"], root, capsys)
        assert not Path("results/sharded_estimate.csv").exists()
    finally:
        for path in Path("results").glob("sharded*"):
            path.unlink()


@pytest.mark.parametrize("failing", ["g.json", "g.png"])
def test_a_full_disk_while_clustering_writes_no_groups_file(root, monkeypatch, capsys, failing):
    monkeypatch.chdir(root)
    disk_full_on(monkeypatch, failing)
    error = refused(run_clustering, ["--affinity", AFFINITY, "--k", "2", "--out", "g.txt"], root, capsys)
    assert error == f"error: cannot write {failing}: {FULL}"


def test_a_full_disk_while_training_theta_writes_no_part_of_the_checkpoint(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    disk_full_on(monkeypatch, "metrics.json")
    argv = [*TRAIN, "--epochs", "2", "--saved-dir", "saved_full"]
    assert (
        refused(train_multitask, argv, root, capsys) == f"error: cannot write saved_full/planted/all_seed0/metrics.json: {FULL}"
    )
    shutil.rmtree("saved_full", ignore_errors=True)  # the (empty) folders made before the write


def test_a_full_disk_while_collecting_gradients_is_one_line_and_the_finished_tasks_resume(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    out = "bad/grads_full"
    argv = ["--checkpoint", CKPT, "--project-dim", "8", "--no-progress", "--out", out, "--task-chunk", "1"]
    try:
        with monkeypatch.context() as patch:
            disk_full_on(patch, "task_2_train_outputs")
            status = exit_status(collect_gradients.main, collect_gradients.get_args_parser(), argv)
        errors = without_base_warnings(capsys.readouterr().err).splitlines()
        assert status == 2 and errors == [f"error: cannot write {out}/task_2_train_outputs.npy: {FULL}"]
        assert not list(Path(out).glob(".*.tmp"))
        call(collect_gradients, *argv)
        assert "(2 already done)" in capsys.readouterr().out
    finally:
        shutil.rmtree("bad", ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------- item 9
def test_ctrl_c_during_the_sdp_exits_130_interrupted_with_nothing_written(tmp_path):
    """SCS catches SIGINT itself and returns 'interrupted', which cvxpy reports as a solver failure: a SIGINT sent
    while SCS solves must end the script as an interrupt."""
    np.save(tmp_path / "T.npy", np.random.default_rng(0).normal(size=(200, 200)))
    # the signal is sent from inside the solve, so that it lands while SCS runs and not during the imports
    driver = (
        "import os, signal, sys, threading, scs\n"
        "real = scs.solve\n"
        "def solve(*args, **kwargs):\n"
        "    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        "    return real(*args, **kwargs)\n"
        "scs.solve = solve\n"
        f"sys.path.insert(0, {str(REPO)!r}); sys.argv = ['run_clustering.py', *sys.argv[1:]]\n"
        f"exec(compile(open({str(REPO / 'run_clustering.py')!r}).read(), 'run_clustering.py', 'exec'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", driver, "--affinity", "T.npy", "--k", "4", "--out", "g.txt"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 130, result
    assert result.stderr.splitlines() == ["error: interrupted (Ctrl-C); nothing half-written, finished work is kept"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["T.npy"]


def test_an_interrupt_inside_a_step_exits_130_with_one_line(monkeypatch, capsys):
    from gradtag.artifacts import run_main

    def interrupted(args):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        run_main(interrupted, None)
    assert exit_.value.code == 130
    assert capsys.readouterr().err.splitlines() == ["error: interrupted (Ctrl-C); nothing half-written, finished work is kept"]


@pytest.mark.parametrize(
    "module, argv, flag",
    [
        (run_clustering, ["--affinity", AFFINITY, "--k", "2", "--out", "/"], "--out"),
        (run_clustering, ["--affinity", AFFINITY, "--k", "2", "--out", "."], "--out"),
        (run_clustering, ["--affinity", AFFINITY, "--k", "2", "--out", "results/"], "--out"),
        (run_clustering, ["--affinity", AFFINITY, "--k", "2", "--out", "g.txt", "--heatmap", ".."], "--heatmap"),
        (sample_subsets, [*DATA, "--out", "."], "--out"),
        (compare_affinities, ["--estimated", ESTIMATE, "--trained", TRUTH, "--out", "/"], "--out"),
        (taylor_check, ["--checkpoint", CKPT, "--out", "results"], "--out"),
        (pipeline_summary, ["--groups", "g.json", "--write", "."], "--write"),
    ],
)
def test_an_output_flag_naming_a_folder_is_refused_naming_the_flag(root, monkeypatch, capsys, module, argv, flag):
    monkeypatch.chdir(root)
    error = refused(module, argv, root, capsys)
    assert f"argument {flag}: " in error and "is a folder, not a file; name a file" in error, error


# ---------------------------------------------------------------------------------------------------------- item 7
def test_compare_refuses_the_estimate_and_the_truth_swapped(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    error = refused(compare_affinities, ["--estimated", TRUTH, "--trained", ESTIMATE], root, capsys)
    assert error.startswith(f"error: --estimated {TRUTH} holds trained rows (source 'trained'), not an estimate"), error
    assert "fit_linear_estimates.py" in error
    error = refused(compare_affinities, ["--estimated", ESTIMATE, "--trained", ESTIMATE], root, capsys)
    assert error.startswith(f"error: --trained {ESTIMATE} holds estimate rows (source 'estimate'), not a trained truth")


@pytest.mark.parametrize("matrix", ["constant", "identity", "boolean identity"])
def test_an_affinity_with_no_structure_gives_exactly_k_groups_and_says_why(tmp_path, monkeypatch, capsys, matrix):
    monkeypatch.chdir(tmp_path)
    T = {"constant": np.full((4, 4), 0.5), "identity": np.eye(4), "boolean identity": np.eye(4, dtype=bool)}[matrix]
    np.save("T.npy", T)
    call(run_clustering, "--affinity", "T.npy", "--k", "2", "--out", "g.txt")
    captured = capsys.readouterr()
    summary = json.loads(Path("g.json").read_text())
    assert summary["n_groups"] == 2 and summary["groups"] == [[0, 1], [2, 3]]
    assert [line for line in captured.err.splitlines() if line.startswith("warning:")] == [
        "warning: T.npy has no structure to cluster: every pair of tasks has the same affinity, so every split into 2 "
        "groups scores the same; wrote 2 groups of consecutive tasks (check the step that made it)"
    ]


def test_a_structured_boolean_affinity_is_clustered_without_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.save("T.npy", np.kron(np.eye(2), np.ones((2, 2))).astype(bool)[[0, 2, 1, 3]][:, [0, 2, 1, 3]])
    call(run_clustering, "--affinity", "T.npy", "--k", "2", "--out", "g.txt")
    assert "warning" not in capsys.readouterr().err
    assert json.loads(Path("g.json").read_text())["groups"] == [[0, 2], [1, 3]]


@pytest.mark.parametrize(
    "groups, fragment",
    [
        ("0 1\n1 2 3\n", "puts task 1 in 2 groups (groups 1 and 2)"),
        ("0 1\n2\n", "leaves task 3 in no group"),
    ],
)
def test_grouped_training_with_baselines_refuses_a_groups_file_that_is_not_a_partition(
    root, monkeypatch, capsys, groups, fragment
):
    monkeypatch.chdir(root)
    Path("bad").mkdir(exist_ok=True)
    Path("bad/groups.txt").write_text(groups)
    try:
        error = refused(train_multitask, [*TRAIN, "--subsets-file", "bad/groups.txt", "--baselines"], root, capsys)
    finally:
        shutil.rmtree("bad", ignore_errors=True)
    assert error.startswith(f"error: bad/groups.txt {fragment}; --baselines compares grouped training"), error
    assert "list each task in exactly one group" in error


def test_disk_full_helper_fails_writes_midway(tmp_path, monkeypatch):
    """The simulated full disk itself: half the bytes land in the temporary, then ENOSPC, as on a real full disk."""
    failed = disk_full_on(monkeypatch, "x")
    target = tmp_path / ".x.tmp"
    with pytest.raises(OSError) as error:
        target.write_text("0123456789")
    assert error.value.errno == errno.ENOSPC and target.read_bytes() == b"01234" and failed == [".x.tmp"]

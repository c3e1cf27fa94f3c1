"""Shards and resumes as a user meets them: merges refuse wrong shard rows (one line naming the shard file, its line and
the fix; nothing written), a shard that owns no work finishes cleanly and merges, ``--launcher slurm`` without SLURM
is one line, and a resume or merge rests on the inputs' fingerprints, not on how their paths are spelled.

Reuses ``tests/test_shards.py``'s module fixture (θ*, its gradients, 9 subsets and the unsharded truth and estimate).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import collect_gradients
import fit_linear_estimates
import merge_results
import train_multitask
from gradtag.results import read_results, write_results
from tests import test_shards
from tests.conftest import exit_status
from tests.test_bad_inputs import refused, tree
from tests.test_shards import CKPT, DATA, ESTIMATE, GRADIENTS, TRUTH, call, expected, npy_files

root = test_shards.root  # θ*, its gradients, 9 subsets and the unsharded truth and estimate (module-scoped, read-only)

SHARDS = ["--num-shards", "3"]


# ------------------------------------------------------------------------------------------- item 3: wrong shard rows
@pytest.fixture(scope="module")
def shard_files(root, tmp_path_factory) -> Path:
    """The 3 truth and 3 estimate shard files of the unsharded fixture's run, not merged (read-only: tests copy it)."""
    folder = tmp_path_factory.mktemp("shard_files")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for shard in range(3):
            flags = [*SHARDS, "--shard-id", shard]
            call(train_multitask, [*TRUTH, "--results-dir", folder, "--results-name", "single", *flags])
            call(fit_linear_estimates, [*ESTIMATE, "--results-dir", folder, "--name", "single", *flags])
    return folder


def edit_line(path: Path, number: int, edit) -> None:
    """Replace line ``number`` (1-based; line 1 is the header) of CSV ``path`` by ``edit(fields)``'s fields."""
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = ",".join(edit(lines[number - 1].rstrip("\n").split(","))) + "\n"
    path.write_text("".join(lines))


def with_field(index: int, value: str):
    return lambda fields: [*fields[:index], value, *fields[index + 1 :]]


def duplicate_line(path: Path, number: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines, lines[number - 1]]))


def drop_line(path: Path, number: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: number - 1] + lines[number:]))


def row_of_another_shard(path: Path, _number: int) -> None:
    """Append shard 0's first row to ``path`` (a foreign row: two shards then hold the same subset, seed and task)."""
    other = path.with_name(path.name.replace("shard1of3", "shard0of3"))
    with open(path, "a") as fh:
        fh.write(other.read_text().splitlines(keepends=True)[1])


# shard 1 of the truth holds subsets 1, 4 and 7 ("2 3", "0 3", "1 2 3") at seed 0; of the estimate (batches of 2), 2 and 3
MERGE_CASES = {
    "row doubled": ("single", duplicate_line, 2, "single.shard1of3.csv:9", "single.shard1of3.csv:2"),
    "row of another shard": ("single", row_of_another_shard, 2, "single.shard1of3.csv:9", "single.shard0of3.csv:2"),
    "task not in its subset": ("single", lambda p, n: edit_line(p, n, with_field(2, "0")), 2, "csv:2", "task 0"),
    "subset id out of range": ("single", lambda p, n: edit_line(p, n, with_field(0, "99")), 3, "csv:3", "subset_id 99"),
    "subset text not the subset": ("single", lambda p, n: edit_line(p, n, with_field(1, "0 1")), 4, "csv:4", "'0 1'"),
    "seed not the run's": ("single", lambda p, n: edit_line(p, n, with_field(3, "7")), 5, "csv:5", "seed 7"),
    "a task's row missing": ("single", drop_line, 3, "single.shard1of3.csv", "task 3"),
    "estimate subset id out of range": (
        "single_estimate",
        lambda p, n: edit_line(p, n, with_field(0, "99")),
        2,
        "single_estimate.shard1of3.csv:2",
        "subset_id 99",
    ),
}


@pytest.mark.parametrize("case", list(MERGE_CASES))
def test_merge_refuses_a_wrong_shard_row_naming_the_file_line_and_fix(shard_files, tmp_path, capsys, case):
    name, damage, line, where, what = MERGE_CASES[case]
    folder = tmp_path / "results"
    shutil.copytree(shard_files, folder)
    damage(folder / f"{name}.shard1of3.csv", line)
    error = refused(merge_results, [folder / f"{name}.csv"], tmp_path, capsys)
    assert where in error and what in error, error
    assert "rerun" in error and "shard 1" in error, error  # the fix: which shard to redo


def test_valid_shard_files_still_merge_to_the_unsharded_bytes(root, shard_files, tmp_path):
    folder = tmp_path / "results"
    shutil.copytree(shard_files, folder)
    call(merge_results, [folder / "single.csv"])
    call(merge_results, [folder / "single_estimate.csv"])
    want = expected(root)
    assert (folder / "single.csv").read_bytes() == want["truth"]
    assert (folder / "single_estimate.csv").read_bytes() == want["estimate"]


# ------------------------------------------------------------------------------- item 4: a shard that owns no work
def test_an_estimate_shard_owning_no_batch_finishes_and_the_merge_matches_the_unsharded_run(root, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(root)
    estimate = [*ESTIMATE, "--batch-size", "5", "--name", "single"]  # 9 subsets: 2 batches for 3 shards
    call(fit_linear_estimates, [*estimate, "--results-dir", tmp_path / "whole"])
    for shard in range(3):
        capsys.readouterr()
        call(fit_linear_estimates, [*estimate, "--results-dir", tmp_path / "hand", *SHARDS, "--shard-id", shard])
    assert "shard 2 of 3 owns none of the 9 subsets" in capsys.readouterr().out
    assert read_results(tmp_path / "hand" / "single_estimate.shard2of3.csv") == []
    call(merge_results, [tmp_path / "hand" / "single_estimate.csv"])
    call(fit_linear_estimates, [*estimate, "--results-dir", tmp_path / "pool", *SHARDS, "--launcher", "local"])
    for out in ("hand", "pool"):
        for name in ("single_estimate.csv", "single_estimate_higher_order.npy"):
            assert (tmp_path / out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), (out, name)


def test_a_truth_shard_owning_no_subset_finishes_and_the_merge_matches_the_unsharded_run(root, monkeypatch, tmp_path):
    monkeypatch.chdir(root)
    (tmp_path / "two.txt").write_text("0 1\n2 3\n")
    truth = [*DATA, "--subsets-file", tmp_path / "two.txt", "--init-from", CKPT, "--fixed-steps", "3", "--no-progress"]
    call(train_multitask, [*truth, "--results-dir", tmp_path / "whole"])
    for shard in range(3):
        call(train_multitask, [*truth, "--results-dir", tmp_path / "hand", *SHARDS, "--shard-id", shard])
    call(merge_results, [tmp_path / "hand" / "two_finetune.csv"])
    assert (tmp_path / "hand" / "two_finetune.csv").read_bytes() == (tmp_path / "whole" / "two_finetune.csv").read_bytes()


def test_a_theta_star_shard_owning_no_run_says_so_and_writes_nothing(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    before = tree(root)
    argv = [*DATA, "--epochs", "2", "--runs", "1", *SHARDS, "--shard-id", "2", "--no-progress"]
    assert exit_status(train_multitask.main, train_multitask.get_args_parser(), argv) == 0
    assert "shard 2 of 3 owns no run (--runs 1); nothing to do" in capsys.readouterr().out
    assert tree(root) == before


@pytest.mark.parametrize("module", [train_multitask, fit_linear_estimates], ids=["truth", "estimate"])
def test_launcher_slurm_without_slurm_is_one_line_naming_the_fix(root, monkeypatch, tmp_path, capsys, module):
    pytest.importorskip("submitit")
    if shutil.which("srun"):
        pytest.skip("SLURM is installed here")
    monkeypatch.chdir(root)
    argv = [*TRUTH] if module is train_multitask else [*ESTIMATE]
    logs = tmp_path / "logs"
    argv += ["--results-dir", tmp_path, *SHARDS, "--launcher", "slurm", "--slurm-logs", logs]
    error = refused(module, argv, root, capsys)
    assert "--launcher slurm" in error and "--submitit-cluster local" in error and "login node" in error, error
    assert not logs.exists() and not list(tmp_path.iterdir())


# ----------------------------------------------------------------- item 8: identity by fingerprint, not by spelling
def spellings(folder: Path, relative: str) -> list[str]:
    """``relative`` (a folder under ``folder``, the current folder) spelled three ways: absolute, relative, ``./x/../x``."""
    first, rest = relative.split("/", 1)
    return [str(folder / relative), relative, f"./{first}/../{first}/{rest}"]


def keep_rows(path: Path, count: int) -> None:
    """Cut a truth CSV to its first ``count`` rows (whole models'), as a run killed after them leaves it."""
    write_results(path, read_results(path)[:count])


def test_a_truth_resumes_whichever_way_its_init_from_is_spelled(root, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(root)
    base = [arg for arg in TRUTH if arg != CKPT and arg != "--init-from"]
    csv_path = tmp_path / "single.csv"
    for rows, spelling in zip((0, 4, 10), spellings(root, CKPT), strict=True):
        if rows:
            keep_rows(csv_path, rows)
        call(train_multitask, [*base, "--init-from", spelling, "--results-dir", tmp_path, "--results-name", "single"])
    assert csv_path.read_bytes() == expected(root)["truth"]

    other = tmp_path / "other_base"  # the same folder but other weights: still refused
    shutil.copytree(root / CKPT, other)
    state = torch.load(other / "model.pt", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1.0
    torch.save(state, other / "model.pt")
    keep_rows(csv_path, 4)
    argv = [*base, "--init-from", other, "--results-dir", tmp_path, "--results-name", "single"]
    error = refused(train_multitask, argv, tmp_path, capsys)
    assert "single.json" in error and "init" in error, error


def test_shards_run_with_differently_spelled_inputs_merge_to_the_unsharded_bytes(root, monkeypatch, tmp_path):
    monkeypatch.chdir(root)
    gradients = ESTIMATE[ESTIMATE.index("--gradients") + 1]
    truth = [arg for arg in TRUTH if arg != CKPT and arg != "--init-from"]
    estimate = [arg for arg in ESTIMATE if arg != gradients and arg != "--gradients"]
    collect = [arg for arg in GRADIENTS if arg != CKPT and arg != "--checkpoint"]
    for shard, (checkpoint, folder) in enumerate(zip(spellings(root, CKPT), spellings(root, gradients), strict=True)):
        flags = [*SHARDS, "--shard-id", shard]
        call(train_multitask, [*truth, "--init-from", checkpoint, "--results-dir", tmp_path, "--results-name", "single", *flags])
        call(fit_linear_estimates, [*estimate, "--gradients", folder, "--results-dir", tmp_path, "--name", "single", *flags])
        call(collect_gradients, [*collect, "--checkpoint", checkpoint, "--out", tmp_path / "gradients", *flags])
    call(merge_results, [tmp_path / "single.csv"])
    call(merge_results, [tmp_path / "single_estimate.csv"])
    want = expected(root)
    assert (tmp_path / "single.csv").read_bytes() == want["truth"]
    assert (tmp_path / "single_estimate.csv").read_bytes() == want["estimate"]
    assert npy_files(tmp_path / "gradients") == want["gradients"]

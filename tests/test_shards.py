"""Shards and launchers: truths, gradients and estimates cut into 3 shards — by hand, with a local pool, with Ray (a
local cluster of 2 workers) and with submitit's local executor — merge to the bytes of one unsharded run; a shard
killed mid-run and rerun, and shards writing into one folder at once, lose nothing; bad merges are refused.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import collect_gradients
import fit_linear_estimates
import merge_results
import train_multitask
from gradtag.artifacts import UsageError
from steps.merge import merge_shards
from steps.partition import shard_indices
from tests.conftest import REPO, TINY_PLANTED_FLAGS

DATA = [*TINY_PLANTED_FLAGS, "--data-dir", "planted"]
CKPT = "saved/planted/all_seed0"
SUBSETS = "sampled_tasks/tiny.txt"
TRUTH = [*DATA, "--subsets-file", SUBSETS, "--init-from", CKPT, "--fixed-steps", "3", "--no-progress"]
ESTIMATE = ["--gradients", "gradients/planted/all_seed0_d8", "--subsets-file", SUBSETS, "--batch-size", "2", "--no-progress"]
GRADIENTS = ["--checkpoint", CKPT, "--project-dim", "8", "--task-chunk", "1", "--no-progress"]


def call(module, argv) -> None:
    module.main(module.get_args_parser().parse_args([str(arg) for arg in argv]))


def npy_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(Path(folder).glob("task_*.npy"))}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """θ*, its gradients, 9 subsets, and the unsharded truth, estimate and gradients to compare with (read-only)."""
    folder = tmp_path_factory.mktemp("shards")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        call(train_multitask, [*DATA, "--epochs", "20", "--patience", "5", "--no-progress"])
        Path(SUBSETS).parent.mkdir()
        Path(SUBSETS).write_text("0 1\n2 3\n0 2\n1 3\n0 3\n1 2\n0 1 2\n1 2 3\n0 1 2 3\n")
        call(collect_gradients, [*GRADIENTS])
        call(train_multitask, [*TRUTH, "--results-name", "single"])
        call(fit_linear_estimates, [*ESTIMATE, "--name", "single"])
    return folder


def expected(root: Path) -> dict[str, bytes]:
    results = root / "results"
    return {
        "truth": (results / "single.csv").read_bytes(),
        "estimate": (results / "single_estimate.csv").read_bytes(),
        "affinity": (results / "single_estimate_higher_order.npy").read_bytes(),
        "gradients": npy_files(root / "gradients" / "planted" / "all_seed0_d8"),
    }


def sharded_run(launcher_flags: list[str], out: Path) -> dict[str, bytes]:
    """Truth, estimate and gradients as 3 shards through ``launcher_flags``, into ``out``; their merged bytes."""
    shards = ["--num-shards", "3", *launcher_flags]
    call(train_multitask, [*TRUTH, "--results-dir", out, "--results-name", "single", *shards])
    call(fit_linear_estimates, [*ESTIMATE, "--results-dir", out, "--name", "single", *shards])
    call(collect_gradients, [*GRADIENTS, "--out", out / "gradients", *shards])
    return {
        "truth": (out / "single.csv").read_bytes(),
        "estimate": (out / "single_estimate.csv").read_bytes(),
        "affinity": (out / "single_estimate_higher_order.npy").read_bytes(),
        "gradients": npy_files(out / "gradients"),
    }


def test_shards_cut_blocks_round_robin_and_cover_every_item_once():
    assert shard_indices(7, 3, 1) == [1, 4]
    assert shard_indices(10, 2, 1, block=3) == [3, 4, 5, 9]
    assert sorted(i for k in range(3) for i in shard_indices(11, 3, k, block=2)) == list(range(11))


def test_shards_by_hand_merge_to_the_unsharded_bytes(root, monkeypatch, tmp_path):
    monkeypatch.chdir(root)
    for shard in range(3):
        flags = ["--num-shards", "3", "--shard-id", shard]
        call(train_multitask, [*TRUTH, "--results-dir", tmp_path, "--results-name", "single", *flags])
        call(fit_linear_estimates, [*ESTIMATE, "--results-dir", tmp_path, "--name", "single", *flags])
        call(collect_gradients, [*GRADIENTS, "--out", tmp_path / "gradients", *flags])
    call(merge_results, [tmp_path / "single.csv"])
    call(merge_results, [tmp_path / "single_estimate.csv"])
    want = expected(root)
    assert (tmp_path / "single.csv").read_bytes() == want["truth"]
    assert (tmp_path / "single_estimate.csv").read_bytes() == want["estimate"]
    assert (tmp_path / "single_estimate_higher_order.npy").read_bytes() == want["affinity"]
    assert npy_files(tmp_path / "gradients") == want["gradients"]
    sidecars = [json.loads((tmp_path / f"single.shard{k}of3.json").read_text()) for k in range(3)]
    merged = json.loads((tmp_path / "single.json").read_text())
    assert merged["flops"] == sum(sidecar["flops"] for sidecar in sidecars) and "shard" not in merged


def test_calibrated_estimate_shards_merge_and_sum_their_sweeps(root, monkeypatch, tmp_path):
    """Each shard runs the calibration sweep (its cost differs per shard): the merge accepts them as one run, writes
    the unsharded run's bytes and counts every shard's sweep."""
    monkeypatch.chdir(root)
    calibrated = [*ESTIMATE, "--calibrate-with", "results/single.csv", "--l2-grid", "0.1", "1", "--no-count-flops"]
    call(fit_linear_estimates, [*calibrated, "--results-dir", tmp_path / "one", "--name", "single"])
    for shard in range(2):
        flags = ["--num-shards", "2", "--shard-id", shard]
        call(fit_linear_estimates, [*calibrated, "--results-dir", tmp_path, "--name", "single", *flags])
    call(merge_results, [tmp_path / "single_estimate.csv"])
    assert (tmp_path / "single_estimate.csv").read_bytes() == (tmp_path / "one" / "single_estimate.csv").read_bytes()
    sweeps = [json.loads((tmp_path / f"single_estimate.shard{k}of2.json").read_text())["calibration"]["cost"] for k in range(2)]
    merged = json.loads((tmp_path / "single_estimate.json").read_text())["calibration"]
    assert merged["cost"]["seconds"] == pytest.approx(sum(sweep["seconds"] for sweep in sweeps))
    assert merged["chosen_l2"] == json.loads((tmp_path / "one" / "single_estimate.json").read_text())["calibration"]["chosen_l2"]


@pytest.mark.parametrize(
    "launcher",
    [
        ["--launcher", "local", "--workers", "2"],
        ["--launcher", "ray", "--workers", "2"],
        ["--launcher", "slurm", "--submitit-cluster", "local"],
    ],
    ids=["local", "ray", "submitit-local"],
)
def test_launched_shards_merge_to_the_unsharded_bytes(root, monkeypatch, tmp_path, launcher):
    if launcher[1] == "ray":
        pytest.importorskip("ray")
    if launcher[1] == "slurm":
        pytest.importorskip("submitit")
        launcher = [*launcher, "--slurm-logs", str(tmp_path / "logs")]
    monkeypatch.chdir(root)
    assert sharded_run(launcher, tmp_path / "out") == expected(root)


def test_a_killed_shard_rerun_and_shards_running_at_once_give_the_same_merged_bytes(root, monkeypatch, tmp_path):
    monkeypatch.chdir(root)
    out = tmp_path / "out"
    script = str(REPO / "train_multitask.py")
    argv = [*map(str, TRUTH), "--results-dir", str(out), "--results-name", "single", "--num-shards", "3"]
    # shards 0 and 2 run at once, in two processes, into one folder; shard 1 is killed after its first rows
    others = [subprocess.Popen([sys.executable, script, *argv, "--shard-id", str(k)], cwd=root) for k in (0, 2)]
    killed = subprocess.Popen([sys.executable, script, *argv, "--shard-id", "1"], cwd=root, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while killed.poll() is None and not (out / "single.shard1of3.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert [proc.wait(timeout=120) for proc in others] == [0, 0]
    with pytest.raises(UsageError, match="rerun the unfinished shards|missing"):
        merge_shards(out / "single.csv")  # shard 1 is unfinished (or never wrote a row)
    call(train_multitask, [*TRUTH, "--results-dir", out, "--results-name", "single", "--num-shards", "3", "--shard-id", "1"])
    merge_shards(out / "single.csv")
    assert (out / "single.csv").read_bytes() == expected(root)["truth"]


def test_merge_refuses_missing_and_foreign_shards(root, monkeypatch, tmp_path):
    monkeypatch.chdir(root)
    for shard in (0, 1):
        flags = ["--num-shards", "3", "--shard-id", shard]
        call(train_multitask, [*TRUTH, "--results-dir", tmp_path, "--results-name", "single", *flags])
    with pytest.raises(UsageError, match=r"shards \[2\] of 3 are missing"):
        merge_shards(tmp_path / "single.csv")
    shutil.copy(tmp_path / "single.shard1of3.csv", tmp_path / "single.shard2of3.csv")
    sidecar = json.loads((tmp_path / "single.shard1of3.json").read_text())
    sidecar["shard"]["shard_id"] = 2
    sidecar["training"]["lr"] = 0.5  # a shard of another run
    (tmp_path / "single.shard2of3.json").write_text(json.dumps(sidecar))
    with pytest.raises(UsageError, match=r"another run .*\['training'\]"):
        merge_shards(tmp_path / "single.csv")


def test_step_3_from_another_folder_finds_its_base_and_the_cache_moves_with_an_env_variable(root, monkeypatch, tmp_path):
    """Gradients record their checkpoint relative to themselves: step 3 run elsewhere still finds θ*'s weights and cost;
    GRADTAG_CACHE_DIR puts the feature cache where it says, not under the working folder."""
    monkeypatch.chdir(tmp_path)  # the recorded "saved/planted/all_seed0" does not exist from here
    monkeypatch.setenv("GRADTAG_CACHE_DIR", str(tmp_path / "node_cache"))
    gradients = root / "gradients" / "planted" / "all_seed0_d8"
    argv = ["--gradients", gradients, "--subsets-file", root / SUBSETS, "--eval", "reconstructed", "--no-progress"]
    call(fit_linear_estimates, [*argv, "--data-dir", tmp_path / "planted", "--no-count-flops"])
    sidecar = json.loads((tmp_path / "results" / "tiny_estimate.json").read_text())
    assert sidecar["one_off"]["seconds"] is not None  # θ*'s metrics.json was found
    assert Path(sidecar["bases"][0]["checkpoint"]).resolve() == (root / CKPT).resolve()
    assert list((tmp_path / "node_cache").rglob("features_*.pt")) and not (tmp_path / "datasets" / "cache").exists()


def test_every_cost_record_has_cpu_seconds_and_threads_are_set(root, monkeypatch, tmp_path):
    monkeypatch.chdir(root)
    records = [
        root / CKPT / "metrics.json",
        root / "gradients" / "planted" / "all_seed0_d8" / "cost_shard0of1.json",
        root / "results" / "single.json",
        root / "results" / "single_estimate.json",
    ]
    for path in records:
        record = json.loads(path.read_text())
        assert record["cpu_seconds"] > 0 and record["seconds"] > 0, path
    import torch

    threads = torch.get_num_threads()
    try:
        call(fit_linear_estimates, [*ESTIMATE, "--results-dir", tmp_path, "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)

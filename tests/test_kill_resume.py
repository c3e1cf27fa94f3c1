"""Kill tests: a step killed by SIGKILL at a random point and then rerun finishes with the same bytes as an
uninterrupted run, and records at least the uninterrupted run's cost.

The killed run is a real subprocess (``python script.py``), killed a random delay after its first output appears (or,
for step 3, whose outputs appear at once at the end, a random delay after it starts); the rerun and the uninterrupted
reference run in-process, on one thread like the subprocess.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import collect_gradients
import fit_linear_estimates
import sample_subsets
import train_multitask
from tests.conftest import REPO

PLANTED = ["--planted-nodes", "1200", "--num-tasks", "8", "--planted-groups", "2", "--planted-core-size", "100"]
PLANTED += ["--planted-seed", "1", "--data-dir", "planted"]
COST_KEYS = ("seconds", "flops", "cpu_seconds")


def call(module, argv: list[str]) -> None:
    module.main(module.get_args_parser().parse_args([str(arg) for arg in argv]))


def files(folder: Path) -> dict[str, bytes]:
    """Every visible file under ``folder`` by relative path, JSON files without their cost and argument fields (a
    rerun's seconds differ; its FLOPs are checked apart)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        data = path.read_bytes()
        if path.suffix == ".json":
            record = json.loads(data)
            if isinstance(record, dict):
                record = {key: value for key, value in record.items() if key not in (*COST_KEYS, "args", "versions")}
            data = json.dumps(record, sort_keys=True).encode()
        found[str(path.relative_to(folder))] = data
    return found


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """θ*, its gradients and a subsets file on a 1,200-node planted graph with 8 tasks (read-only for the tests)."""
    root = tmp_path_factory.mktemp("kill")
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        call(train_multitask, [*PLANTED, "--epochs", "30", "--patience", "5", "--no-progress"])
        call(collect_gradients, ["--checkpoint", "saved/planted/all_seed0", "--project-dim", "16", "--no-progress"])
        call(sample_subsets, [*PLANTED[:-2], "--num-subsets", "40", "--subset-size", "3"])
    return root


def steps(root: Path, out: Path) -> dict[str, tuple]:
    """Per step: (script module, its argv writing under ``out``, the output folder, where its cost is recorded)."""
    subsets = root / "sampled_tasks" / "planted_m40_a3_s0.txt"
    checkpoint = root / "saved" / "planted" / "all_seed0"
    return {
        "truth": (
            train_multitask,
            [*PLANTED, "--subsets-file", subsets, "--init-from", checkpoint, "--results-dir", out, "--no-progress"],
            out,
            out / "planted_m40_a3_s0_finetune.json",
        ),
        "gradients": (
            collect_gradients,
            [
                "--checkpoint",
                checkpoint,
                "--project-dim",
                "16",
                "--out",
                out,
                "--task-chunk",
                "1",
                "--batch-size",
                "32",
                "--no-progress",
            ],
            out,
            out / "cost_shard0of1.json",
        ),
        "estimate": (
            fit_linear_estimates,
            [
                "--gradients",
                root / "gradients" / "planted" / "all_seed0_d16",
                "--subsets-file",
                subsets,
                "--results-dir",
                out,
                "--no-progress",
            ],
            out,
            out / "planted_m40_a3_s0_estimate.json",
        ),
    }


def run_and_kill(module, argv: list, out: Path, cwd: Path, rng: random.Random) -> bool:
    """Start ``module``'s script, SIGKILL it a random delay after its first file appears under ``out`` (after its
    start if it writes everything at the end); True when the kill landed before the script finished."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    script = REPO / f"{module.__name__}.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), *map(str, argv)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if module is fit_linear_estimates:
        time.sleep(rng.uniform(0.5, 5.0))
    else:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not any(out.glob("*.npy")) and not any(out.glob("*.csv")):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
    finished = proc.poll() is not None
    if not finished:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return not finished


@pytest.mark.parametrize("step", ["truth", "gradients", "estimate"])
def test_killed_run_resumes_to_the_same_bytes_and_keeps_its_cost(prepared, tmp_path, monkeypatch, step):
    monkeypatch.chdir(prepared)
    reference = tmp_path / "reference"
    module, argv, _, cost_path = steps(prepared, reference)[step]
    call(module, argv)
    expected, expected_cost = files(reference), json.loads(cost_path.read_text())
    kills = 0
    for seed in range(3):
        out = tmp_path / f"killed{seed}"
        module, argv, _, cost_path = steps(prepared, out)[step]
        kills += run_and_kill(module, argv, out, prepared, random.Random(seed))
        call(module, argv)
        assert files(out) == expected, f"seed {seed}: the resumed {step} differs from the uninterrupted run"
        assert json.loads(cost_path.read_text())["flops"] >= expected_cost["flops"], f"seed {seed}: cost lost"
        shutil.rmtree(out)
    assert kills >= 1, f"no kill landed while the {step} step ran; the test did not test a resume"

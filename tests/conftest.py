"""Shared test helpers: tiny planted settings, a working folder per test, SNAP-format files, running the scripts.

Every test that loads data or runs a script works inside its own ``tmp_path`` (``workdir``), because
``load_dataset`` caches features under ``datasets/cache`` relative to the current folder: nothing is written into
the repository.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from gradtag.artifacts import run_main

# One BLAS thread, here and in the scripts the tests start: on a busy 2-core machine OpenBLAS's spinning threads
# made a 300-node dense eigensolve take 2.3 s instead of 0.01 s. Results do not depend on it; test time does.
os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"
threadpool_limits(1, user_api="blas")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # optional real data, absent for users

# A planted graph small enough for a test: 300 nodes, 2 groups of 2 tasks, 40-node cores; its own generator seed, so
# that a new default seed of the full-size embedded default does not change the tests' data.
TINY_PLANTED = dict(planted_nodes=300, num_tasks=4, planted_groups=2, planted_core_size=40, planted_seed=1)
TINY_PLANTED_FLAGS = [
    *("--planted-nodes", "300", "--num-tasks", "4", "--planted-groups", "2", "--planted-core-size", "40"),
    *("--planted-seed", "1"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """``tmp_path``, made the current folder for the test (the feature cache lands there, not in the repo)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_snap(folder: Path, name: str, edges: str, communities: str, gz: bool = False) -> None:
    """Write ``com-<name>.ungraph.txt`` and ``com-<name>.top5000.cmty.txt`` (gzipped with ``gz``) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, text in ((f"com-{name}.ungraph.txt", edges), (f"com-{name}.top5000.cmty.txt", communities)):
        if gz:
            with gzip.open(folder / f"{stem}.gz", "wt") as fh:
                fh.write(text)
        else:
            (folder / stem).write_text(text)


def run_script(script: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a top-level script of the repository in a subprocess, as a user would, from ``cwd``."""
    return subprocess.run([sys.executable, str(REPO / script), *argv], cwd=cwd, capture_output=True, text=True, timeout=300)


def exit_status(main, parser, argv: list[str]) -> int:
    """What ``python script.py argv`` exits with, in-process: ``run_main`` turns a UsageError into status 2."""
    try:
        run_main(main, parser.parse_args(argv))
    except SystemExit as exit_:
        return exit_.code
    return 0


def without_base_warnings(err: str) -> str:
    """``err`` without the ``warning: base ... looks degenerate`` lines steps 2-3 print about a θ* (the tiny test θ*,
    one training positive per task, is memorised): what is left is what a bad input printed."""
    return "".join(line for line in err.splitlines(keepends=True) if not line.startswith("warning: base "))

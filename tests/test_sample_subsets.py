"""sample_subsets.py and gradtag.subsets: sizes, distinctness, uniformity, determinism per seed, the pairs file,
n from the dataset's defaults without loading it, and refusals (too many subsets, overwrite)."""

import math
from collections import Counter

import pytest

from data import num_tasks_of
from gradtag.artifacts import UsageError
from gradtag.results import read_subsets
from gradtag.subsets import all_pairs, sample_subsets, subsets_file_path
from sample_subsets import get_args_parser, main
from tests.conftest import exit_status, run_script


def sample(*argv: str) -> None:
    main(get_args_parser().parse_args(list(argv)))


@pytest.mark.parametrize("num_tasks, num_subsets, subset_size", [(20, 200, 5), (6, 15, 2), (6, 12, 4), (5, 1, 5)])
def test_sample_subsets_sizes_distinct_sorted_and_seeded(num_tasks, num_subsets, subset_size):
    # (6, 15, 2) takes every pair and (6, 12, 4) most 4-sets: the enumeration path; (20, 200, 5) the rejection path.
    subsets = sample_subsets(num_tasks, num_subsets, subset_size, seed=0)
    assert len(subsets) == num_subsets == len(set(subsets))
    for subset in subsets:
        assert len(subset) == subset_size and list(subset) == sorted(set(subset))
        assert all(isinstance(task, int) and 0 <= task < num_tasks for task in subset)
    assert sample_subsets(num_tasks, num_subsets, subset_size, seed=0) == subsets
    if num_subsets < math.comb(num_tasks, subset_size):
        assert sample_subsets(num_tasks, num_subsets, subset_size, seed=1) != subsets


def test_sample_subsets_is_uniform():
    # One 2-subset of 5 tasks per seed: each of the 10 pairs should come up about 1/10 of the time.
    counts = Counter(sample_subsets(5, 1, 2, seed)[0] for seed in range(4000))
    assert len(counts) == 10
    assert all(abs(count / 4000 - 0.1) < 0.02 for count in counts.values()), counts
    # Every task equally likely in larger draws too: 20 tasks, subsets of 5, 2000 subsets -> 500 per task.
    tasks = Counter(task for subset in sample_subsets(20, 2000, 5, seed=0) for task in subset)
    assert all(abs(count - 500) < 90 for count in tasks.values()), tasks


@pytest.mark.parametrize(
    "args, message",
    [((4, 7, 2), "at most 6"), ((4, 1, 5), "--subset-size 5"), ((4, 1, 0), "--subset-size 0"), ((4, 0, 2), "at least 1")],
)
def test_sample_subsets_rejects_impossible_requests(args, message):
    with pytest.raises(UsageError, match=message):
        sample_subsets(*args, seed=0)


def test_all_pairs():
    assert all_pairs(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert len(all_pairs(20)) == 190
    with pytest.raises(UsageError):
        all_pairs(1)


def test_num_tasks_from_dataset_defaults_without_loading():
    assert num_tasks_of("planted", {}) == 20
    assert num_tasks_of("planted", {"num_tasks": 8, "planted_groups": None}) == 8
    assert num_tasks_of("dblp", {"num_tasks": None}) == 100
    assert num_tasks_of("amazon_clare", {"num_tasks": 30}) == 30
    with pytest.raises(UsageError, match="multiple of --planted-groups 4"):
        num_tasks_of("planted", {"num_tasks": 6})


def test_script_writes_default_path_with_header(workdir, capsys):
    sample("--dataset", "dblp", "--num-subsets", "50", "--subset-size", "10", "--seed", "3")  # dblp is not loaded
    path = workdir / "sampled_tasks" / "dblp_m50_a10_s3.txt"
    assert path == workdir / subsets_file_path("dblp", 50, 10, 3)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and str(path.relative_to(workdir)) in out and "50 subsets" in out
    subsets = read_subsets(path, 100)
    assert subsets == sample_subsets(100, 50, 10, seed=3)
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(all(field in line for field in ("dataset=dblp", "n=100", "m=50", "a=10", "seed=3")) for line in header)
    assert list(workdir.iterdir()) == [workdir / "sampled_tasks"]  # no dataset folder, no feature cache

    sample("--dataset", "dblp", "--num-subsets", "50", "--subset-size", "10", "--seed", "4")
    assert read_subsets(workdir / "sampled_tasks" / "dblp_m50_a10_s4.txt", 100) != subsets


def test_script_pairs_file(workdir):
    sample("--num-tasks", "8", "--pairs")  # planted with 8 tasks (2 per group of the default 4 groups)
    path = workdir / "sampled_tasks" / "planted_pairs.txt"
    subsets = read_subsets(path, 8)
    assert len(subsets) == 8 * 7 // 2 and set(subsets) == set(all_pairs(8))
    assert "n=8" in path.read_text().splitlines()[0]
    with pytest.raises(UsageError, match="--pairs"):
        sample("--num-tasks", "8", "--pairs", "--subset-size", "3", "--out", str(workdir / "other.txt"))


def test_script_refuses_overwrite_and_too_many(workdir, capsys):
    out = workdir / "mine.txt"
    sample("--num-tasks", "4", "--planted-groups", "2", "--num-subsets", "3", "--subset-size", "2", "--out", str(out))
    before = out.read_text()
    flags = ["--num-tasks", "4", "--planted-groups", "2", "--num-subsets", "2", "--subset-size", "2", "--out", str(out)]
    assert exit_status(main, get_args_parser(), flags) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == before
    sample(*flags, "--overwrite")
    assert len(read_subsets(out, 4)) == 2

    proc = run_script(
        "sample_subsets.py",
        *["--num-tasks", "4", "--planted-groups", "2", "--num-subsets", "7", "--subset-size", "2", "--out", "too_many.txt"],
        cwd=workdir,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "at most 6" in proc.stderr
    assert not (workdir / "too_many.txt").exists()


def test_help_documents_every_flag():
    assert [action.dest for action in get_args_parser()._actions if not (action.help or "").strip()] == []

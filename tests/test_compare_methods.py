"""compare_methods.py (the paper's Table 3 from one command) and its helpers in steps.methods."""

from __future__ import annotations

import json

import numpy as np
import pytest

import compare_methods
from gradtag.artifacts import UsageError, write_json
from gradtag.results import write_results
from steps.methods import LABELS, METHODS, Cost, MethodRow, format_table, partition_score, planted_ari, random_groups
from tests.conftest import TINY_PLANTED_FLAGS, exit_status


def test_random_groups_partition_evenly_and_repeat_per_seed():
    groups = random_groups(10, 3, seed=4)
    assert sorted(task for group in groups for task in group) == list(range(10))
    assert sorted(len(group) for group in groups) == [3, 3, 4]
    assert random_groups(10, 3, seed=4) == groups
    assert any(random_groups(10, 3, seed=seed) != groups for seed in range(5, 10))
    with pytest.raises(UsageError, match="--k 11"):
        random_groups(10, 11, seed=0)


def test_costs_add_and_unknown_flops_stay_unknown():
    total = Cost(1.0, 2.0, 10.0) + Cost(0.5, 0.25, 5.0)
    assert (total.seconds, total.cpu_seconds, total.flops) == (1.5, 2.25, 15.0)
    assert (Cost(1.0, 1.0, None) + total).flops is None
    with pytest.raises(UsageError, match="records no cost"):
        Cost.of_record({"flops": 3}, "x.json")


def test_partition_score_averages_each_task_once_and_refuses_a_partial_csv(tmp_path):
    zeros = {f"{split}_{kind}": 0.0 for split in ("val", "test") for kind in ("loss", "f1", "accuracy")}
    cells = [(0, "0 1", 0, 0.2), (0, "0 1", 1, 0.4), (1, "2", 2, 0.9)]
    full = [
        {"subset_id": index, "subset": subset, "task": task, "seed": 0, **zeros, "distance": 0.0, "source": "trained"}
        | {"test_f1": f1}
        for index, subset, task, f1 in cells
    ]
    write_results(tmp_path / "g.csv", full)
    assert partition_score(tmp_path / "g.csv", [[0, 1], [2]], "f1") == pytest.approx(0.5)
    with pytest.raises(UsageError, match="one model per group"):
        partition_score(tmp_path / "g.csv", [[0, 1], [2], [3]], "f1")
    (tmp_path / "planted.txt").write_text("0 1\n2 3\n")
    assert planted_ari([[0, 1], [2, 3]], tmp_path / "planted.txt", 4) == pytest.approx(1.0)
    assert planted_ari([[0, 2], [1, 3]], tmp_path / "planted.txt", 4) < 0


def test_table_shows_mean_and_spread_over_draws():
    rows = [
        MethodRow("stl", [4], [0.5], Cost(), Cost(2.0, 1.0, 1e9), []),
        MethodRow("random", [2, 2], [0.4, 0.6], Cost(), Cost(3.0, 2.0, 2e9), [0.1, 0.3]),
    ]
    lines = format_table(rows, "f1")
    assert "macro-F1" in lines[0]
    assert lines[2].startswith(f"| {LABELS['stl']} | 4 | 50.0 |")
    assert "50.0 ± 10.0" in lines[3] and "0.200 ± 0.100" in lines[3]


def test_compare_methods_runs_every_method_on_the_tiny_planted_graph(workdir):
    flags = [
        *TINY_PLANTED_FLAGS,
        *("--k", "2", "--runs", "2", "--random-draws", "2", "--num-subsets", "6", "--subset-size", "2"),
        *("--calibrate", "0", "--project-dim", "16", "--tag-every", "5", "--threads", "1", "--no-progress"),
        *("--train-args", "--epochs 20 --patience 5", "--truth-args", "--fixed-steps 5", "--work-dir", "t3"),
    ]
    parser = compare_methods.get_args_parser()
    assert exit_status(compare_methods.main, parser, flags) == 0
    table = json.loads((workdir / "t3" / "table3.json").read_text())
    assert [row["method"] for row in table["rows"]] == list(METHODS)
    assert (table["num_tasks"], table["k"], table["metric"]) == (4, 2, "f1")
    by_method = {row["method"]: row for row in table["rows"]}
    assert by_method["stl"]["groups"] == [4] and by_method["mtl"]["groups"] == [1]
    assert by_method["random"]["groups"] == [2, 2] and len(by_method["random"]["scores"]) == 2
    for method, row in by_method.items():
        assert all(0.0 <= score <= 1.0 for score in row["scores"]), method
        assert row["train"]["seconds"] > 0 and row["train"]["flops"] > 0, method
        assert len(row["aris"]) == len(row["scores"]), method  # the planted groups were found and scored against
        baseline = method in ("stl", "mtl", "random")
        assert (row["find"]["seconds"] == 0) == baseline, method
    # M = 2 costs more to find than M = 1: two θ* trainings and two gradient collections
    assert by_method["gradtag5"]["find"]["flops"] > by_method["gradtag1"]["find"]["flops"]
    markdown = (workdir / "t3" / "table3.md").read_text()
    assert all(label in markdown for label in LABELS.values())
    memberships = np.load(workdir / "t3" / "results" / "datamaps_groups_memberships.npy")
    assert memberships.shape == (2, 4) and np.allclose(memberships.sum(axis=0), 1.0)
    # a second run into the same folder is refused unless asked to overwrite; nothing changes
    before = (workdir / "t3" / "table3.md").read_bytes()
    assert exit_status(compare_methods.main, parser, flags) == 2
    assert (workdir / "t3" / "table3.md").read_bytes() == before


def test_compare_methods_refuses_a_k_larger_than_the_task_count(workdir, capsys):
    flags = [*TINY_PLANTED_FLAGS, "--k", "5", "--methods", "stl", "--work-dir", "t3", "--no-progress"]
    assert exit_status(compare_methods.main, compare_methods.get_args_parser(), flags) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --k 5") and "\n" not in error
    assert not (workdir / "t3" / "table3.md").exists()


def test_a_record_without_cost_is_a_usage_error(tmp_path):
    write_json(tmp_path / "metrics.json", {"tasks": [0]})
    from steps.methods import checkpoint_cost

    with pytest.raises(UsageError, match="records no cost"):
        checkpoint_cost(tmp_path)


def test_compare_methods_runs_text_tasks_with_the_same_contract(workdir):
    """The text domain through compare_methods.py: a tiny BERT with LoRA on a tiny embedded text default, scored by
    accuracy, its planted instruction groups found by the generated default."""
    from tests.test_text_pipeline import DATA, tiny_bert_folder

    tiny_bert_folder(workdir / "tinybert")
    model = "--text-model tinybert --lora-rank 2 --epochs 2"
    flags = [
        *DATA,
        *("--methods", "mtl", "datamaps", "tag", "exact", "gradtag1", "--num-subsets", "6", "--subset-size", "2"),
        *("--calibrate", "0", "--project-dim", "16", "--tag-every", "2", "--threads", "1", "--no-progress"),
        *("--train-args", model, "--truth-args", "--fixed-steps 2", "--work-dir", "t3"),
    ]
    assert exit_status(compare_methods.main, compare_methods.get_args_parser(), flags) == 0
    table = json.loads((workdir / "t3" / "table3.json").read_text())
    assert (table["num_tasks"], table["k"], table["metric"]) == (4, 2, "accuracy")
    assert [row["method"] for row in table["rows"]] == ["mtl", "datamaps", "tag", "exact", "gradtag1"]
    for row in table["rows"]:
        assert all(0.0 <= score <= 1.0 for score in row["scores"]) and len(row["aris"]) == 1, row["method"]
    assert "avg test accuracy" in (workdir / "t3" / "table3.md").read_text()

"""The whole pipeline once, on a tiny planted graph in ``tmp_path``, the way scripts/planted.sh chains it: train θ*,
collect projected gradients, sample subsets, estimate, train the fine-tuned truth, compare, cluster, train the groups
against STL and naive MTL, summarise — checking what each step wrote and that the next step read it. Plus ``--help``
of every top-level script."""

from __future__ import annotations

import json

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
from gradtag.results import RESULT_COLUMNS, read_results, read_subsets
from tests.conftest import TINY_PLANTED_FLAGS, exit_status

SCRIPTS = {
    "train_multitask.py": train_multitask,
    "collect_gradients.py": collect_gradients,
    "sample_subsets.py": sample_subsets,
    "fit_linear_estimates.py": fit_linear_estimates,
    "compare_affinities.py": compare_affinities,
    "run_clustering.py": run_clustering,
    "pipeline_summary.py": pipeline_summary,
    "merge_results.py": merge_results,
    "taylor_check.py": taylor_check,
}


def call(module, *argv: str) -> None:
    module.main(module.get_args_parser().parse_args([str(arg) for arg in argv]))


def test_every_step_end_to_end_on_tiny_planted_data(workdir, capsys):
    training = [*TINY_PLANTED_FLAGS, "--epochs", "20", "--patience", "5", "--no-progress", "--data-dir", "planted"]
    name = "planted_m4_a3_s0"  # m = 4 subsets of a = 3 out of n = 4 tasks: every pair in 2 subsets
    planted = workdir / "planted" / "planted_groups.txt"

    # step 1: the meta-initialization θ*
    call(train_multitask, *training)
    checkpoint = workdir / "saved" / "planted" / "all_seed0"
    assert {path.name for path in checkpoint.iterdir()} == {"model.pt", "config.json", "metrics.json"}
    assert read_subsets(planted, 4) == [(0, 1), (2, 3)]

    # step 2: projected gradients, in the default folder <gradients>/<dataset>/<run>_d<dim>
    call(collect_gradients, "--checkpoint", checkpoint, "--project-dim", 8, "--no-progress")
    gradients = workdir / "gradients" / "planted" / "all_seed0_d8"
    assert (gradients / "projection.json").is_file() and (gradients / "config.json").is_file()
    assert len(list(gradients.glob("task_*_*.npy"))) == 4 * 2 * 4  # tasks x (train, val) x 4 kinds

    # sampling: the default file name under sampled_tasks/
    call(sample_subsets, *TINY_PLANTED_FLAGS, "--num-subsets", 4, "--subset-size", 3, "--seed", 0)
    subsets_file = workdir / "sampled_tasks" / f"{name}.txt"
    subsets = read_subsets(subsets_file, 4)
    assert sorted(subsets) == [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)]

    # step 3: estimates and the higher-order affinity
    call(fit_linear_estimates, "--gradients", gradients, "--subsets-file", subsets_file, "--no-progress")
    estimate_csv = workdir / "results" / f"{name}_estimate.csv"
    affinity = workdir / "results" / f"{name}_estimate_higher_order.npy"
    assert len(read_results(estimate_csv)) == 12 and np.isfinite(np.load(affinity)).all()

    # the truth: θ* fine-tuned on every subset for 5 steps
    call(train_multitask, *training, "--subsets-file", subsets_file, "--init-from", checkpoint, "--fixed-steps", 5)
    truth_csv = workdir / "results" / f"{name}_finetune.csv"
    truth = read_results(truth_csv)
    assert [(row["subset"], row["task"]) for row in truth] == [(row["subset"], row["task"]) for row in read_results(estimate_csv)]
    assert all(row["source"] == "trained" and np.isfinite(row["val_loss"]) for row in truth)

    # estimate against truth, both clustered and scored against the planted groups
    call(compare_affinities, "--estimated", estimate_csv, "--trained", truth_csv, "--planted", planted)
    report_path = workdir / "results" / f"{name}_finetune_report.json"
    report = json.loads(report_path.read_text())
    assert report["k"] == 2 and set(report["by_score"]) == {"loss", "f1"}
    entry = report["by_score"]["loss"]["truths"][str(truth_csv)]
    for key in ("spearman_per_task_subsets", "spearman_pooled", "relative_distance_raw", "ari_vs_planted", "group_effect_t"):
        assert key in entry, key
    assert -1 <= entry["spearman_per_task_subsets"] <= 1 and entry["relative_distance_raw"] >= 0

    # step 4: groups from the estimated affinity
    groups_file = workdir / "results" / "planted_groups.txt"
    call(run_clustering, "--affinity", affinity, "--k", 2, "--out", groups_file, "--planted", planted)
    groups = read_subsets(groups_file, 4)
    assert sorted(task for group in groups for task in group) == [0, 1, 2, 3]
    clustering = json.loads(groups_file.with_suffix(".json").read_text())
    assert clustering["k"] == 2 and "ari" in clustering and groups_file.with_suffix(".png").is_file()

    # one model per group, against single-task models and one all-task model
    call(train_multitask, *training, "--subsets-file", groups_file, "--baselines")
    results = workdir / "results"
    for suffix in ("", "_stl", "_mtl"):
        csv_path = results / f"planted_groups_scratch{suffix}.csv"
        assert csv_path.read_text().splitlines()[0] == ",".join(RESULT_COLUMNS)
        assert sorted(row["task"] for row in read_results(csv_path)) == [0, 1, 2, 3]
    training_summary = json.loads((results / "planted_groups_scratch_summary.json").read_text())
    assert training_summary["grouped"]["models"] == len(groups)
    assert training_summary["STL"]["models"] == 4 and training_summary["MTL"]["models"] == 1
    assert all(0 <= row["avg_test_f1"] <= 1 for row in training_summary.values())

    capsys.readouterr()
    call(
        pipeline_summary,
        "--groups",
        groups_file.with_suffix(".json"),
        "--training",
        results / "planted_groups_scratch_summary.json",
        "--comparison",
        report_path,
        "--times",
        "train_theta=1.5",
        "gradients=4",
        "--write",
        results / "planted_summary.md",
    )
    printed = capsys.readouterr().out
    summary = (results / "planted_summary.md").read_text()
    assert summary in printed
    group_text = " | ".join(" ".join(map(str, group)) for group in groups)
    assert f"Groups found (sdp, k = 2): {group_text}" in summary
    assert f"adjusted Rand index against the planted groups: **{clustering['ari']:.3f}**" in summary
    assert f"| loss | {entry['spearman_per_task_subsets']:.3f} | {entry['spearman_per_task_rows']:.3f} |" in summary
    assert f"| grouped | {len(groups)} | {training_summary['grouped']['avg_test_f1']:.3f} |" in summary
    assert "| STL | 4 |" in summary and "| MTL | 1 |" in summary
    assert "seconds" not in summary  # only figures a rerun reproduces
    assert "| train_theta | 1.5 |" in printed and "| gradients | 4.0 |" in printed

    # README's copy: the check fails on a stale block, the update writes the summary in, then the check passes
    readme = workdir / "README.md"
    readme.write_text("intro\n<!-- pipeline_summary: planted_summary.md -->\nold figures\n<!-- /pipeline_summary -->\nend\n")
    copy_flags = ["--summary", str(results / "planted_summary.md")]
    assert (
        exit_status(pipeline_summary.main, pipeline_summary.get_args_parser(), ["--check-readme", str(readme), *copy_flags]) == 1
    )
    call(pipeline_summary, "--update-readme", readme, *copy_flags)
    assert (
        readme.read_text() == f"intro\n<!-- pipeline_summary: planted_summary.md -->\n{summary}<!-- /pipeline_summary -->\nend\n"
    )
    assert (
        exit_status(pipeline_summary.main, pipeline_summary.get_args_parser(), ["--check-readme", str(readme), *copy_flags]) == 0
    )


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_help_exits_0_and_every_flag_has_help_text(script, capsys):
    parser = SCRIPTS[script].get_args_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")
    undocumented = [action.dest for action in parser._actions if not (action.help or "").strip()]
    assert undocumented == []
    # the module docstring carries a usage line, as the house style asks
    assert "Usage:" in SCRIPTS[script].__doc__ and script in SCRIPTS[script].__doc__

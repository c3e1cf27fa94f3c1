"""The θ* health check: assess_base on hand-made metrics, the per-task gradient norms against autograd, reading a
checkpoint's record, and end to end — it fires on a memorising and on a near-trivial tiny θ* (collect_gradients.py
and fit_linear_estimates.py warn, and refuse with --strict before writing anything) and stays quiet on the embedded
default."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import collect_gradients
import fit_linear_estimates
import train_multitask
from gradtag.artifacts import UsageError, write_json
from gradtag.health import (
    FLAT_RATIO,
    MIN_VAL_POSITIVES,
    assess_base,
    base_verdict,
    checkpoint_health,
    format_health,
    task_gradient_norms,
    unjudged_note,
)
from gradtag.training import class_weights
from models import build_model
from tests.conftest import TINY_PLANTED_FLAGS, exit_status, write_snap

N = 20  # tasks in the hand-made metrics


def metrics(val_f1=None, trivial=None, train_f1=None, train_loss=None) -> dict:
    """Hand-made metrics.json of N tasks: by default every task learned (val F1 0.45 against all-positive 0.15),
    none memorised (train F1 0.7 at loss 0.4)."""
    full = lambda value, default: list(np.broadcast_to(default if value is None else value, N).astype(float))  # noqa: E731
    return {
        "tasks": list(range(N)),
        "train": {"f1": full(train_f1, 0.7), "loss": full(train_loss, 0.4)},
        "val": {"f1": full(val_f1, 0.45), "all_positive_f1": full(trivial, 0.15), "all_positive_macro_f1": 0.15},
    }


# ---------------------------------------------------------------------------------------------------------- assess_base
def test_healthy_base_has_no_problems_and_a_json_record():
    norms = np.linspace(1.0, 3.0, N)
    health = assess_base(metrics(), norms)
    assert health.healthy and health.problems == () and health.learned_share == 1.0
    assert health.memorised == () and health.flat == ()
    assert health.gradient_spread == pytest.approx(np.percentile(norms, 90) / np.percentile(norms, 10))
    record = json.loads(json.dumps(health.to_json()))
    assert record["healthy"] and record["gradient_norms"] == pytest.approx(norms.tolist())
    assert record["thresholds"]["learned_margin"] > 0
    assert format_health(health).startswith(f"θ* health: {N}/{N} tasks learned (100%), 0 memorised")
    assert format_health(health).endswith(": healthy")
    assert assess_base(metrics()).gradient_spread is None  # norms not given: not judged


def test_learned_share_compares_each_task_with_its_own_all_positive_predictor():
    val_f1, trivial = np.full(N, 0.45), np.full(N, 0.15)
    val_f1[[3, 7]] = 0.17  # within the margin of their trivial predictor
    health = assess_base(metrics(val_f1=val_f1, trivial=trivial))
    assert health.learned_share == pytest.approx(0.9) and health.healthy  # 18/20: at the threshold, still healthy
    assert [task for task, ok in enumerate(health.learned) if not ok] == [3, 7]

    trivial[11] = 0.57  # a 40%-positive task: val F1 0.45 is above the macro all-positive F1 but below its own
    health = assess_base(metrics(val_f1=val_f1, trivial=trivial))
    assert not health.learned[11] and health.learned_share == pytest.approx(0.85) and not health.healthy
    assert "only 17/20 tasks learned" in health.problems[0] and "3, 7, 11" in health.problems[0]

    old = metrics(val_f1=val_f1)
    del old["val"]["all_positive_f1"]  # older metrics.json: the macro value stands in for every task
    assert assess_base(old).learned_share == pytest.approx(0.9)


def test_memorised_tasks_are_caught_by_the_train_val_gap_whatever_the_loss():
    train_f1, val_f1 = np.full(N, 0.7), np.full(N, 0.45)
    train_f1[:5], val_f1[:5] = 1.0, 0.5  # 5/20 = 25%: unhealthy
    for loss in (1e-4, 0.3):  # a confident fit, and one of a task with one or two training positives (loss still high)
        train_loss = np.where(np.arange(N) < 5, loss, 0.4)
        health = assess_base(metrics(val_f1=val_f1, train_f1=train_f1, train_loss=train_loss))
        assert health.memorised == (0, 1, 2, 3, 4) and not health.healthy, loss
        assert any("5/20 tasks memorised" in problem for problem in health.problems)

    healthy_variants = {
        "4 of 20": dict(train_f1=np.where(np.arange(N) < 4, 1.0, 0.7)),
        "gap small": dict(train_f1=train_f1, val_f1=np.where(np.arange(N) < 5, 0.8, 0.45)),
        "train F1 below the bar": dict(train_f1=np.where(np.arange(N) < 5, 0.9, 0.7), val_f1=np.full(N, 0.45)),
    }
    for name, variant in healthy_variants.items():
        health = assess_base(metrics(**{"val_f1": val_f1, **variant}))
        assert health.healthy, (name, health.problems)

    no_val_positive = metrics(val_f1=val_f1, train_f1=train_f1)
    no_val_positive["val"]["positives"] = [0] * 5 + [20] * (N - 5)  # val F1 0 by definition: no gap to measure
    assert assess_base(no_val_positive).memorised == ()


def test_tasks_with_too_few_validation_positives_are_left_out_of_the_learned_share():
    val_f1, trivial = np.full(N, 0.45), np.full(N, 0.15)
    val_f1[:4] = 0.0  # never "learned": no validation positive, or one that was missed
    record = metrics(val_f1=val_f1, trivial=trivial)
    record["val"]["positives"] = [0, 0, 1, MIN_VAL_POSITIVES - 1] + [MIN_VAL_POSITIVES] * (N - 4)
    health = assess_base(record)
    assert health.unjudged == (0, 1, 2, 3) and health.learned_share == 1.0 and health.healthy
    assert not any(health.learned[:4])
    line = format_health(health)
    assert line.startswith("θ* health: 16/16 judged tasks learned (100%), 4 too small to judge, 0 memorised")
    note = unjudged_note(health)
    assert note.startswith("note: tasks 0, 1, 2, 3 have fewer than 5 validation positives") and "--val-frac" in note
    assert unjudged_note(assess_base(metrics())) is None  # older metrics without positives: every task judged

    val_f1[4:6] = 0.16  # two judged tasks not learned: 14/16 = 88% < 90%
    health = assess_base(record | {"val": {**record["val"], "f1": list(val_f1)}})
    assert not health.healthy and "only 14/16 judged tasks learned" in health.problems[0]
    assert "4, 5" in health.problems[0] and "0, 1" not in health.problems[0]

    record["val"]["positives"] = [1] * N  # nothing can be judged: said, not called healthy
    health = assess_base(record)
    assert not health.healthy and "no task can be judged learned" in health.problems[0] and "--val-frac" in health.problems[0]
    assert format_health(health).startswith(f"θ* health: no task judged, {N} too small to judge")


def test_a_graph_of_tiny_communities_is_called_memorised_and_its_tiny_tasks_unjudged(workdir, capsys):
    """The issue's case, end to end: 5-8-node communities fitted exactly. θ* without weight decay memorises them, and
    tasks with fewer than 5 validation positives are said to be too small to judge."""
    rng = np.random.default_rng(0)
    communities = [np.sort(rng.choice(300, size=size, replace=False)) for size in rng.integers(5, 9, size=10)]
    edges = {tuple(sorted(rng.choice(300, 2, replace=False))) for _ in range(900)}
    for members in communities:
        edges |= {tuple(sorted(rng.choice(members, 2, replace=False))) for _ in range(2 * len(members))}
    write_snap(
        workdir / "tiny",
        "tiny",
        "".join(f"{a}\t{b}\n" for a, b in sorted(edges)),
        "".join("\t".join(map(str, members)) + "\n" for members in communities),
    )
    argv = ["--dataset", "tiny", "--data-dir", "tiny", "--num-tasks", "10", "--weight-decay", "0", "--epochs", "300"]
    train_multitask.main(train_multitask.get_args_parser().parse_args([*argv, "--patience", "300", "--no-progress"]))
    printed = capsys.readouterr().out
    metrics_json = json.loads((workdir / "saved" / "tiny" / "all_seed0" / "metrics.json").read_text())
    health = checkpoint_health(workdir / "saved" / "tiny" / "all_seed0")
    positives = np.asarray(metrics_json["val"]["positives"])
    assert health.unjudged == tuple(np.flatnonzero(positives < MIN_VAL_POSITIVES))
    assert len(health.unjudged) == 10 and "no task can be judged learned" in health.problems[0]
    perfect = np.asarray(metrics_json["train"]["f1"]) >= 0.95
    assert perfect.sum() >= 5 and len(health.memorised) >= 3 and not health.healthy
    assert any("tasks memorised" in problem for problem in health.problems)
    assert "too small to judge" in printed and "note: tasks" in printed and "DEGENERATE" in printed


def test_flat_gradient_norms_are_found_against_the_upper_percentile():
    norms = np.linspace(1.0, 2.0, N)
    norms[[2, 9]] = 1e-7  # 10% of the tasks: unhealthy
    health = assess_base(metrics(), norms)
    assert health.flat == (2, 9) and not health.healthy and "2/20 tasks have flat gradients" in health.problems[0]

    norms = np.full(N, 1e-9)
    norms[-3:] = 1.0  # most tasks flat: the median is flat too, the 90th percentile is not
    assert len(assess_base(metrics(), norms).flat) == N - 3

    norms = np.linspace(1.0, 2.0, N)
    norms[4] = 0.5 * FLAT_RATIO  # one task: listed, still healthy
    health = assess_base(metrics(), norms)
    assert health.flat == (4,) and health.healthy
    zero = assess_base(metrics(), np.r_[np.zeros(3), np.ones(N - 3)])
    assert zero.gradient_spread == float("inf") and zero.to_json()["gradient_spread"] is None
    with pytest.raises(ValueError, match="one norm per task"):
        assess_base(metrics(), np.ones(N - 1))


# ---------------------------------------------------------------------------------------------------------- gradient norms
@pytest.mark.parametrize("balanced", [False, True], ids=["plain", "balanced"])
def test_task_gradient_norms_match_a_per_sample_autograd_reference(balanced):
    generator = torch.Generator().manual_seed(0)
    num_nodes, hops, in_dim, tasks = 30, 2, 5, 3
    labels = torch.rand(num_nodes, tasks, generator=generator).numpy() < 0.3
    train = torch.rand(num_nodes, tasks, generator=generator).numpy() < 0.5
    dataset = SimpleNamespace(
        features=torch.randn(num_nodes, hops + 1, in_dim, generator=generator, dtype=torch.float64),
        labels=labels,
        samples=lambda task, split: np.flatnonzero(train[:, task]),
    )
    torch.manual_seed(0)
    model = build_model("sign", in_dim, hops, tasks, hop_width=6, head_width=4).double()
    norms = task_gradient_norms(model, dataset, [0, 2], balanced, torch.device("cpu"))

    # Reference: ∇L_j = Σ_i w_i (σ(z_ij) − y_ij) ∇z_ij / Σ_i w_i, each ∇z_ij by its own autograd call.
    params = list(model.parameters())
    weights = class_weights(labels, train, balanced).astype(np.float64)
    for row, task in enumerate([0, 2]):
        total = [torch.zeros_like(param) for param in params]
        for node in np.flatnonzero(train[:, task]):
            logit = model(dataset.features[node : node + 1])[0, task]
            residual = torch.sigmoid(logit).item() - float(labels[node, task])
            for acc, piece in zip(total, torch.autograd.grad(logit, params), strict=True):
                acc += weights[node, task] * residual * piece
        expected = torch.sqrt(sum(acc.pow(2).sum() for acc in total)).item() / weights[:, task].sum()
        assert norms[row] == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------------------------------------- reading a record
def test_base_verdict_notes_a_missing_record_warns_and_refuses(tmp_path):
    folder = tmp_path / "all_seed0"
    assert base_verdict(folder, strict=True).startswith("note: ")  # no metrics.json at all
    write_json(folder / "metrics.json", metrics())
    assert checkpoint_health(folder) is None and base_verdict(folder, strict=True).startswith("note: ")

    write_json(folder / "metrics.json", {**metrics(), "health": assess_base(metrics(), np.ones(N)).to_json()})
    assert checkpoint_health(folder).healthy and base_verdict(folder, strict=True) is None

    bad = metrics(val_f1=0.15)  # nothing learned; the record is re-judged from the metrics beside it
    write_json(folder / "metrics.json", {**bad, "health": assess_base(metrics(), np.ones(N)).to_json()})
    assert not checkpoint_health(folder).healthy
    line = base_verdict(folder, strict=False)
    assert line.startswith(f"warning: base {folder} looks degenerate: only 0/20") and line.endswith("--strict to refuse")
    with pytest.raises(UsageError, match="looks degenerate"):
        base_verdict(folder, strict=True)


# ---------------------------------------------------------------------------------------------------------- end to end
def train_tiny(root: Path, *extra: str) -> Path:
    """Train a tiny planted θ* (TINY_PLANTED_FLAGS plus ``extra``) under ``root``; its checkpoint folder."""
    folders = ["--data-dir", str(root / "planted"), "--saved-dir", str(root / "saved")]
    train_multitask.main(train_multitask.get_args_parser().parse_args([*TINY_PLANTED_FLAGS, "--no-progress", *folders, *extra]))
    return root / "saved" / "planted" / "all_seed0"


def collect_argv(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--out", str(out), "--project-dim", "8", "--no-progress", *extra]


# memorises: no weight decay, wide layers, 100 full-batch steps kept as they are (no early stopping)
MEMORISING = ["--fixed-steps", "100", "--weight-decay", "0", "--hop-width", "64", "--head-width", "64"]
NEAR_TRIVIAL = ["--epochs", "1", "--lr", "1e-6"]  # θ* is its random initialisation


def test_memorising_base_is_flagged_and_strict_collect_writes_nothing(workdir, capsys):
    checkpoint = train_tiny(workdir, *MEMORISING)
    printed = capsys.readouterr().out
    saved = json.loads((checkpoint / "metrics.json").read_text())
    assert min(saved["train"]["f1"]) == 1.0 and saved["val"]["macro_f1"] < 0.5  # it did memorise
    assert not saved["health"]["healthy"] and len(saved["health"]["memorised"]) >= 2
    assert ": DEGENERATE" in printed and "warning: " in printed and "tasks memorised" in printed

    out = workdir / "gradients"
    parser = collect_gradients.get_args_parser()
    assert exit_status(collect_gradients.main, parser, collect_argv(checkpoint, out, "--strict")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: base {checkpoint} looks degenerate: ") and err.count("\n") == 1
    assert not out.exists()

    assert exit_status(collect_gradients.main, parser, collect_argv(checkpoint, out)) == 0  # warned, not refused
    assert f"warning: base {checkpoint} looks degenerate" in capsys.readouterr().err and (out / "config.json").is_file()

    record = json.loads((checkpoint / "metrics.json").read_text())
    del record["health"]  # a checkpoint from before health checks: a note, not an error, even with --strict
    (checkpoint / "metrics.json").write_text(json.dumps(record))
    assert exit_status(collect_gradients.main, parser, collect_argv(checkpoint, workdir / "older", "--strict")) == 0
    assert "note: base" in capsys.readouterr().err and (workdir / "older" / "config.json").is_file()


def test_near_trivial_base_is_flagged_and_strict_fit_writes_nothing(workdir, capsys):
    checkpoint = train_tiny(workdir, *NEAR_TRIVIAL)
    assert "warning: only " in capsys.readouterr().out
    health = checkpoint_health(checkpoint)
    assert not health.healthy and health.learned_share < 0.9 and "tasks learned" in health.problems[0]

    grads = workdir / "gradients"
    collect_gradients.main(collect_gradients.get_args_parser().parse_args(collect_argv(checkpoint, grads)))
    (workdir / "subsets.txt").write_text("0 1\n2 3\n0 2\n")
    results = workdir / "results"
    argv = ["--gradients", str(grads), "--subsets-file", str(workdir / "subsets.txt"), "--results-dir", str(results)]
    capsys.readouterr()
    parser = fit_linear_estimates.get_args_parser()
    assert exit_status(fit_linear_estimates.main, parser, [*argv, "--no-count-flops", "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: base {checkpoint} looks degenerate: only ") and err.count("\n") == 1
    assert not results.exists()


def test_embedded_default_is_healthy(workdir, capsys):
    folders = ["--data-dir", str(workdir / "planted"), "--saved-dir", str(workdir / "saved")]
    train_multitask.main(train_multitask.get_args_parser().parse_args(["--no-progress", *folders]))
    printed = capsys.readouterr().out
    health = checkpoint_health(workdir / "saved" / "planted" / "all_seed0")
    assert health.healthy and health.learned_share == 1.0 and health.memorised == () and health.flat == ()
    assert "θ* health: 20/20 tasks learned (100%), 0 memorised, 0 flat" in printed and "warning" not in printed


def test_text_bases_are_judged_by_accuracy_against_the_majority_class():
    """A text θ* (metric accuracy) at 0.86 accuracy is learned even where F1 is near the all-positive predictor's;
    one at the majority class's accuracy is not."""
    good = metrics(val_f1=0.16)  # F1 alone would call every task unlearned
    good["metric"] = "accuracy"
    good["val"]["accuracy"], good["val"]["majority_accuracy"] = [0.86] * N, [0.55] * N
    assert assess_base(good).healthy and all(assess_base(good).learned)
    flat = {**good, "val": {**good["val"], "accuracy": [0.56] * N}}
    health = assess_base(flat)
    assert not health.healthy and not any(health.learned)
    assert "majority class" in health.problems[0]
    assert not assess_base({**good, "metric": "f1"}).healthy  # the graph rule on the same numbers

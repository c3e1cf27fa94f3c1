"""Step 1: the masked loss, subset training that leaves other tasks' parameters alone, and train_multitask.py end to
end on a tiny planted graph (checkpoints, --subsets-file rows and resume, fine-tuning, bad subset files, --help)."""

import csv
import json

import numpy as np
import pytest
import torch

from data import load_dataset
from gradtag.artifacts import UsageError
from gradtag.flops import count_flops
from gradtag.results import RESULT_COLUMNS, read_results
from gradtag.training import TrainConfig, masked_bce, train_model
from models import build_model
from tests.conftest import TINY_PLANTED, TINY_PLANTED_FLAGS, exit_status, run_script
from train_multitask import get_args_parser, main

TINY_TRAINING = ["--epochs", "20", "--patience", "5", "--no-progress"]


def tiny_flags(tmp_path, *extra: str) -> list[str]:
    """Flags of a tiny planted run whose data, checkpoints and results all live in ``tmp_path``."""
    folders = ["--data-dir", str(tmp_path / "planted"), "--saved-dir", str(tmp_path / "saved")]
    return [*TINY_PLANTED_FLAGS, *TINY_TRAINING, *folders, "--results-dir", str(tmp_path / "results"), *extra]


def run(tmp_path, *extra: str) -> None:
    main(get_args_parser().parse_args(tiny_flags(tmp_path, *extra)))


# ---------------------------------------------------------------------------------------------------------- the math
def test_masked_bce_ignores_unmasked_entries_and_matches_hand_computation():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    labels = (torch.rand(6, 3, generator=generator) < 0.5).double()
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)
    loss = masked_bce(logits, labels, mask.double())

    # By hand: per task, the mean BCE over its masked rows; task 2 has none and is skipped; then the mean over tasks.
    z, y = logits.numpy(), labels.numpy()
    bce = -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))
    per_task = [bce[mask[:, task].numpy(), task].mean() for task in (0, 1)]
    assert loss.item() == pytest.approx(np.mean(per_task), rel=1e-12)

    changed_logits, changed_labels = logits.clone(), labels.clone()
    changed_logits[~mask] = 1e4 * torch.sign(torch.randn(int((~mask).sum()), generator=generator, dtype=torch.float64))
    changed_labels[~mask] = 1 - changed_labels[~mask]
    assert masked_bce(changed_logits, changed_labels, mask.double()).item() == pytest.approx(loss.item(), rel=1e-12)

    leaf = logits.clone().requires_grad_()
    masked_bce(leaf, labels, mask.double()).backward()
    assert torch.all(leaf.grad[~mask] == 0) and torch.all(leaf.grad[mask] != 0)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2], ids=["no-decay", "decay"])
def test_training_a_subset_leaves_other_tasks_output_rows_bit_identical(tmp_path, weight_decay):
    dataset = load_dataset("planted", data_dir=tmp_path / "planted", cache_dir=tmp_path / "cache", **TINY_PLANTED)
    torch.manual_seed(0)
    model = build_model(
        "sign", dataset.features.shape[2], dataset.features.shape[1] - 1, dataset.num_tasks, hop_width=8, head_width=4
    )
    weight_before = model.output_layer.weight.detach().clone()
    bias_before = model.output_layer.bias.detach().clone()
    shared_before = model.hops[0][0].weight.detach().clone()

    config = TrainConfig(epochs=5, lr=1e-2, weight_decay=weight_decay, batch_size=4, patience=100)
    summary = train_model(model, dataset, [0, 2], config, torch.device("cpu"), seed=0)
    assert summary["steps"] > 5  # several optimiser steps per epoch (batch size 4)

    weight, bias = model.output_layer.weight.detach(), model.output_layer.bias.detach()
    for task in (1, 3):  # not trained: bit-identical
        assert torch.equal(weight[task], weight_before[task]) and torch.equal(bias[task], bias_before[task])
    for task in (0, 2):  # trained: moved
        assert not torch.equal(weight[task], weight_before[task]) and not torch.equal(bias[task], bias_before[task])
    assert not torch.equal(model.hops[0][0].weight.detach(), shared_before)


# ---------------------------------------------------------------------------------------------------------- meta-initializations
def test_train_multitask_end_to_end_writes_checkpoints_and_refuses_overwrite(tmp_path, workdir, capsys):
    run(tmp_path, "--runs", "2")
    for seed in (0, 1):
        folder = tmp_path / "saved" / "planted" / f"all_seed{seed}"
        assert sorted(path.name for path in folder.iterdir()) == ["config.json", "metrics.json", "model.pt"]
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["tasks"] == [0, 1, 2, 3]
        for split in ("train", "val", "test"):
            for key in ("f1", "loss"):
                values = metrics[split][key]
                assert len(values) == 4 and all(np.isfinite(values)), (split, key)
            assert all(0 <= value <= 1 for value in metrics[split]["f1"])
        config = json.loads((folder / "config.json").read_text())
        assert config["seed"] == seed and config["dataset"] == "planted"
        assert config["task_names"] == ["g0_t0", "g0_t1", "g1_t2", "g1_t3"]
        assert len(config["dataset_fingerprint"]) == 16
        assert set(torch.load(folder / "model.pt")) >= {"head.1.weight", "head.1.bias"}
    seed0, seed1 = (torch.load(tmp_path / "saved" / "planted" / f"all_seed{seed}" / "model.pt") for seed in (0, 1))
    assert not torch.equal(seed0["head.1.weight"], seed1["head.1.weight"])
    assert "run all_seed1" in capsys.readouterr().out
    assert not (workdir / "datasets" / "planted").exists() and (workdir / "datasets" / "cache").is_dir()

    checkpoint = tmp_path / "saved" / "planted" / "all_seed0" / "model.pt"
    stamp = checkpoint.stat().st_mtime_ns
    assert exit_status(main, get_args_parser(), tiny_flags(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and err.count("\n") == 1
    assert checkpoint.stat().st_mtime_ns == stamp


def test_same_seed_retrains_the_same_model(tmp_path, workdir):
    run(tmp_path)
    checkpoint = tmp_path / "saved" / "planted" / "all_seed0"
    first = torch.load(checkpoint / "model.pt")
    first_metrics = json.loads((checkpoint / "metrics.json").read_text())
    run(tmp_path, "--overwrite")
    second = torch.load(checkpoint / "model.pt")
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
    assert json.loads((checkpoint / "metrics.json").read_text())["test"] == first_metrics["test"]


def test_existing_later_seed_is_refused_before_any_training(tmp_path, workdir):
    run(tmp_path, "--seed", "1")
    with pytest.raises(UsageError, match="--overwrite"):
        run(tmp_path, "--runs", "2")
    assert not (tmp_path / "saved" / "planted" / "all_seed0").exists()


# ---------------------------------------------------------------------------------------------------------- subsets
def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_subsets_file_rows_and_resume(tmp_path, workdir, capsys):
    subsets_file = tmp_path / "subsets.txt"
    subsets_file.write_text("# three subsets\n0 1\n\n2 3  # a comment\n1 2\n")
    csv_path = tmp_path / "results" / "truth.csv"
    flags = ["--subsets-file", str(subsets_file), "--results-name", "truth"]

    run(tmp_path, *flags)
    assert "trained 3 models (0 already done)" in capsys.readouterr().out
    with open(csv_path, newline="") as fh:
        assert next(csv.reader(fh)) == RESULT_COLUMNS
    rows = read_results(csv_path)
    assert [(row["subset_id"], row["subset"], row["task"], row["seed"]) for row in rows] == [
        (0, "0 1", 0, 0),
        (0, "0 1", 1, 0),
        (1, "2 3", 2, 0),
        (1, "2 3", 3, 0),
        (2, "1 2", 1, 0),
        (2, "1 2", 2, 0),
    ]
    assert all(row["source"] == "trained" and 0 <= row["val_f1"] <= 1 and row["val_loss"] > 0 for row in rows)
    sidecar = json.loads(csv_path.with_suffix(".json").read_text())
    assert sidecar["mode"] == "scratch" and sidecar["subsets"] == [[0, 1], [2, 3], [1, 2]]

    # A second seed: only the 3 new models are trained; the first seed's rows are kept as they were.
    first = _rows(csv_path)
    run(tmp_path, *flags, "--truth-seeds", "2")
    assert "trained 3 models (3 already done)" in capsys.readouterr().out
    rows = _rows(csv_path)
    assert rows[:6] == first and len(rows) == 12
    per_pair = {}
    for row in rows:
        per_pair.setdefault((row["subset_id"], row["task"]), []).append(int(row["seed"]))
    assert len(per_pair) == 6 and all(sorted(seeds) == [0, 1] for seeds in per_pair.values())

    # Everything done: nothing trained, the CSV not even rewritten.
    before, stamp = csv_path.read_bytes(), csv_path.stat().st_mtime_ns
    run(tmp_path, *flags, "--truth-seeds", "2")
    assert "trained 0 models (6 already done)" in capsys.readouterr().out
    assert csv_path.read_bytes() == before and csv_path.stat().st_mtime_ns == stamp


def test_init_from_fine_tunes_the_checkpoint(tmp_path, workdir, capsys):
    run(tmp_path)
    checkpoint = tmp_path / "saved" / "planted" / "all_seed0"
    base_metrics = json.loads((checkpoint / "metrics.json").read_text())
    subsets_file = tmp_path / "pairs.txt"
    subsets_file.write_text("0 1\n2 3\n")

    # With learning rate 0 the fine-tuned model is the checkpoint itself: its validation losses must be the
    # checkpoint's, which shows the weights were loaded rather than trained afresh.
    run(tmp_path, "--subsets-file", str(subsets_file), "--init-from", str(checkpoint), "--lr", "0", "--results-name", "lr0")
    rows = read_results(tmp_path / "results" / "lr0.csv")
    assert len(rows) == 4
    for row in rows:
        assert row["distance"] == 0.0  # ‖W − θ*‖ / ‖θ*‖: nothing moved
        assert row["val_loss"] == pytest.approx(base_metrics["val"]["loss"][row["task"]], rel=1e-5)
        assert row["test_f1"] == pytest.approx(base_metrics["test"]["f1"][row["task"]], abs=1e-9)
    sidecar = json.loads((tmp_path / "results" / "lr0.json").read_text())
    assert sidecar["mode"] == "finetune" and sidecar["training"]["fixed_steps"] == 15  # the fine-tuning default
    assert sidecar["init"]["init_from"] == str(checkpoint)

    default = ["--subsets-file", str(subsets_file), "--init-from", str(checkpoint), "--results-name", "default"]
    run(tmp_path, *default)
    assert json.loads((tmp_path / "results" / "default.json").read_text())["training"]["lr"] == 1e-3  # the truth's regime
    flags = ["--subsets-file", str(subsets_file), "--init-from", str(checkpoint), "--results-name", "steps3"]
    run(tmp_path, *flags, "--fixed-steps", "3")
    assert "trained 2 models" in capsys.readouterr().out
    csv_path = tmp_path / "results" / "steps3.csv"
    rows = read_results(csv_path)
    assert len(rows) == 4 and any(row["val_loss"] != base_metrics["val"]["loss"][row["task"]] for row in rows)
    distances = {row["subset"]: row["distance"] for row in rows}
    assert all(0 < distance < 1 for distance in distances.values()) and len(distances) == 2
    assert all(row["distance"] == distances[row["subset"]] for row in rows)  # one model per subset
    assert json.loads(csv_path.with_suffix(".json").read_text())["training"]["fixed_steps"] == 3

    # the recorded FLOPs (counted once per block and extrapolated) equal counting every operation
    with count_flops() as exact:
        run(tmp_path, *flags, "--fixed-steps", "7", "--results-name", "steps7")
    recorded = json.loads((tmp_path / "results" / "steps7.json").read_text())["flops"]
    assert recorded == exact.total > 0


def test_init_from_continues_the_base_objective_unless_a_flag_overrides_it(tmp_path, workdir):
    run(tmp_path, "--weight-decay", "0.005", "--no-balanced")
    checkpoint = tmp_path / "saved" / "planted" / "all_seed0"
    subsets_file = tmp_path / "pairs.txt"
    subsets_file.write_text("0 1\n")
    flags = ["--subsets-file", str(subsets_file), "--init-from", str(checkpoint), "--fixed-steps", "2"]
    run(tmp_path, *flags, "--results-name", "inherited")
    training = json.loads((tmp_path / "results" / "inherited.json").read_text())["training"]
    assert training["weight_decay"] == 0.005 and training["balanced"] is False  # the planted default is 1e-2, balanced
    run(tmp_path, *flags, "--results-name", "overridden", "--weight-decay", "0", "--balanced")
    training = json.loads((tmp_path / "results" / "overridden.json").read_text())["training"]
    assert training["weight_decay"] == 0 and training["balanced"] is True


def test_init_from_several_bases_keys_rows_by_base_seed_and_matches_single_base_runs(tmp_path, workdir, capsys):
    run(tmp_path, "--runs", "2")
    bases = [tmp_path / "saved" / "planted" / f"all_seed{seed}" for seed in (0, 1)]
    subsets_file = tmp_path / "subsets.txt"
    subsets_file.write_text("0 1\n2 3 1\n")
    flags = ["--subsets-file", str(subsets_file), "--fixed-steps", "3"]
    run(tmp_path, *flags, "--init-from", *map(str, bases), "--results-name", "both")
    rows = read_results(tmp_path / "results" / "both.csv")
    assert len(rows) == 2 * 5 and {row["seed"] for row in rows} == {0, 1}
    sidecar = json.loads((tmp_path / "results" / "both.json").read_text())
    assert [entry["seed"] for entry in sidecar["init"]] == [0, 1]
    assert [entry["init_from"] for entry in sidecar["init"]] == [str(base) for base in bases]
    # each base's rows are what fine-tuning that base alone (with its own seed) gives, bit for bit
    for seed, base in enumerate(bases):
        run(tmp_path, *flags, "--init-from", str(base), "--seed", str(seed), "--results-name", f"only{seed}")
        alone = read_results(tmp_path / "results" / f"only{seed}.csv")
        mine = [row for row in rows if row["seed"] == seed]
        assert [(r["subset"], r["task"], r["val_loss"], r["distance"]) for r in mine] == [
            (r["subset"], r["task"], r["val_loss"], r["distance"]) for r in alone
        ]
    assert rows[0]["val_loss"] != next(r for r in rows if r["seed"] == 1 and r["task"] == rows[0]["task"])["val_loss"]
    # resuming skips both bases' rows; several bases with several truth seeds would collide on the seed key
    run(tmp_path, *flags, "--init-from", *map(str, bases), "--results-name", "both")
    assert "trained 0 models (4 already done)" in capsys.readouterr().out
    with pytest.raises(UsageError, match="--truth-seeds > 1 with several --init-from"):
        run(tmp_path, *flags, "--init-from", *map(str, bases), "--truth-seeds", "2")
    with pytest.raises(UsageError, match="share a seed"):
        run(tmp_path, *flags, "--init-from", str(bases[0]), str(bases[0]), "--results-name", "twice")


BAD_SUBSET_FILES = {
    "out of range": ("# header\n0 1\n0 4\n", ":3:", "out of range"),
    "repeated": ("0 1\n2 2\n", ":2:", "repeated"),
    "non-integer": ("0 1\n\n1 x\n", ":3:", "not a list of integer"),
    "empty": ("# only a comment\n\n", "", "holds no subset"),
}


@pytest.mark.parametrize("case", list(BAD_SUBSET_FILES))
def test_bad_subsets_file_exits_2_naming_file_and_line(tmp_path, workdir, capsys, case):
    text, line, expected = BAD_SUBSET_FILES[case]
    subsets_file = tmp_path / "bad.txt"
    subsets_file.write_text(text)
    flags = tiny_flags(tmp_path, "--subsets-file", str(subsets_file))
    if case == "out of range":  # one real subprocess: the exit status and stderr a user sees
        proc = run_script("train_multitask.py", *flags, cwd=tmp_path)
        status, err = proc.returncode, proc.stderr
    else:
        status, err = exit_status(main, get_args_parser(), flags), capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"{subsets_file}{line}" in err and expected in err
    assert not (tmp_path / "results").exists()


def test_init_from_without_subsets_file_is_refused(tmp_path):
    with pytest.raises(UsageError, match="--init-from only applies"):
        run(tmp_path, "--init-from", str(tmp_path))


# ---------------------------------------------------------------------------------------------------------- --help
def test_help_exits_0_and_every_flag_is_documented(tmp_path):
    proc = run_script("train_multitask.py", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "--subsets-file" in proc.stdout
    undocumented = [action.dest for action in get_args_parser()._actions if not (action.help or "").strip()]
    assert undocumented == []

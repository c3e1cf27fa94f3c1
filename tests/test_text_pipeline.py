"""The text domain through the same scripts: a tiny BERT (built from a config, with a local tokenizer over the
dataset's words) with LoRA on a tiny embedded text default, through θ*, the fine-tuned truth, projected gradients,
estimates, the comparison, clustering and grouped training — then the text-specific refusals (exit status 2, one
line, nothing written)."""

from __future__ import annotations

import itertools
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import collect_gradients
import compare_affinities
import fit_linear_estimates
import run_clustering
import train_multitask
from data.text_planted import load_text_default
from gradtag.artifacts import read_json
from gradtag.checkpoints import load_weights
from gradtag.projection import projector_from_spec
from gradtag.results import read_results, read_subsets
from gradtag.text_training import encode
from models.text import model_inputs, tiny_backbone, tiny_tokenizer
from steps.domains import load_checkpoint
from tests.conftest import exit_status

TASKS, GROUPS, PER_TASK = 4, 2, 8
DATA = [
    *("--dataset", "text_planted", "--num-tasks", str(TASKS), "--planted-groups", str(GROUPS)),
    *("--examples-per-task", str(PER_TASK), "--eval-per-task", str(PER_TASK), "--data-dir", "data"),
]
SUBSETS = [subset for size in (2, 3) for subset in itertools.combinations(range(TASKS), size)]  # every pair twice+


def call(module, *argv) -> None:
    module.main(module.get_args_parser().parse_args([str(arg) for arg in argv]))


def tiny_bert_folder(folder) -> None:
    """A 2-layer BERT with a word-level tokenizer over every word the tiny default renders (short sequences)."""
    dataset = load_text_default(0, TASKS, GROUPS, PER_TASK, PER_TASK, PER_TASK)
    texts = [text for split in dataset.tasks for pairs in dataset.tasks[split] for text in pairs.inputs]
    words = sorted({word for text in texts for word in re.findall(r"[a-z]+", text.lower())})
    tokenizer = tiny_tokenizer(words, "encoder")
    tiny_backbone("encoder", len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Every step once, in one folder (read-only for the tests)."""
    root = tmp_path_factory.mktemp("text")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        tiny_bert_folder(root / "tinybert")
        model = ["--text-model", "tinybert", "--lora-rank", "2", "--threads", "1", "--no-progress"]
        call(train_multitask, *DATA, *model, "--epochs", "4", "--lr", "5e-3")
        checkpoint = root / "saved" / "text_planted" / "all_seed0"
        (root / "subsets.txt").write_text("".join(" ".join(map(str, s)) + "\n" for s in SUBSETS))
        call(
            train_multitask, *DATA, *model, "--subsets-file", "subsets.txt", "--init-from", checkpoint, "--results-name", "truth"
        )
        call(collect_gradients, "--checkpoint", checkpoint, "--project-dim", 8, "--no-progress", "--threads", "1")
        gradients = root / "gradients" / "text_planted" / "all_seed0_d8"
        call(fit_linear_estimates, "--gradients", gradients, "--subsets-file", "subsets.txt", "--l2", 1, "--no-progress")
        planted = root / "data" / "planted_groups.txt"
        call(
            compare_affinities,
            "--trained",
            "results/truth.csv",
            "--estimated",
            "results/subsets_estimate.csv",
            "--planted",
            planted,
        )
        groups = root / "results" / "groups.txt"
        affinity = "results/subsets_estimate_higher_order.npy"
        call(run_clustering, "--affinity", affinity, "--k", GROUPS, "--planted", planted, "--out", groups)
        grouped = ["--subsets-file", groups, "--baselines", "--results-name", "final", "--epochs", "2"]
        call(train_multitask, *DATA, *model, *grouped)
    return SimpleNamespace(root=root, checkpoint=checkpoint, gradients=gradients, planted=planted)


def test_checkpoint_holds_only_lora_and_head_and_records_the_text_model(run):
    state = load_weights(run.checkpoint / "model.pt")
    assert state and all(".lora_" in name or name.startswith("head.") for name in state)
    config = read_json(run.checkpoint / "config.json")
    assert config["domain"] == "text" and config["model_options"]["lora_rank"] == 2
    assert config["model_options"]["name_or_path"] == "tinybert"
    metrics = read_json(run.checkpoint / "metrics.json")
    assert len(metrics["test"]["accuracy"]) == TASKS and 0 <= metrics["test"]["mean_accuracy"] <= 1


def test_projected_gradients_are_P_transpose_times_the_margins_autograd_gradient(run, monkeypatch):
    monkeypatch.chdir(run.root)
    model, _ = load_checkpoint(run.checkpoint, torch.device("cpu"))
    from data import load_dataset

    config = read_json(run.checkpoint / "config.json")
    dataset = load_dataset("text_planted", "data", **config["dataset_options"])
    P = projector_from_spec(read_json(run.gradients / "projection.json")).matrix().double()
    params = [param for param in model.parameters() if param.requires_grad]
    for task, split, row in ((0, "train", 0), (3, "val", 5)):
        pairs = dataset.pairs(split, task)
        batch = encode(model, pairs.inputs[row : row + 1], pairs.answer_choices[row : row + 1], "cpu")
        margin = model(**model_inputs(model, batch))[0]
        flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(margin, params)]).double()
        stored = np.load(run.gradients / f"task_{task}_{split}_gradients.npy")[row]
        np.testing.assert_allclose(stored, (P.T @ flat).numpy(), rtol=1e-4, atol=1e-6 * np.abs(stored).max())
        assert np.load(run.gradients / f"task_{task}_{split}_outputs.npy")[row] == pytest.approx(margin.item(), abs=1e-5)
        np.testing.assert_array_equal(np.load(run.gradients / f"task_{task}_{split}_labels.npy"), pairs.labels)


def test_truth_estimate_report_and_groups_use_accuracy(run):
    truth, estimate = (
        read_results(run.root / "results" / "truth.csv"),
        read_results(run.root / "results" / "subsets_estimate.csv"),
    )
    assert len(truth) == len(estimate) == sum(len(subset) for subset in SUBSETS)
    for rows in (truth, estimate):
        assert all(0 <= row["val_accuracy"] <= 1 for row in rows)
    report = read_json(run.root / "results" / "truth_report.json")
    assert set(report["by_score"]) == {"loss", "accuracy"}  # the text domain's default scores
    summary = read_json(run.root / "results" / "final_summary.json")
    assert set(summary) == {"grouped", "STL", "MTL"} and all(0 <= entry["avg_test_accuracy"] <= 1 for entry in summary.values())
    assert read_subsets(run.planted, TASKS) == [(0, 1), (2, 3)]


def test_the_base_weights_stay_the_pretrained_ones(run, monkeypatch):
    """Only LoRA and head parameters train: the checkpoint's model carries the folder's own encoder weights."""
    monkeypatch.chdir(run.root)
    from transformers import AutoModel

    model, _ = load_checkpoint(run.checkpoint, torch.device("cpu"))
    pretrained = AutoModel.from_pretrained("tinybert").state_dict()
    merged = {
        name.replace("base_model.model.", "").replace(".base_layer", ""): value
        for name, value in model.encoder.state_dict().items()
    }
    for name, value in pretrained.items():
        if name in merged and "pooler" not in name:
            torch.testing.assert_close(merged[name], value, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------- refusals
def bad_template_file(folder):
    path = folder / "bad.jsonl"
    path.write_text(
        '{"name": "ok", "jinja": "{{premise}} {{hypothesis}} ||| {{answer_choices[label]}}"}\n'
        '{"name": "broken_one", "jinja": "{{premise}} {{no_such_field}} ||| {{answer_choices[label]}}"}\n'
    )
    return path


def rte_folder(folder):
    folder.mkdir()
    rows = [
        {"premise": f"p{i} a b", "hypothesis": f"h{i}", "label": ["entailment", "not_entailment"][i % 2], "idx": i}
        for i in range(12)
    ]
    import json

    for split in ("train", "val"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.mark.parametrize(
    "case",
    ["unknown dataset", "bad template", "model folder without weights", "subset names a missing instruction", "graph flag"],
)
def test_text_bad_input_exits_2_with_one_line_naming_it_and_writes_nothing(run, tmp_path, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty-model").mkdir()
    (tmp_path / "empty-model" / "config.json").write_text(read_json_text(run.root / "tinybert" / "config.json"))
    (tmp_path / "subsets.txt").write_text("0 1\n2 9\n")
    argv, needle = {
        "unknown dataset": (["--dataset", "no_such_text"], "no_such_text"),
        "bad template": (
            [
                "--dataset",
                "rte",
                "--data-dir",
                str(rte_folder(tmp_path / "rte")),
                "--instructions",
                str(bad_template_file(tmp_path)),
            ],
            "broken_one",
        ),
        "model folder without weights": ([*DATA, "--text-model", "empty-model"], "empty-model"),
        "subset names a missing instruction": (
            [*DATA, "--subsets-file", "subsets.txt", "--text-model", str(run.root / "tinybert")],
            "9",
        ),
        "graph flag": ([*DATA, "--train-frac", "0.2"], "--train-frac"),
    }[case]
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*") if "data" not in path.parts)
    status = exit_status(train_multitask.main, train_multitask.get_args_parser(), [*argv, "--no-progress", "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and needle in err[0], err
    after = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*") if "data" not in path.parts)
    assert after == before


def read_json_text(path) -> str:
    return path.read_text()

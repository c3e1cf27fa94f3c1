"""TAG's look-ahead affinity: the formula against a hand computation, self-affinity, absent tasks, and
train_multitask.py --record-tag end to end on the tiny planted graph (the matrix run_clustering.py reads)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import run_clustering
import train_multitask
from gradtag.checkpoints import state_fingerprint
from gradtag.tag import TagAverage, lookahead_affinity
from gradtag.training import shared_parameter_names
from models import build_model
from tests.conftest import TINY_PLANTED_FLAGS

TARGETS = torch.tensor([1.0, -2.0], dtype=torch.float64)


class SharedScalar(nn.Module):
    """o_k = w + h_k: one shared scalar w and one head scalar h_k per task."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
        self.head = nn.Parameter(torch.tensor([0.1, -0.3], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0 + self.w + self.head


def quadratic_losses(outputs: torch.Tensor):
    """L_k = (o_k − c_k)², both tasks present."""
    return (outputs - TARGETS) ** 2, torch.ones(2, dtype=torch.bool)


def test_lookahead_affinity_matches_a_hand_computation_and_leaves_the_model_alone():
    model, lr = SharedScalar(), 0.1
    Z = lookahead_affinity(model, (torch.zeros(2, dtype=torch.float64),), quadratic_losses, ["w"], lr)
    w, h, c = 0.5, np.array([0.1, -0.3]), TARGETS.numpy()
    before = (w + h - c) ** 2
    expected = np.zeros((2, 2))
    for i in range(2):
        stepped = w - lr * 2 * (w + h[i] - c[i])  # SGD on the shared w only: dL_i/dw = 2 (w + h_i − c_i)
        expected[i] = 1 - (stepped + h - c) ** 2 / before  # the heads keep their values
    np.testing.assert_allclose(Z.numpy(), expected, rtol=1e-12)
    assert Z[0, 1] < 0 < Z[0, 0] and Z[1, 1] > 0  # the targets pull w apart: each task's step hurts the other
    assert model.w.item() == 0.5 and model.head.tolist() == [0.1, -0.3] and model.w.grad is None


def test_self_affinity_is_positive_for_a_small_step_and_output_rows_are_task_specific():
    torch.manual_seed(0)
    model = build_model("sign", 5, 1, 3, hop_width=8, head_width=4)
    x, labels = torch.randn(64, 2, 5), (torch.rand(64, 3) < 0.5).float()
    shared = shared_parameter_names(model)
    assert "head.1.weight" not in shared and "head.1.bias" not in shared and "head.0.0.weight" in shared

    def losses(logits):
        return nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0), torch.ones(3, dtype=bool)

    Z = lookahead_affinity(model, (x,), losses, shared, lr=1e-3)
    assert Z.shape == (3, 3) and torch.isfinite(Z).all() and (torch.diagonal(Z) > 0).all()


def test_a_task_absent_from_the_batch_is_nan_in_its_row_and_column_and_skipped_in_the_average():
    model = SharedScalar()

    def task_0_only(outputs):
        return torch.stack([(outputs[0] - TARGETS[0]) ** 2, outputs[1] * 0]), torch.tensor([True, False])

    Z = lookahead_affinity(model, (torch.zeros(2, dtype=torch.float64),), task_0_only, ["w"], 0.1)
    assert torch.isfinite(Z[0, 0]) and torch.isnan(Z[1]).all() and torch.isnan(Z[:, 1]).all()
    average = TagAverage(2)
    average.add(Z)
    average.add(np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_allclose(average.affinity(), [[(Z[0, 0].item() + 1) / 2, 2.0], [3.0, 4.0]])
    assert average.steps == 2 and average.counts.tolist() == [[2, 1], [1, 1]]


def train(root, *extra: str) -> None:
    flags = [*TINY_PLANTED_FLAGS, "--epochs", "20", "--patience", "5", "--no-progress", "--threads", "1"]
    folders = ["--data-dir", str(root / "planted"), "--saved-dir", str(root / "saved"), "--results-dir", str(root / "results")]
    train_multitask.main(train_multitask.get_args_parser().parse_args([*flags, *folders, *extra]))


def test_record_tag_writes_a_finite_matrix_that_run_clustering_reads_and_trains_the_same_theta(workdir, capsys):
    train(workdir / "with", "--record-tag", "--tag-every", "2")
    train(workdir / "without")
    folder = workdir / "with" / "saved" / "planted" / "all_seed0"
    assert "TAG affinity: averaged over 10 of 20 steps (every 2)" in capsys.readouterr().out
    affinity, counts = np.load(folder / "tag_affinity.npy"), np.load(folder / "tag_affinity_counts.npy")
    assert affinity.shape == (4, 4) and affinity.dtype == np.float64 and np.isfinite(affinity).all()
    assert (counts == 10).all() and (np.diag(affinity) > 0).all()
    sidecar = json.loads((folder / "tag_affinity.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert sidecar["steps"] == metrics["tag"]["steps"] == 10 and sidecar["lr"] > 0 and metrics["tag"]["seconds"] > 0
    assert sidecar["tasks"] == [0, 1, 2, 3] and sidecar["uncovered_pairs"] == []
    # the look-aheads' FLOPs are counted and included in the run's, as their seconds are
    plain = json.loads((workdir / "without" / "saved/planted/all_seed0/metrics.json").read_text())
    assert sidecar["flops"] > 0 and metrics["flops"] == plain["flops"] + sidecar["flops"]
    # the look-ahead runs in eval mode on substituted weights and draws no random numbers: θ* is unchanged by it
    weights = [torch.load(root / "saved/planted/all_seed0/model.pt") for root in (workdir / "with", workdir / "without")]
    assert state_fingerprint(weights[0]) == state_fingerprint(weights[1])
    assert not (workdir / "without" / "saved/planted/all_seed0/tag_affinity.npy").exists()

    out = workdir / "groups.txt"
    argv = ["--affinity", str(folder / "tag_affinity.npy"), "--k", "2", "--out", str(out)]
    summary = run_clustering.main(run_clustering.get_args_parser().parse_args(argv))
    assert sorted(task for group in summary["groups"] for task in group) == [0, 1, 2, 3] and out.is_file()


@pytest.mark.parametrize("every", ["0", "x"])
def test_tag_every_must_be_a_positive_integer(every, capsys):
    with pytest.raises(SystemExit):
        train_multitask.get_args_parser().parse_args(["--record-tag", "--tag-every", every])
    assert "--tag-every: must be an integer >= 1" in capsys.readouterr().err


def test_record_tag_on_a_text_model_treats_every_lora_and_head_parameter_as_shared(workdir):
    from gradtag.text_training import shared_parameter_names as text_shared
    from steps.domains import load_checkpoint
    from tests.test_text_pipeline import DATA, call, tiny_bert_folder

    tiny_bert_folder(workdir / "tinybert")
    model = ["--text-model", "tinybert", "--lora-rank", "2", "--threads", "1", "--no-progress"]
    call(train_multitask, *DATA, *model, "--epochs", "2", "--lr", "5e-3", "--record-tag")
    folder = workdir / "saved" / "text_planted" / "all_seed0"
    affinity = np.load(folder / "tag_affinity.npy")
    assert affinity.shape == (4, 4) and np.isfinite(affinity).all() and (np.diag(affinity) > 0).all()
    text_model, _ = load_checkpoint(folder, torch.device("cpu"))
    shared = text_shared(text_model)
    assert "head.weight" in shared and all("lora" in name or name.startswith("head.") for name in shared)

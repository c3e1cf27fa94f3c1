"""Data-map grouping (STG-MTL): the data-map statistics against hand-computed values, fuzzy c-means memberships
(columns sum to 1, harden as m -> 1, k-means' partition on well separated tasks), weight-0 tasks left untouched, and
end to end on the tiny planted graph: train_multitask.py --record-data-map, run_clustering.py --data-map, grouped
training with --task-weights, and a mis-shaped --task-weights refused."""

import json

import numpy as np
import pytest
import torch

import run_clustering
import train_multitask
from data import load_dataset
from gradtag.datamaps import fuzzy_memberships, hard_groups, kmeans_memberships, sigmoid_true_probability, task_features
from gradtag.training import TrainConfig, train_model
from models import build_model
from tests.conftest import TINY_PLANTED, exit_status
from tests.test_train_multitask import tiny_flags


# ---------------------------------------------------------------------------------------------------------- the math
def test_task_features_equal_hand_computed_confidence_and_variability():
    trace = np.array([[0.2, 0.8, 0.5, 1.0], [0.4, 0.8, 0.7, 0.0], [0.6, 0.8, 0.9, 0.5]], dtype=np.float32)  # (3 epochs, 4)
    pair_tasks = np.array([0, 0, 1, 1])
    # by hand, per pair: confidence = mean over epochs, variability = population std over epochs
    confidence = [0.4, 0.8, 0.7, 0.5]
    variability = [np.sqrt(0.08 / 3), 0.0, np.sqrt(0.08 / 3), np.sqrt(0.5 / 3)]
    features = task_features(trace, pair_tasks, 2)
    expected = [
        [(confidence[0] + confidence[1]) / 2, (variability[0] + variability[1]) / 2],
        [(confidence[2] + confidence[3]) / 2, (variability[2] + variability[3]) / 2],
    ]
    np.testing.assert_allclose(features, expected, rtol=1e-6)
    rich = task_features(trace, pair_tasks, 2, kind="quantiles")
    assert rich.shape == (2, 20)
    np.testing.assert_allclose(rich[:, :2], expected, rtol=1e-6)
    np.testing.assert_allclose(rich[0, 2:11], np.quantile(confidence[:2], np.linspace(0.1, 0.9, 9)), rtol=1e-6)
    with pytest.raises(ValueError, match="task 2 has no pair"):
        task_features(trace, pair_tasks, 3)


def test_true_label_probability_is_the_sigmoid_of_the_signed_logit():
    logits = np.array([0.0, 2.0, 2.0, -800.0])
    labels = np.array([1, 1, 0, 0])
    expected = [0.5, 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(2.0)), 1.0]
    np.testing.assert_allclose(sigmoid_true_probability(logits, labels), expected, rtol=1e-6)


def separated_features() -> np.ndarray:
    """Nine tasks in three well separated clouds of 2-D features (task i in cloud i % 3)."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.1, 0.05], [0.5, 0.3], [0.9, 0.1]])
    return centres[np.arange(9) % 3] + 0.01 * rng.standard_normal((9, 2))


def test_fuzzy_memberships_sum_to_one_harden_as_m_tends_to_one_and_match_kmeans():
    features = separated_features()
    kmeans = kmeans_memberships(features, 3, seed=0)
    softness = []
    for m in (3.0, 1.5, 1.07, 1.01):
        result = fuzzy_memberships(features, 3, fuzziness=m, seed=0)
        assert result.memberships.shape == (3, 9)
        np.testing.assert_allclose(result.memberships.sum(axis=0), 1.0, atol=1e-12)
        assert np.all(result.memberships >= 0)
        assert sorted(hard_groups(result.memberships)) == sorted(hard_groups(kmeans.memberships))
        softness.append(float(np.abs(result.memberships - np.round(result.memberships)).max()))
    assert softness == sorted(softness, reverse=True) and softness[0] > 0.05 and softness[-1] < 1e-9
    assert sorted(hard_groups(kmeans.memberships)) == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    again = fuzzy_memberships(features, 3, seed=0)
    np.testing.assert_array_equal(again.memberships, fuzzy_memberships(features, 3, seed=0).memberships)  # deterministic


def test_hard_groups_are_the_argmax_and_never_empty():
    memberships = np.array([[0.9, 0.8, 0.6, 0.1], [0.1, 0.2, 0.4, 0.9], [0.0, 0.0, 0.0, 0.0]])
    assert hard_groups(memberships[:2]) == [[0, 1, 2], [3]]
    groups = hard_groups(memberships + np.array([[0], [0], [1e-3]]))  # group 2 wins no task: it takes one from group 0
    assert all(groups) and sorted(task for group in groups for task in group) == [0, 1, 2, 3]


def test_weight_zero_task_keeps_its_head_rows_bit_identical(tmp_path):
    dataset = load_dataset("planted", data_dir=tmp_path / "planted", cache_dir=tmp_path / "cache", **TINY_PLANTED)
    torch.manual_seed(0)
    model = build_model(
        "sign", dataset.features.shape[2], dataset.features.shape[1] - 1, dataset.num_tasks, hop_width=8, head_width=4
    )
    weight_before = model.output_layer.weight.detach().clone()
    bias_before = model.output_layer.bias.detach().clone()
    config = TrainConfig(epochs=5, lr=1e-2, weight_decay=1e-2, batch_size=8, patience=100)
    train_model(model, dataset, [0, 1, 2, 3], config, torch.device("cpu"), seed=0, task_weights=[0.7, 0.0, 0.2, 0.1])
    weight, bias = model.output_layer.weight.detach(), model.output_layer.bias.detach()
    assert torch.equal(weight[1], weight_before[1]) and torch.equal(bias[1], bias_before[1])  # weight 0: untouched
    for task in (0, 2, 3):
        assert not torch.equal(weight[task], weight_before[task])


# ---------------------------------------------------------------------------------------------------------- end to end
def test_data_map_recorded_clustered_and_trained_with_weights(tmp_path, workdir, capsys):
    train_multitask.main(
        train_multitask.get_args_parser().parse_args(tiny_flags(tmp_path, "--record-data-map", "--threads", "1"))
    )
    checkpoint = tmp_path / "saved" / "planted" / "all_seed0"
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    dataset = load_dataset("planted", data_dir=tmp_path / "planted", cache_dir=tmp_path / "cache", **TINY_PLANTED)
    with np.load(checkpoint / "data_map.npz") as archive:
        trace, pair_tasks, samples, labels = (archive[key] for key in ("probabilities", "tasks", "samples", "labels"))
    pairs = int(dataset.masks["train"].sum())
    assert trace.shape == (metrics["epochs_run"], pairs) and trace.dtype == np.float32
    assert np.all((trace >= 0) & (trace <= 1))
    assert np.array_equal(labels, dataset.labels[samples, pair_tasks])
    assert np.array_equal(np.bincount(pair_tasks), dataset.masks["train"].sum(axis=0))

    out = tmp_path / "results" / "dm.txt"
    run_clustering.main(
        run_clustering.get_args_parser().parse_args(["--data-map", str(checkpoint), "--k", "2", "--out", str(out)])
    )
    memberships = np.load(tmp_path / "results" / "dm_memberships.npy")
    assert memberships.shape == (2, 4)
    np.testing.assert_allclose(memberships.sum(axis=0), 1.0, atol=1e-12)
    lines = [line.split() for line in out.read_text().splitlines() if not line.startswith("#")]
    assert sorted(int(task) for line in lines for task in line) == [0, 1, 2, 3] and len(lines) == 2 and all(lines)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["method"] == "fuzzy" and summary["fuzziness"] == 1.07 and out.with_suffix(".png").is_file()

    weights = str(tmp_path / "results" / "dm_memberships.npy")
    train_multitask.main(
        train_multitask.get_args_parser().parse_args(tiny_flags(tmp_path, "--subsets-file", str(out), "--task-weights", weights))
    )
    assert (tmp_path / "results" / "dm_weighted_scratch.csv").is_file()
    capsys.readouterr()

    # a (3, 4) matrix for a 2-line groups file: one line, exit 2, nothing written
    np.save(tmp_path / "bad.npy", np.ones((3, 4)))
    before = sorted(path.name for path in (tmp_path / "results").iterdir())
    argv = tiny_flags(tmp_path, "--subsets-file", str(out), "--task-weights", str(tmp_path / "bad.npy"), "--results-name", "bad")
    assert exit_status(train_multitask.main, train_multitask.get_args_parser(), argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --task-weights") and "(2, 4)" in err
    assert sorted(path.name for path in (tmp_path / "results").iterdir()) == before


def test_data_map_flags_are_refused_where_they_make_no_sense(tmp_path, workdir, capsys):
    parser = train_multitask.get_args_parser()
    assert exit_status(train_multitask.main, parser, tiny_flags(tmp_path, "--record-data-map", "--fixed-steps", "3")) == 2
    assert "--fixed-steps has no epochs" in capsys.readouterr().err
    assert exit_status(train_multitask.main, parser, tiny_flags(tmp_path, "--task-weights", "w.npy")) == 2
    assert "needs --subsets-file" in capsys.readouterr().err
    assert not (tmp_path / "saved").exists()


def test_text_data_map_and_weighted_groups(tmp_path, workdir):
    """The text domain: (example, instruction) pairs traced per epoch; a weighted groups run trains."""
    from tests.test_text_pipeline import DATA, PER_TASK, TASKS, tiny_bert_folder

    tiny_bert_folder(tmp_path / "tinybert")
    flags = [*DATA, "--text-model", "tinybert", "--lora-rank", "2", "--threads", "1", "--no-progress", "--epochs", "2"]
    train_multitask.main(train_multitask.get_args_parser().parse_args([*flags, "--record-data-map"]))
    with np.load(tmp_path / "saved" / "text_planted" / "all_seed0" / "data_map.npz") as archive:
        trace, pair_tasks = archive["probabilities"], archive["tasks"]
    assert trace.shape == (2, TASKS * PER_TASK) and np.all((trace >= 0) & (trace <= 1))
    assert np.array_equal(pair_tasks, np.repeat(np.arange(TASKS), PER_TASK))

    (tmp_path / "groups.txt").write_text("0 1\n2 3\n")
    np.save(tmp_path / "weights.npy", np.array([[0.6, 0.3, 0.1, 0.0], [0.0, 0.2, 0.4, 0.4]]))
    argv = [*flags, "--subsets-file", "groups.txt", "--task-weights", "weights.npy"]
    train_multitask.main(train_multitask.get_args_parser().parse_args(argv))
    assert (tmp_path / "results" / "groups_weighted_scratch.csv").is_file()

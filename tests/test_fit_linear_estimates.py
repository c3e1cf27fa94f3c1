"""Step 3: fit_linear_estimates.py on real step-2 folders of a tiny planted graph — the estimate CSV and affinity
files, the linearized loss against a direct recomputation, reconstructed against linearized, averaging over
meta-initializations, pairwise files, the uncovered-pairs warning and the refusals."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import fit_linear_estimates
import sample_subsets
import steps.estimate as estimate_step
from gradtag.affinity import higher_order_affinity
from gradtag.artifacts import read_json
from gradtag.exact_step import ExactStep, SignStep, preparation_flops
from gradtag.flops import count_flops
from gradtag.gradients import flat_params, taylor_logits
from gradtag.projection import Projector
from gradtag.regression import fit_subsets, prepare_tasks
from gradtag.results import RESULT_COLUMNS, read_results
from gradtag.scores import score_records
from gradtag.training import class_weights
from tests.conftest import TINY_PLANTED_FLAGS, exit_status, without_base_warnings
from tests.test_collect_gradients import collect, train_checkpoints

TRIPLES = [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)]  # every subset of size 3 of 4 tasks: each pair in 2 of them


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two meta-initializations (seeds 0, 1) and their gradients, plus a partial and a d=4 folder (read-only)."""
    root = tmp_path_factory.mktemp("estimate")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        checkpoints = train_checkpoints(root, runs=2)
        grads = [root / f"grads_seed{seed}" for seed in (0, 1)]
        for checkpoint, folder in zip(checkpoints, grads, strict=True):
            collect(checkpoint, folder)
        collect(checkpoints[0], root / "grads_tasks01", "--tasks", "0 1")
        collect(checkpoints[0], root / "grads_d4_train", "--tasks", "0 1", "--project-dim", "4", "--splits", "train")
    triples = root / "triples.txt"
    triples.write_text("".join(" ".join(map(str, subset)) + "\n" for subset in TRIPLES))
    return SimpleNamespace(
        root=root,
        checkpoints=checkpoints,
        grads=grads,
        tasks01=root / "grads_tasks01",
        d4_train=root / "grads_d4_train",
        triples=triples,
    )


def fit_argv(gradients, subsets_file, results_dir, *extra: str) -> list[str]:
    gradients = [str(folder) for folder in (gradients if isinstance(gradients, list) else [gradients])]
    return [
        "--gradients",
        *gradients,
        "--subsets-file",
        str(subsets_file),
        "--results-dir",
        str(results_dir),
        "--no-progress",
        *extra,
    ]


def fit(gradients, subsets_file, results_dir, *extra: str) -> None:
    parser = fit_linear_estimates.get_args_parser()
    fit_linear_estimates.main(parser.parse_args(fit_argv(gradients, subsets_file, results_dir, *extra)))


def load_split(folder, task: int, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.load(folder / f"task_{task}_{split}_{kind}.npy") for kind in ("gradients", "outputs", "labels"))


def by_key(rows) -> dict:
    return {(row["subset"], row["task"]): row for row in rows}


# ---------------------------------------------------------------------------------------------------------- outputs
def test_writes_estimate_csv_and_higher_order_affinity(folders, tmp_path, capsys):
    fit(folders.grads[0], folders.triples, tmp_path, "--name", "tri")
    assert "estimated 4 subsets x 1 base model(s) (newton-cg, linearized" in capsys.readouterr().out
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "tri_estimate.csv",
        "tri_estimate.json",
        "tri_estimate_higher_order.json",
        "tri_estimate_higher_order.npy",
        "tri_estimate_higher_order_counts.npy",
    ]
    with open(tmp_path / "tri_estimate.csv", newline="") as fh:
        assert next(csv.reader(fh)) == RESULT_COLUMNS
    rows = read_results(tmp_path / "tri_estimate.csv")
    assert [(row["subset_id"], row["subset"], row["task"]) for row in rows] == [
        (index, " ".join(map(str, subset)), task) for index, subset in enumerate(TRIPLES) for task in subset
    ]
    for row in rows:
        assert row["source"] == "estimate" and row["seed"] == -1
        assert 0 < row["val_loss"] < 5 and 0 <= row["val_f1"] <= 1
        assert np.isnan(row["test_loss"]) and np.isnan(row["test_f1"])  # no test gradients were collected
    # the estimate's implied move ‖P ŵ_S‖ / ‖θ*‖, one value per subset
    moves = {row["subset"]: row["distance"] for row in rows}
    assert all(0 < move < 10 for move in moves.values()) and all(row["distance"] == moves[row["subset"]] for row in rows)

    T = np.load(tmp_path / "tri_estimate_higher_order.npy")
    counts = np.load(tmp_path / "tri_estimate_higher_order_counts.npy")
    expected, expected_counts = higher_order_affinity(score_records(rows, "loss"), 4)
    assert T.dtype == np.float64 and T.shape == (4, 4) and np.array_equal(T, expected)
    assert np.array_equal(counts, expected_counts) and np.array_equal(counts, 2 + np.eye(4, dtype=np.int64))
    # Eq. (1) by hand for one entry: T_01 = mean of -f(S, 0) over the subsets holding 0 and 1
    loss = {(row["subset"], row["task"]): row["val_loss"] for row in rows}
    assert T[0, 1] == pytest.approx(-(loss["0 1 2", 0] + loss["0 1 3", 0]) / 2, rel=1e-12)

    sidecar = read_json(tmp_path / "tri_estimate.json")
    assert sidecar["subsets"] == [list(subset) for subset in TRIPLES] and sidecar["eval"] == "linearized"
    assert sidecar["dataset"] == "planted" and sidecar["gradients"] == [str(folders.grads[0])]
    assert sidecar["dataset_fingerprint"] == read_json(folders.grads[0] / "config.json")["dataset_fingerprint"]
    meta = read_json(tmp_path / "tri_estimate_higher_order.json")
    assert meta["kind"] == "higher_order" and meta["uncovered_pairs"] == []
    # cost: step 3's FLOPs and seconds, and the base's steps 1-2 read from its checkpoint and gradient folder
    base_training = read_json(Path(read_json(folders.grads[0] / "config.json")["checkpoint"]) / "metrics.json")
    gradients_cost = read_json(folders.grads[0] / "cost_shard0of1.json")
    assert sidecar["flops"] > 0 and sidecar["seconds"] > 0 and sidecar["flops_counted_subsets"] == len(TRIPLES)
    assert sidecar["one_off"]["flops"] == base_training["flops"] + gradients_cost["flops"] > 0


def test_flops_are_counted_on_one_batch_and_scaled(folders, tmp_path):
    """The counting pass covers the per-task work and the first batch only; identical subsets scale (nearly) exactly."""
    subsets = tmp_path / "same.txt"
    subsets.write_text("0 1 2\n" * 8)
    fit(folders.grads[0], subsets, tmp_path, "--name", "all")
    fit(folders.grads[0], subsets, tmp_path, "--name", "batch2", "--batch-size", "2")
    whole, sampled = (read_json(tmp_path / f"{name}_estimate.json") for name in ("all", "batch2"))
    assert sampled["flops_counted_subsets"] == 2 and whole["flops_counted_subsets"] == 8
    # not exact: newton-cg's float32 products round differently for a batch of 2 and of 8, which can cost a CG step
    assert sampled["flops"] == pytest.approx(whole["flops"], rel=0.05)


def test_linearized_loss_equals_a_direct_recomputation(folders, tmp_path):
    l2 = 0.1
    fit(folders.grads[0], folders.triples, tmp_path, "--name", "tri", "--l2", str(l2))
    rows = by_key(read_results(tmp_path / "tri_estimate.csv"))

    train = [load_split(folders.grads[0], task, "train") for task in range(4)]
    balanced = read_json(folders.grads[0] / "config.json")["training"]["balanced"]
    assert balanced  # the planted default trains class-balanced, so the regression must weigh rows the same way
    row_weights = []
    for _, _, labels in train:
        positives = labels > 0.5
        row_weights.append(np.where(positives, 1 / positives.sum(), 1 / (~positives).sum()))
    task_data = prepare_tasks(*zip(*train, strict=True), row_weights_list=row_weights)
    weights = fit_subsets(task_data, TRIPLES, l2).weights.numpy()  # (m, d)
    assert np.abs(weights).max() > 1e-3  # a real step away from θ*, so the check below is not the base loss
    for index, subset in enumerate(TRIPLES):
        for task in subset:
            G, outputs, labels = (array.astype(np.float64) for array in load_split(folders.grads[0], task, "val"))
            logits = outputs + G @ weights[index]  # Eq. (4)
            bce = np.mean(np.logaddexp(0.0, logits) - labels * logits)
            row = rows[" ".join(map(str, subset)), task]
            assert row["val_loss"] == pytest.approx(bce, rel=1e-9)
            base_loss = np.mean(np.logaddexp(0.0, outputs) - labels * outputs)
            assert abs(row["val_loss"] - base_loss) > 1e-4
            predicted, truth = logits > 0, labels > 0.5
            denominator = predicted.sum() + truth.sum()
            f1 = 2 * np.sum(predicted & truth) / denominator if denominator else 0.0
            assert row["val_f1"] == pytest.approx(f1, abs=1e-12)


def test_reconstructed_eval_is_close_to_linearized_for_small_steps(folders, workdir):
    # With a strong penalty ŵ_S is small, so the network at θ* + P ŵ_S is close to its linearization (Eq. 4 vs 5).
    fit(folders.grads[0], folders.triples, workdir, "--name", "lin", "--l2", "100")
    fit(folders.grads[0], folders.triples, workdir, "--name", "rec", "--l2", "100", "--eval", "reconstructed")
    linearized = by_key(read_results(workdir / "lin_estimate.csv"))
    reconstructed = by_key(read_results(workdir / "rec_estimate.csv"))
    assert linearized.keys() == reconstructed.keys() and len(linearized) == 12
    assert read_json(workdir / "rec_estimate.json")["eval"] == "reconstructed"
    for key, row in reconstructed.items():
        _, outputs, labels = (array.astype(np.float64) for array in load_split(folders.grads[0], key[1], "val"))
        step = abs(linearized[key]["val_loss"] - np.mean(np.logaddexp(0.0, outputs) - labels * outputs))
        gap = abs(row["val_loss"] - linearized[key]["val_loss"])
        assert gap < 1e-3 * linearized[key]["val_loss"], key
        assert gap < 0.2 * step, key  # the two agree on the change from θ*, not only on the base loss
        assert np.isfinite(row["test_loss"]) and 0 <= row["test_f1"] <= 1  # the network scores the test split too


def test_second_order_eval_sits_between_linearized_and_the_network(folders, workdir):
    # Remark 3.1: adding ½ Δᵀ∇²f Δ to the linearized logits moves each score toward the network's own at θ* + P ŵ_S
    flags = ["--l2", "1"]
    for name, mode in (("lin", "linearized"), ("rec", "reconstructed"), ("sec", "second-order")):
        fit(folders.grads[0], folders.triples, workdir, "--name", name, *flags, "--eval", mode)
    lin, rec, sec = (by_key(read_results(workdir / f"{name}_estimate.csv")) for name in ("lin", "rec", "sec"))
    assert lin.keys() == rec.keys() == sec.keys() and read_json(workdir / "sec_estimate.json")["eval"] == "second-order"
    gap_first = np.array([abs(lin[key]["val_loss"] - rec[key]["val_loss"]) for key in rec])
    gap_second = np.array([abs(sec[key]["val_loss"] - rec[key]["val_loss"]) for key in rec])
    assert gap_first.min() > 0 and gap_second.mean() < 0.5 * gap_first.mean()
    assert all(np.isfinite(row["test_loss"]) and 0 <= row["test_f1"] <= 1 for row in sec.values())


def linearised_loss(model, dataset, delta: torch.Tensor, task: int) -> float:
    """Task ``task``'s validation BCE under θ* + ``delta`` linearised, by an independent jvp (taylor_logits)."""
    nodes = dataset.samples(task, "val")
    value, slope, _ = taylor_logits(model, flat_params(model), delta.float(), dataset.features[nodes])
    z = (value + slope)[:, task].double().numpy()
    y = dataset.labels[nodes, task].astype(float)
    return float(np.mean(np.logaddexp(0, z) - y * z))


def test_exact_step_is_the_strong_penalty_limit_of_the_regression_without_projection(folders, workdir):
    config = read_json(folders.grads[0] / "config.json")
    dataset, model = estimate_step.load_base(config, "cpu")
    balanced = config["training"]["balanced"]
    exact = ExactStep(model, dataset, [0, 1, 2, 3], balanced, "cpu", splits=("val",))
    # projected, its task gradients are the regression's gradients at w = 0 (whose −1/λ multiple is ŵ_S as λ → ∞)
    train = estimate_step.load_gradient_folder(folders.grads[0], ("train",), 4)["train"]
    labels = train["labels"]
    weights = [class_weights(y[:, None] > 0.5, np.ones((len(y), 1), bool), balanced)[:, 0] for y in labels]
    task_data = prepare_tasks(train["gradients"], train["outputs"], labels, row_weights_list=weights)
    projected = Projector.from_spec(config["projection"]).project(exact.gradients.float()).double()
    torch.testing.assert_close(projected, task_data.grad, rtol=1e-3, atol=1e-6)
    fitted = fit_subsets(task_data, [(0, 1, 2)], l2=1e6, solver="newton-cg").weights[0]
    torch.testing.assert_close(fitted * 1e6, -task_data.grad[:3].mean(0), rtol=1e-3, atol=1e-6)

    # its scores are the linearised logits o + J Δ_S with Δ_S = −mean_{k∈S} ∇L_k / λ, by an independent jvp
    l2 = 3.0
    scores = exact.scores([(0, 1, 2), (1, 3)], l2)
    delta = -exact.gradients[[1, 3]].mean(0) / l2
    for task in (1, 3):
        assert scores[1, task]["val_loss"] == pytest.approx(linearised_loss(model, dataset, delta, task), rel=1e-5)
    assert exact.distances([(1, 3)], l2)[0] == pytest.approx(float(delta.norm() / flat_params(model).double().norm()))

    # end to end: the CSV of --solver exact-step, and what it refuses
    fit(folders.grads[0], folders.triples, workdir, "--name", "ex", "--solver", "exact-step", "--l2", "3")
    rows = read_results(workdir / "ex_estimate.csv")
    assert len(rows) == 12 and read_json(workdir / "ex_estimate.json")["solver"] == "exact-step"
    assert all(np.isfinite(row["val_loss"]) and np.isnan(row["test_loss"]) and row["distance"] > 0 for row in rows)
    for extra in (["--eval", "reconstructed"], ["--l2", "0"]):
        argv = fit_argv(folders.grads[0], folders.triples, workdir / "no", "--solver", "exact-step", *extra)
        assert exit_status(fit_linear_estimates.main, fit_linear_estimates.get_args_parser(), argv) == 2
        assert not (workdir / "no").exists()


def test_pairs_file_gives_the_pairwise_affinity(folders, tmp_path):
    pairs = tmp_path / "pairs.txt"
    argv = [*TINY_PLANTED_FLAGS, "--pairs", "--out", str(pairs)]
    sample_subsets.main(sample_subsets.get_args_parser().parse_args(argv))
    fit(folders.grads[0], pairs, tmp_path / "results")
    assert not (tmp_path / "results" / "pairs_estimate_higher_order.npy").exists()
    T = np.load(tmp_path / "results" / "pairs_estimate_pairwise.npy")
    counts = np.load(tmp_path / "results" / "pairs_estimate_pairwise_counts.npy")
    rows = read_results(tmp_path / "results" / "pairs_estimate.csv")
    assert len(rows) == 12  # 6 pairs x 2 tasks
    for row in rows:
        i, j = (int(task) for task in row["subset"].split())
        other = j if row["task"] == i else i
        assert T[row["task"], other] == -row["val_loss"]  # T_ij = f({i, j}, i)
    off_diagonal = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose(np.diag(T), [T[i, off_diagonal[i]].mean() for i in range(4)])
    assert np.array_equal(counts, np.ones((4, 4), dtype=np.int64))
    meta = read_json(tmp_path / "results" / "pairs_estimate_pairwise.json")
    assert meta["kind"] == "pairwise" and meta["diagonal_filled_with_row_mean"] is True


def test_two_meta_initializations_average_the_single_folder_results(folders, tmp_path):
    fit(folders.grads, folders.triples, tmp_path, "--name", "both")
    for seed in (0, 1):
        fit(folders.grads[seed], folders.triples, tmp_path, "--name", f"seed{seed}")
    both = read_results(tmp_path / "both_estimate.csv")
    singles = [read_results(tmp_path / f"seed{seed}_estimate.csv") for seed in (0, 1)]
    assert [row["val_loss"] for row in singles[0]] != [row["val_loss"] for row in singles[1]]  # two different bases
    for row, first, second in zip(both, *singles, strict=True):
        assert (row["subset"], row["task"]) == (first["subset"], first["task"]) == (second["subset"], second["task"])
        for column in ("val_loss", "val_f1"):
            assert row[column] == pytest.approx((first[column] + second[column]) / 2, rel=1e-12, abs=1e-15)
    T = [np.load(tmp_path / f"{name}_estimate_higher_order.npy") for name in ("both", "seed0", "seed1")]
    np.testing.assert_allclose(T[0], (T[1] + T[2]) / 2, rtol=1e-12)
    assert read_json(tmp_path / "both_estimate.json")["gradients"] == [str(folder) for folder in folders.grads]
    flops = [read_json(tmp_path / f"{name}_estimate.json")["flops"] for name in ("both", "seed0", "seed1")]
    assert flops[0] == flops[1] + flops[2]


def test_uncovered_pairs_are_warned_about_and_left_nan(folders, tmp_path, capsys):
    subsets = tmp_path / "partial.txt"
    subsets.write_text("0 1 2\n0 1\n1 2\n")  # task 3 is in no subset
    fit(folders.grads[0], subsets, tmp_path)
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: 4 task pairs are in no subset: (0,3), (1,3), (2,3), (3,3); T is NaN there, and run_clustering.py and "
        "compare_affinities.py give those entries their row's mean (sample more subsets to cover them)"
    ]
    T = np.load(tmp_path / "partial_estimate_higher_order.npy")
    assert np.isnan(T[3]).all() and np.isnan(T[:, 3]).all() and np.isfinite(T[:3, :3]).all()
    assert read_json(tmp_path / "partial_estimate_higher_order.json")["uncovered_pairs"] == [[0, 3], [1, 3], [2, 3], [3, 3]]


# ---------------------------------------------------------------------------------------------------------- refusals
def tampered(folder, workdir, **changes):
    """A copy of a step-2 folder whose config.json claims other identity values."""
    copy = workdir / f"{folder.name}_tampered"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config.update(changes)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def refuse(argv, results_dir, capsys, *fragments: str) -> None:
    assert exit_status(fit_linear_estimates.main, fit_linear_estimates.get_args_parser(), argv) == 2
    err = without_base_warnings(capsys.readouterr().err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not results_dir.exists() or not list(results_dir.glob("*.csv"))


@pytest.mark.parametrize("key, value", [("dataset_fingerprint", "0123456789abcdef"), ("dataset", "dblp")])
def test_folders_of_different_datasets_are_refused(folders, workdir, capsys, key, value):
    other = tampered(folders.grads[1], workdir, **{key: value})
    results = workdir / "results"
    refuse(fit_argv([folders.grads[0], other], folders.triples, results), results, capsys, key, str(other))


def test_folders_of_different_project_dim_are_refused(folders, workdir, capsys):
    subsets = workdir / "s.txt"
    subsets.write_text("0 1\n")
    results = workdir / "results"
    refuse(fit_argv([folders.tasks01, folders.d4_train], subsets, results), results, capsys, "project_dim", "4", "8")


def test_subset_naming_a_task_without_gradients_is_refused(folders, workdir, capsys):
    subsets = workdir / "s.txt"
    subsets.write_text("0 1\n1 2\n2 3\n")
    results = workdir / "results"
    refuse(fit_argv(folders.tasks01, subsets, results), results, capsys, "tasks [2, 3]", str(folders.tasks01))
    # the same folder serves subsets of the tasks it holds
    subsets.write_text("0 1\n")
    fit(folders.tasks01, subsets, results)
    assert len(read_results(results / "s_estimate.csv")) == 2


def test_folder_without_validation_gradients_is_refused_before_writing(folders, workdir, capsys):
    subsets = workdir / "s.txt"
    subsets.write_text("0 1\n")
    results = workdir / "results"
    refuse(fit_argv(folders.d4_train, subsets, results), results, capsys, "val")


@pytest.mark.parametrize("solver", ["newton-cg", "exact-step"])
def test_calibrate_with_a_truth_picks_the_l2_that_made_it(folders, tmp_path, capsys, solver):
    """A 'truth' that is the estimate at λ = 0.1 itself: calibration over a grid holding 0.1 must choose it."""
    every = tmp_path / "every.txt"
    every.write_text("".join(" ".join(map(str, s)) + "\n" for size in (2, 3, 4) for s in itertools.combinations(range(4), size)))
    flags = ["--solver", solver, "--no-count-flops"]
    fit(folders.grads[0], every, tmp_path, "--name", "made", "--l2", "0.1", *flags)
    truth = tmp_path / "made_estimate.csv"
    grid = ["--l2-grid", "0.0001", "0.1", "100"]
    fit(folders.grads[0], folders.triples, tmp_path, "--name", "cal", "--calibrate-with", str(truth), *grid, *flags)
    printed = capsys.readouterr()
    assert "calibrated λ on 11 trained subsets" in printed.out and "λ = 0.1, held-out ρ 1.000" in printed.out
    calibration = read_json(tmp_path / "cal_estimate.json")["calibration"]
    assert calibration["problems"] == [] and "warning: calibration" not in printed.err  # 8.5 subsets per task, λ inside
    made = read_json(tmp_path / "made_estimate.json")  # what the calibration subsets cost, from their sidecar
    assert calibration["truth_cost"] == {"seconds": made["seconds"], "cpu_seconds": made["cpu_seconds"], "flops": None}
    assert calibration["cost"]["seconds"] > 0 and calibration["cost"]["flops"] is None  # --no-count-flops
    assert calibration["chosen_l2"] == 0.1 == read_json(tmp_path / "cal_estimate.json")["l2"]
    assert calibration["rho_by_l2"]["0.1"] == pytest.approx(1.0) and calibration["held_out_rho"] == pytest.approx(1.0)


def test_calibrate_solvers_chooses_the_solver_that_made_the_truth(folders, tmp_path, capsys):
    every = tmp_path / "every.txt"
    every.write_text("".join(" ".join(map(str, s)) + "\n" for size in (2, 3, 4) for s in itertools.combinations(range(4), size)))
    fit(folders.grads[0], every, tmp_path, "--name", "made", "--l2", "0.1", "--solver", "newton-cg", "--no-count-flops")
    truth = tmp_path / "made_estimate.csv"
    flags = ["--calibrate-with", str(truth), "--l2-grid", "0.1", "100", "--no-count-flops"]
    fit(folders.grads[0], folders.triples, tmp_path, "--name", "cal", *flags, "--calibrate-solvers", "exact-step", "newton-cg")
    meta = read_json(tmp_path / "cal_estimate.json")
    calibration = meta["calibration"]
    assert set(calibration["rho_by_setting"]) == {"exact-step 0.1", "exact-step 100", "newton-cg 0.1", "newton-cg 100"}
    assert calibration["rho_by_setting"]["newton-cg 0.1"] == pytest.approx(1.0)
    assert max(value for key, value in calibration["rho_by_setting"].items() if key.startswith("exact")) < 1.0
    assert calibration["chosen_solver"] == meta["solver"] == "newton-cg" and meta["l2"] == 0.1
    edge = "newton-cg's λ = 0.1 is on the edge of its grid 0.1..100: extend --l2-grid past it"
    printed = capsys.readouterr()
    assert calibration["problems"] == [edge] and f"warning: calibration: {edge}" in printed.err
    assert "newton-cg, λ = 0.1, held-out ρ 1.000" in printed.out
    argv = fit_argv(folders.grads[0], folders.triples, tmp_path / "no", "--calibrate-solvers", "newton-cg")
    assert exit_status(fit_linear_estimates.main, fit_linear_estimates.get_args_parser(), argv) == 2


def test_the_calibration_and_the_estimate_share_the_exact_steps_products(folders, tmp_path, monkeypatch):
    """The exact step's products (n forward-mode passes per task) are built once for the calibration and reused by the
    estimate: the same CSV as an uncalibrated run at the chosen λ, with one build instead of two, and the build's FLOPs
    counted once (in the sweep's)."""
    every = tmp_path / "every.txt"
    every.write_text("".join(" ".join(map(str, s)) + "\n" for size in (2, 3, 4) for s in itertools.combinations(range(4), size)))
    exact = ["--solver", "exact-step"]
    fit(folders.grads[0], every, tmp_path, "--name", "made", "--l2", "0.1", *exact, "--no-count-flops")
    builds = []
    original = ExactStep.__init__

    def counted(self, *args, **kwargs):
        builds.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(ExactStep, "__init__", counted)
    calibrated = ["--calibrate-with", str(tmp_path / "made_estimate.csv"), "--l2-grid", "0.01", "0.1", "1", *exact]
    fit(folders.grads[0], folders.triples, tmp_path, "--name", "cal", *calibrated, "--no-count-flops")
    assert len(builds) == 1  # before: one for the sweep, one for the estimate
    meta = read_json(tmp_path / "cal_estimate.json")
    assert meta["solver"] == "exact-step" and meta["l2"] == 0.1
    fit(folders.grads[0], folders.triples, tmp_path, "--name", "plain", "--l2", "0.1", *exact, "--no-count-flops")
    assert (tmp_path / "cal_estimate.csv").read_bytes() == (tmp_path / "plain_estimate.csv").read_bytes()

    builds.clear()
    fit(folders.grads[0], folders.triples, tmp_path / "counted", "--name", "cal", *calibrated)
    assert len(builds) == 1  # FLOPs counted on a sample of tasks (preparation_flops): no second build
    counted_meta = read_json(tmp_path / "counted" / "cal_estimate.json")
    plain = read_json(tmp_path / "plain_estimate.json")
    assert 0 < counted_meta["flops"] and counted_meta["calibration"]["cost"]["flops"] > counted_meta["flops"]
    assert plain["flops"] is None


def test_the_exact_steps_sampled_flop_count_equals_the_full_builds(folders):
    """preparation_flops counts the products of 2 tasks and scales by the samples scored: the same figure as counting
    the whole ExactStep build, at a fraction of its time."""
    config = read_json(folders.grads[0] / "config.json")
    dataset, model = estimate_step.load_base(config, torch.device("cpu"))
    tasks = list(range(dataset.num_tasks))
    with count_flops() as full:
        ExactStep(model, dataset, tasks, True, torch.device("cpu"), ("val",))
    sampled = preparation_flops(model, dataset, tasks, True, torch.device("cpu"), ("val",), sampled=2)
    assert full.total > 0 and sampled == pytest.approx(full.total, rel=1e-9)


def test_sign_step_scores_the_linearised_logits_of_an_adam_shaped_move(folders, workdir):
    """SignStep moves θ* by Δ_S = −η sign(mean_{k∈S} ∇L_k) (Adam's first normalised step) and scores o + J Δ_S, checked
    against an independent jvp; its move is not the exact step's (a sign, not the gradient)."""
    config = read_json(folders.grads[0] / "config.json")
    dataset, model = estimate_step.load_base(config, "cpu")
    exact = ExactStep(model, dataset, [0, 1, 2, 3], config["training"]["balanced"], "cpu", splits=("val",))
    sign = SignStep(exact)
    eta, subsets = 0.01, [(0, 1, 2), (1, 3)]
    moves = sign.moves(subsets, eta)
    delta = -eta * torch.sign(exact.gradients[[1, 3]].mean(0))
    torch.testing.assert_close(moves[1], delta.float())
    assert torch.isclose(moves.abs(), torch.tensor(eta)).float().mean() > 0.5  # every coordinate moves by η (or 0)
    scores = sign.scores(subsets, eta)
    for task in (1, 3):
        assert scores[1, task]["val_loss"] == pytest.approx(linearised_loss(model, dataset, delta, task), rel=1e-5)
    assert set(scores) == {(0, 0), (0, 1), (0, 2), (1, 1), (1, 3)}

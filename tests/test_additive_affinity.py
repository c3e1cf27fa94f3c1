"""The additive affinity (ridge partner effects per task): it recovers planted partner effects where Eq. 1's mean
does worse, its documented levels and diagonal, its large-λ limit, the too-few-subsets report, and
``fit_linear_estimates.py --affinity additive`` end to end on a tiny planted pipeline (clustered by run_clustering.py,
reported by compare_affinities.py beside Eq. 1's T)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import collect_gradients
import compare_affinities
import fit_linear_estimates
import merge_results
import run_clustering
import sample_subsets
import train_multitask
from gradtag.affinity import additive_affinity, additive_shortfall, higher_order_affinity, row_center
from gradtag.evaluation import per_task_spearman_rows, rows_spearman, split_half_reliability
from gradtag.results import read_results, read_subsets
from gradtag.scores import score_records
from steps.estimate import save_affinities
from tests.conftest import TINY_PLANTED_FLAGS, exit_status, without_base_warnings
from tests.test_bad_inputs import tree


def planted_table(n: int, m: int, size: int, noise: float, seed: int = 0):
    """m distinct random subsets of ``size`` of n tasks scored f(S, i) = a_i + Σ_{k ∈ S \\ i} b_ik + noise:
    the records, the levels a (n,) and the partner effects b (n, n), zero diagonal."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=(n, n))
    np.fill_diagonal(b, 0.0)
    subsets: set[tuple[int, ...]] = set()
    while len(subsets) < m:
        subsets.add(tuple(sorted(int(task) for task in rng.choice(n, size, replace=False))))
    records = [
        (subset, i, a[i] + sum(b[i, k] for k in subset) + noise * rng.normal()) for subset in sorted(subsets) for i in subset
    ]
    return records, a, b


@pytest.fixture(scope="module")
def table():
    return planted_table(n=20, m=200, size=5, noise=0.5)


def test_additive_recovers_planted_partner_effects_better_than_eq1(table):
    records, _, b = table
    T, counts = additive_affinity(records, 20)
    mean_T, mean_counts = higher_order_affinity(records, 20)
    additive_rho = per_task_spearman_rows(T, b).mean
    mean_rho = per_task_spearman_rows(mean_T, b).mean
    assert additive_rho > 0.95
    assert mean_rho < additive_rho - 0.1  # Eq. 1 averages over the other partners: ~0.85 here
    np.testing.assert_array_equal(counts, mean_counts)  # same counts as Eq. 1: n_ik subsets hold both


def test_levels_and_diagonal_are_as_documented(table):
    records, _, b = table
    T, _ = additive_affinity(records, 20)
    levels = np.array([np.mean([score for _, task, score in records if task == i]) for i in range(20)])
    np.testing.assert_allclose(np.diag(T), levels)  # T_ii = level_i, Eq. 1's T_ii
    effects = T - levels[:, None]
    np.testing.assert_allclose(effects.sum(1), 0, atol=1e-9)  # one subset size: the b_ik sum to 0 over partners
    np.testing.assert_allclose(row_center(T), effects, atol=1e-9)  # so row-centring leaves b with a zero diagonal
    # on b's own scale: the fitted effects against the planted ones centred per row (only differences are identified)
    centred = b - (b.sum(1, keepdims=True) / 19) * (1 - np.eye(20))
    off = ~np.eye(20, dtype=bool)
    slope = (effects[off] @ centred[off]) / (centred[off] @ centred[off])
    assert 0.8 < slope < 1.05


def test_large_ridge_tends_to_eq1_scaled_by_counts(table):
    records, _, _ = table
    l2 = 1e7
    T, counts = additive_affinity(records, 20, l2=l2)
    mean_T, _ = higher_order_affinity(records, 20)
    expected = counts * (mean_T - np.diag(mean_T)[:, None]) / l2
    np.testing.assert_allclose(T - np.diag(T)[:, None], expected, rtol=1e-4, atol=1e-12)


def test_additive_split_half_beats_eq1_on_the_planted_table(table):
    records, _, _ = table
    additive = split_half_reliability(records, 20, affinity_fn=additive_affinity).rows
    mean = split_half_reliability(records, 20).rows
    assert additive > mean + 0.1
    assert rows_spearman(records, records, 20, additive_affinity).mean == pytest.approx(1.0)


def test_too_few_subsets_returns_estimates_and_reports_the_count_needed(capsys, tmp_path):
    records, _, b = planted_table(n=20, m=20, size=5, noise=0.0)  # ~5 subsets per task against ~15 partners
    shortfall = additive_shortfall(records, 20)
    _, counts = higher_order_affinity(records, 20)
    assert shortfall and all(held < partners for held, partners in shortfall.values())
    task = next(iter(shortfall))
    assert shortfall[task] == (counts[task, task], int((counts[task] > 0).sum() - 1))
    T, _ = additive_affinity(records, 20)
    assert np.isfinite(T[counts > 0]).all() and np.isnan(T[counts == 0]).all()
    assert not additive_shortfall(*planted_table(n=20, m=200, size=5, noise=0.0)[:1], 20)

    subsets = sorted({subset for subset, _, _ in records})
    paths = save_affinities(tmp_path / "x_estimate", records, 20, subsets, {"dataset": "x"}, "additive")
    assert [path.name for path in paths] == ["x_estimate_higher_order.npy", "x_estimate_additive.npy"]
    warning = [line for line in capsys.readouterr().out.splitlines() if "additive affinity" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: ")
    assert f"{len(shortfall)} of 20 tasks are in fewer subsets than they have partners" in warning[0]
    needed = int(np.ceil(max(p for _, p in shortfall.values()) * 20 / 5))
    assert f"sample about {needed} subsets of 5" in warning[0] and "not 20" in warning[0]
    sidecar = json.loads((tmp_path / "x_estimate_additive.json").read_text())
    assert sidecar["kind"] == "additive" and sidecar["additive_l2"] == 0.3
    assert sidecar["underdetermined_tasks"] == [[t, *shortfall[t]] for t in sorted(shortfall)]


# ------------------------------------------------------------------------------------------- the CLI, end to end
def call(module, *argv) -> None:
    module.main(module.get_args_parser().parse_args([str(arg) for arg in argv]))


TRAIN = [*TINY_PLANTED_FLAGS, "--epochs", "20", "--patience", "5", "--no-progress", "--data-dir", "planted"]
GRADS = "gradients/planted/all_seed0_d8"
SUBSETS = "sampled_tasks/planted_m4_a3_s0.txt"
NAME = "planted_m4_a3_s0"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny planted run: θ*, its gradients, 4 subsets of 3 of 4 tasks, the default estimate in results/, the
    additive one in additive/, and the fine-tuned truth (read-only)."""
    root = tmp_path_factory.mktemp("additive")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        call(train_multitask, *TRAIN)
        call(collect_gradients, "--checkpoint", "saved/planted/all_seed0", "--project-dim", 8, "--no-progress")
        call(sample_subsets, *TINY_PLANTED_FLAGS, "--num-subsets", 4, "--subset-size", 3)
        call(fit_linear_estimates, "--gradients", GRADS, "--subsets-file", SUBSETS, "--no-progress", "--no-count-flops")
        estimate = ["--gradients", GRADS, "--subsets-file", SUBSETS, "--no-progress", "--no-count-flops"]
        call(fit_linear_estimates, *estimate, "--affinity", "additive", "--results-dir", "additive")
        call(train_multitask, *TRAIN, "--subsets-file", SUBSETS, "--init-from", "saved/planted/all_seed0", "--fixed-steps", 3)
    return SimpleNamespace(root=root, default=root / "results", additive=root / "additive")


def test_default_writes_eq1_only_and_additive_writes_both(pipeline):
    assert not list(pipeline.default.glob("*additive*"))
    assert "affinity" not in json.loads((pipeline.default / f"{NAME}_estimate.json").read_text())
    stem = pipeline.additive / f"{NAME}_estimate"
    names = {path.name for path in pipeline.additive.iterdir()}
    assert {f"{NAME}_estimate_additive{suffix}" for suffix in (".npy", "_counts.npy", ".json")} <= names
    assert (pipeline.default / f"{NAME}_estimate_higher_order.npy").read_bytes() == Path(f"{stem}_higher_order.npy").read_bytes()
    records = score_records(read_results(f"{stem}.csv"), "loss")
    T, counts = additive_affinity(records, 4)
    np.testing.assert_array_equal(np.load(f"{stem}_additive.npy"), T)
    np.testing.assert_array_equal(np.load(f"{stem}_additive_counts.npy"), counts)
    assert json.loads(Path(f"{stem}.json").read_text())["affinity"] == "additive"
    assert json.loads(Path(f"{stem}_additive.json").read_text())["underdetermined_tasks"] == []


def test_run_clustering_clusters_the_additive_matrix(pipeline, monkeypatch):
    monkeypatch.chdir(pipeline.root)
    out = pipeline.root / "additive_groups.txt"
    affinity = pipeline.additive / f"{NAME}_estimate_additive.npy"
    call(run_clustering, "--affinity", affinity, "--k", 2, "--out", out, "--planted", "planted/planted_groups.txt")
    groups = read_subsets(out, 4)
    assert sorted(task for group in groups for task in group) == [0, 1, 2, 3] and len(groups) == 2


def test_compare_reports_both_definitions(pipeline, monkeypatch, capsys):
    monkeypatch.chdir(pipeline.root)
    truth, out = pipeline.default / f"{NAME}_finetune.csv", pipeline.root / "report.json"
    call(compare_affinities, "--estimated", pipeline.default / f"{NAME}_estimate.csv", "--trained", truth, "--out", out)
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    entry = report["by_score"]["loss"]["truths"][str(truth)]
    est, true = score_records(read_results(pipeline.default / f"{NAME}_estimate.csv")), score_records(read_results(truth))
    assert entry["spearman_per_task_rows_additive"] == pytest.approx(rows_spearman(est, true, 4, additive_affinity).mean)
    halves = split_half_reliability(true, 4, affinity_fn=additive_affinity)
    assert entry["split_half_additive"]["rows"] == pytest.approx(halves.rows, nan_ok=True)
    assert "split_half_additive" in report["estimate_reliability"]["loss"]
    assert "| T | split-half ρ rows (all m) | ρ task/rows estimate vs this truth |" in printed
    for definition in ("mean (Eq. 1)", "additive"):
        assert f"| loss | {truth.stem} | {definition} |" in printed and f"| loss | estimate | {definition} |" in printed


def test_sharded_additive_estimate_merges_into_the_same_files(pipeline, monkeypatch):
    monkeypatch.chdir(pipeline.root)
    flags = ["--gradients", GRADS, "--subsets-file", SUBSETS, "--no-progress", "--no-count-flops", "--batch-size", 2]
    flags += ["--affinity", "additive", "--results-dir", "sharded", "--num-shards", 2]
    for shard in (0, 1):
        call(fit_linear_estimates, *flags, "--shard-id", shard)
    call(merge_results, f"sharded/{NAME}_estimate.csv")
    for suffix in ("_additive.npy", "_higher_order.npy"):
        merged = np.load(pipeline.root / "sharded" / f"{NAME}_estimate{suffix}")
        # batches of 2 subsets instead of one of 4: the regressions agree to solver precision
        np.testing.assert_allclose(merged, np.load(pipeline.additive / f"{NAME}_estimate{suffix}"), atol=1e-6)


def test_additive_on_pairs_is_refused_before_any_work(pipeline, monkeypatch, capsys):
    monkeypatch.chdir(pipeline.root)
    (pipeline.root / "pairs.txt").write_text("0 1\n2 3\n0 2\n")
    before = tree(pipeline.root)
    argv = ["--gradients", GRADS, "--subsets-file", "pairs.txt", "--no-progress", "--affinity", "additive"]
    status = exit_status(fit_linear_estimates.main, fit_linear_estimates.get_args_parser(), argv)
    errors = without_base_warnings(capsys.readouterr().err).splitlines()
    assert status == 2 and len(errors) == 1
    assert errors[0].startswith("error: ") and "pairs.txt is a pair" in errors[0] and "drop --affinity additive" in errors[0]
    assert tree(pipeline.root) == before

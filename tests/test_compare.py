"""compare_affinities.py and the figures behind it, on hand-made score tables: an estimate equal to the truth, the
seed-to-seed ceiling, seed averaging in score_records, refusals, and the vet check of a truth against planted groups
(it must fail on a flat truth and pass on a structured one)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy.stats import spearmanr

import compare_affinities
from gradtag.affinity import higher_order_affinity
from gradtag.artifacts import write_json
from gradtag.clustering import cluster, prepare_affinity
from gradtag.evaluation import adjusted_rand, group_effect
from gradtag.results import write_results, write_subsets
from gradtag.scores import records_by_seed, score_records
from tests.conftest import exit_status

N_TASKS = 8
GROUPS = [[0, 1, 2, 3], [4, 5, 6, 7]]  # planted: two groups of four tasks
SUBSETS = list(itertools.combinations(range(N_TASKS), 3))  # 56 subsets; every task in 21, every pair in 6
FINGERPRINT = "feedfacecafebeef"


# ---------------------------------------------------------------------------------------------------------- helpers
def truth_scores(effect: float, seed: int) -> dict[tuple[tuple[int, ...], int], float]:
    """f(S, j) (higher is better) = task level + effect x (same-group partners of j in S) + noise (sd 0.02)."""
    rng = np.random.default_rng(seed)
    levels = rng.uniform(-1.0, -0.3, N_TASKS)
    group = {task: label for label, members in enumerate(GROUPS) for task in members}
    scores = {}
    for subset in SUBSETS:
        for task in subset:
            partners = sum(group[other] == group[task] for other in subset if other != task)
            scores[subset, task] = levels[task] + effect * partners + rng.normal(0.0, 0.02)
    return scores


def rows_of(scores: dict, seed: int = 0, source: str = "trained") -> list[dict]:
    """Result-CSV rows of a score table; val_loss = -score, the other columns derived from it."""
    index = {subset: number for number, subset in enumerate(SUBSETS)}
    return [
        {
            "subset_id": index[subset],
            "subset": " ".join(map(str, subset)),
            "task": task,
            "seed": seed if source == "trained" else -1,
            "val_f1": 1.0 / (1.0 + np.exp(-5 * score)),  # increasing in the score, like the loss is decreasing
            "val_loss": -score,
            "test_f1": 0.5,
            "test_loss": -score + 0.01,
            "source": source,
        }
        for (subset, task), score in scores.items()
    ]


def write_side(path, rows: list[dict], mode: str, fingerprint: str = FINGERPRINT, seconds: float = 1.5, **cost) -> str:
    """A results CSV and its sidecar JSON, with the identity keys the scripts write (``cost``: flops, one_off)."""
    write_results(path, rows)
    write_json(
        path.with_suffix(".json"),
        {
            "dataset": "planted",
            "dataset_fingerprint": fingerprint,
            "task_names": [f"t{task}" for task in range(N_TASKS)],
            "subsets": [list(subset) for subset in SUBSETS],
            "mode": mode,
            "seconds": seconds,
            **cost,
        },
    )
    return str(path)


def compare(*argv: str) -> dict:
    parser = compare_affinities.get_args_parser()
    compare_affinities.main(parser.parse_args(list(argv)))
    out = argv[argv.index("--out") + 1]
    return json.loads(open(out).read())


# ---------------------------------------------------------------------------------------------------------- estimate vs truth
def test_estimate_equal_to_truth_gives_spearman_1_and_distance_0(tmp_path, capsys):
    scores = truth_scores(0.05, seed=0)
    truth = write_side(tmp_path / "truth.csv", rows_of(scores), "finetune", seconds=12.0, cpu_seconds=10.0, flops=3 * 10**9)
    one_off = {"seconds": 4.0, "flops": 2 * 10**9}  # no CPU seconds recorded: the total's CPU seconds are unknown
    calibration = {
        "cost": {"seconds": 1.0, "cpu_seconds": 0.8, "flops": 10**9},
        "truth_cost": {"seconds": 3.0, "cpu_seconds": 2.0, "flops": 2 * 10**9},
    }
    estimate = write_side(
        tmp_path / "est.csv",
        rows_of(scores, source="estimate"),
        "estimate",
        seconds=0.25,
        cpu_seconds=0.2,
        flops=5 * 10**8,
        one_off=one_off,
        calibration=calibration,
    )
    planted = tmp_path / "planted.txt"
    write_subsets(planted, GROUPS)
    out = str(tmp_path / "report.json")
    report = compare("--estimated", estimate, "--trained", truth, "--planted", str(planted), "--out", out)

    assert report["k"] == 2 and set(report["by_score"]) == {"loss", "f1"}
    for score in ("loss", "f1"):
        entry = report["by_score"][score]["truths"][truth]
        assert entry["n_scores"] == 3 * len(SUBSETS)
        assert entry["spearman_per_task_subsets"] == pytest.approx(1.0)
        assert entry["spearman_per_task_subsets_tasks_used"] == N_TASKS
        assert entry["spearman_per_task_rows"] == pytest.approx(1.0)
        assert entry["spearman_per_task_rows_tasks_used"] == N_TASKS
        assert entry["spearman_per_task_columns"] == pytest.approx(1.0)
        assert entry["spearman_pooled"] == pytest.approx(1.0)
        assert entry["relative_distance_raw"] == 0.0 and entry["relative_distance_row_centered"] == 0.0
        assert entry["ari_estimate_vs_truth"] == 1.0 and entry["ari_vs_planted"] == 1.0
        assert "seed_ceiling_spearman_per_task" not in entry  # one seed: no ceiling
        assert report["by_score"][score]["estimate_ari_vs_planted"] == 1.0
    assert report["estimate_seconds"] == 0.25 and report["by_score"]["loss"]["truths"][truth]["seconds"] == 12.0
    out_text = capsys.readouterr().out
    assert "| score | truth | ρ task/subsets | partner ρ (rows) | paper's ρ (columns) |" in out_text
    assert "| loss | truth | 1.000 | 1.000 | 1.000 | 1.000 | 0.000 |" in out_text
    costs = [
        "| estimate (step 3 fits) | 0.25 | 0.20 | 500 MFLOP | – | – | – | – |",
        "| calibration sweep (in step 3's call) | 1.00 | 0.80 | 1 GFLOP | – | – | – | – |",
        "| calibration subsets trained for real | 3.00 | 2.00 | 2 GFLOP | – | – | – | – |",
        "| one-off: θ* + gradients (steps 1-2) | 4.00 | – | 2 GFLOP | – | – | – | – |",
        "| **estimate side, total** | 8.25 | – | 5.5 GFLOP | – | – | – | – |",
        "| truth truth | 12.00 | 10.00 | 3 GFLOP | 50.0x | 6.0x | – | 0.5x |",  # the FLOPs of everything: 3 / 5.5
    ]
    assert "\n".join(costs) in out_text and f"wrote {out}" in out_text


def test_truth_with_two_seeds_reports_its_ceiling_and_is_averaged_over_seeds(tmp_path):
    seed0 = truth_scores(0.05, seed=0)
    rng = np.random.default_rng(1)
    seed1 = {key: value + rng.normal(0.0, 0.03) for key, value in seed0.items()}
    truth = write_side(tmp_path / "truth.csv", rows_of(seed0, seed=0) + rows_of(seed1, seed=1), "scratch")
    mean = {key: (seed0[key] + seed1[key]) / 2 for key in seed0}
    estimate = write_side(tmp_path / "est.csv", rows_of(mean, source="estimate"), "estimate")
    out = str(tmp_path / "report.json")
    report = compare("--estimated", estimate, "--trained", truth, "--scores", "loss", "--out", out)

    entry = report["by_score"]["loss"]["truths"][truth]
    assert entry["seeds"] == [0, 1]
    by_hand = np.mean(
        [
            spearmanr([seed0[s, j] for s in SUBSETS if j in s], [seed1[s, j] for s in SUBSETS if j in s]).statistic
            for j in range(N_TASKS)
        ]
    )
    assert entry["seed_ceiling_spearman_per_task"] == pytest.approx(by_hand, rel=1e-12)
    assert 0.0 < by_hand < 0.99  # a real ceiling, below the estimate's perfect agreement with the seed mean
    # the estimate equals the mean of the truth's seeds, so against the seed-averaged truth it is exact
    assert entry["spearman_per_task_subsets"] == pytest.approx(1.0)
    assert entry["relative_distance_raw"] == pytest.approx(0.0, abs=1e-20)
    assert "groups" not in entry and "ari_vs_planted" not in entry  # no --planted and no --k: no clustering


def test_score_records_average_the_seeds_of_one_subset_and_task():
    def row(subset, task, seed, val_loss, val_f1, test_loss):
        return {"subset": subset, "task": task, "seed": seed, "val_loss": val_loss, "val_f1": val_f1, "test_loss": test_loss}

    rows = [
        row("0 2", 0, 0, 0.2, 0.5, 1.0),
        row("0 2", 0, 1, 0.4, 0.7, 2.0),
        row("0 2", 0, 2, 0.9, 0.3, 6.0),
        row("0 2", 2, 0, 0.1, 0.9, 0.5),
        row("1", 1, 5, 0.3, 0.4, 0.7),
    ]
    records = {(subset, task): value for subset, task, value in score_records(rows, "loss")}
    assert records == {
        ((0, 2), 0): pytest.approx(-0.5),  # -(0.2 + 0.4 + 0.9) / 3
        ((0, 2), 2): pytest.approx(-0.1),
        ((1,), 1): pytest.approx(-0.3),
    }
    f1 = {(subset, task): value for subset, task, value in score_records(rows, "f1")}
    assert f1[(0, 2), 0] == pytest.approx(0.5)  # (0.5 + 0.7 + 0.3) / 3
    test = {(subset, task): value for subset, task, value in score_records(rows, "loss", split="test")}
    assert test[(0, 2), 0] == pytest.approx(-3.0)
    per_seed = records_by_seed(rows, "loss")
    assert sorted(per_seed) == [0, 1, 2, 5]
    assert per_seed[1] == [((0, 2), 0, pytest.approx(-0.4))]
    assert sorted(per_seed[0]) == [((0, 2), 0, pytest.approx(-0.2)), ((0, 2), 2, pytest.approx(-0.1))]


@pytest.mark.parametrize("which", ["estimate", "second truth"])
def test_sides_from_another_dataset_fingerprint_are_refused(tmp_path, capsys, which):
    scores = truth_scores(0.05, seed=0)
    truth = write_side(tmp_path / "truth.csv", rows_of(scores), "finetune")
    source = "estimate" if which == "estimate" else "trained"
    other = write_side(tmp_path / "other.csv", rows_of(scores, source=source), "scratch", fingerprint="0000000000000000")
    argv = ["--estimated", other, "--trained", truth] if which == "estimate" else ["--trained", truth, other]
    argv += ["--out", str(tmp_path / "report.json")]
    assert exit_status(compare_affinities.main, compare_affinities.get_args_parser(), argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "dataset_fingerprint" in err and other in err
    assert not (tmp_path / "report.json").exists()


# ---------------------------------------------------------------------------------------------------------- vet check
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vet_check_fails_on_a_flat_truth_and_passes_on_a_structured_one(seed):
    flat = truth_scores(0.0, seed)  # task levels and noise only
    structured = truth_scores(0.05, seed)  # the same, plus 0.05 per same-group partner
    figures = {}
    for name, scores in (("flat", flat), ("structured", structured)):
        effect = group_effect(scores, GROUPS, N_TASKS)
        T, counts = higher_order_affinity(scores, N_TASKS)
        assert (counts > 0).all()
        groups = cluster(prepare_affinity(T), 2, "sdp").groups
        figures[name] = (effect, adjusted_rand(groups, GROUPS, N_TASKS))
    (flat_effect, flat_ari), (structured_effect, structured_ari) = figures["flat"], figures["structured"]
    assert abs(flat_effect.t_stat) < 3 and abs(flat_effect.slope) < 0.01
    assert structured_effect.t_stat > 10 and structured_effect.slope == pytest.approx(0.05, abs=0.01)
    assert flat_ari < 0.5 and structured_ari == 1.0
    assert flat_effect.n_records == structured_effect.n_records == 3 * len(SUBSETS)


def test_vet_mode_of_compare_affinities_reports_group_effect_and_ari(tmp_path, capsys):
    flat = write_side(tmp_path / "flat.csv", rows_of(truth_scores(0.0, seed=0)), "flat")
    structured = write_side(tmp_path / "structured.csv", rows_of(truth_scores(0.05, seed=0)), "structured")
    planted = tmp_path / "planted.txt"
    write_subsets(planted, GROUPS, header="planted groups")
    out = str(tmp_path / "vet.json")
    report = compare("--trained", flat, structured, "--planted", str(planted), "--scores", "loss", "--out", out)

    assert report["estimated"] is None and report["k"] == 2
    truths = report["by_score"]["loss"]["truths"]
    assert abs(truths[flat]["group_effect_t"]) < 3 and truths[flat]["ari_vs_planted"] < 0.5
    assert truths[structured]["group_effect_t"] > 10 and truths[structured]["ari_vs_planted"] == 1.0
    assert truths[structured]["groups"] == GROUPS
    for entry in truths.values():
        assert "spearman_per_task_subsets" not in entry  # nothing to compare against in vet mode
    printed = capsys.readouterr().out
    assert "| loss | flat |" in printed and "| loss | structured |" in printed


def test_reliability_of_each_side_and_agreement_between_truths(tmp_path, capsys):
    """Each side's distance from θ*, split-half agreement and partner effects; and truth against truth (a ceiling)."""
    near = truth_scores(0.05, seed=0)
    far = truth_scores(0.05, seed=1)  # other task levels and noise: a second, different truth
    rows = rows_of(near)
    for row in rows:
        row["distance"] = 0.05 + 0.01 * (row["subset_id"] % 3)
    first = write_side(tmp_path / "ft15.csv", rows, "finetune")
    second = write_side(tmp_path / "ft50.csv", rows_of(far), "finetune")
    estimate = write_side(tmp_path / "est.csv", rows_of(near, source="estimate"), "estimate")
    out = str(tmp_path / "report.json")
    report = compare("--estimated", estimate, "--trained", first, second, "--k", "2", "--out", out)

    entry = report["by_score"]["loss"]["truths"][first]
    assert entry["distance"]["median"] == pytest.approx(0.06) and entry["distance"]["models"] == len(SUBSETS)
    assert report["by_score"]["loss"]["truths"][second]["distance"] is None  # no distance recorded
    assert entry["partner_effect_share"] == 1.0 and entry["partner_effect_tasks_tested"] == N_TASKS
    assert entry["split_half"]["rows"] > 0.5 and entry["split_half"]["ari"] == pytest.approx(1.0)
    assert report["estimate_reliability"]["loss"]["split_half"]["rows"] == pytest.approx(entry["split_half"]["rows"])
    (agreement,) = report["by_score"]["loss"]["truth_agreement"]
    assert agreement["a"] == first and agreement["b"] == second
    expected = spearmanr([near[key] for key in sorted(near) if key[1] == 0], [far[key] for key in sorted(near) if key[1] == 0])
    assert 0 < agreement["spearman_per_task_subsets"] < 1 and np.isfinite(expected.statistic)
    text = capsys.readouterr().out
    assert "| loss | ft15 | 0.060 [0.050, 0.070] |" in text and "| loss | ft15 | ft50 |" in text

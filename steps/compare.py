"""Compare estimated with true task affinities, and vet a truth on its own (``compare_affinities.py --help``).

:func:`run` takes a frozen :class:`CompareJob` and returns the report (also written as JSON): per score and truth the
estimate-versus-truth figures of :func:`gradtag.evaluation.comparison_report`, the truth's own reliability (distance,
split-half agreement, partner effects, seed ceiling, group effect), the clusterings' ARIs and both sides' costs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from data import read_planted_groups
from gradtag.affinity import additive_affinity, fill_uncovered
from gradtag.artifacts import UsageError, check_compatible, read_json, write_json
from gradtag.clustering import cluster, prepare_affinity
from gradtag.evaluation import (
    adjusted_rand,
    comparison_report,
    distance_summary,
    group_effect,
    partner_effects,
    rows_spearman,
    seed_ceiling,
    split_half_reliability,
)
from gradtag.results import read_results
from gradtag.scores import DOMAIN_METRICS, affinity_matrix, is_pairwise, records_by_seed, score_records
from steps.cli import job_from_flags


@dataclass(frozen=True)
class CompareJob:
    """Everything :func:`run` needs, frozen (``compare_affinities.py``'s flags)."""

    trained: tuple[str, ...]
    estimated: str | None = None
    planted: str | None = None
    k: int | None = None
    scores: tuple[str, ...] | None = None  # default: loss and the truth's domain metric (graph F1, text accuracy)
    seed: int = 0
    out: str | None = None
    allow_partial: bool = False

    @classmethod
    def from_args(cls, args) -> CompareJob:
        return job_from_flags(cls, args)


def base_fingerprints(meta: dict) -> list[str] | None:
    """Fingerprints of the θ*s behind a results file (sorted): an estimate's bases, a fine-tuned truth's starts;
    None for a truth from scratch or a file written before they were recorded."""
    if "bases" in meta:
        return sorted(base["checkpoint_fingerprint"] for base in meta["bases"])
    init = meta.get("init")
    if not init:
        return None
    return sorted(base["init_fingerprint"] for base in (init if isinstance(init, list) else [init]))


def check_same_experiment(estimate: tuple, truth: tuple, path: str, allow_partial: bool) -> str:
    """Refuse (unless ``allow_partial``) a truth of other subsets or other θ*s than the estimate; returns the line
    saying how many (subset, task) scores the two share."""
    (est_rows, est_meta), (rows, meta) = estimate, truth
    shared = {(row["subset"], row["task"]) for row in est_rows} & {(row["subset"], row["task"]) for row in rows}
    line = f"estimate vs {path}: {len(shared)} shared (subset, task) scores of {len(est_rows)} estimated"
    if allow_partial:
        return line
    if sorted(map(tuple, est_meta["subsets"])) != sorted(map(tuple, meta["subsets"])):
        raise UsageError(
            f"{path} was trained on other subsets than the estimate {est_meta.get('subsets_file')} ({len(shared)} of "
            f"{len(est_rows)} scores shared); train the truth on the estimate's subsets file or pass --allow-partial"
        )
    est_bases, truth_bases = base_fingerprints(est_meta), base_fingerprints(meta)
    if est_bases is not None and truth_bases is not None and est_bases != truth_bases:
        raise UsageError(
            f"{path} was fine-tuned from other θ* weights than the estimate's bases; fine-tune from the estimate's "
            "checkpoints (--init-from) or pass --allow-partial"
        )
    return line


# what each side's rows hold in their ``source`` column, and the step that writes such a file
SIDES = {
    "--estimated": ("estimate", "an estimate", "fit_linear_estimates.py's *_estimate.csv"),
    "--trained": ("trained", "a trained truth", "train_multitask.py --subsets-file's CSV"),
}


def load_side(path: str, flag: str) -> tuple[list[dict], dict]:
    """Rows of a results CSV and its identity sidecar (same name, .json), refused unless the file is what ``flag``
    (``--estimated`` or ``--trained``) takes: its rows' ``source`` (or, for a file without rows, its sidecar: an
    estimate's records its ``bases``) must be that side's."""
    rows = read_results(path)
    meta = read_json(Path(path).with_suffix(".json"))
    source, noun, writer = SIDES[flag]
    sources = sorted({row["source"] for row in rows}) or ["estimate" if "bases" in meta else "trained"]
    if sources != [source]:
        raise UsageError(
            f"{flag} {path} holds {' and '.join(sources)} rows (source {', '.join(map(repr, sources))}), not {noun}; "
            f"pass {writer} as {flag} (were --estimated and --trained swapped?)"
        )
    return rows, meta


def clustered(records, num_tasks: int, pairwise: bool, k: int, seed: int) -> list[list[int]]:
    affinity, _ = affinity_matrix(records, num_tasks, pairwise)
    affinity, filled = fill_uncovered(affinity)
    if filled:
        print(f"note: {filled} entries of T have no covering subset; clustering uses their row means")
    return cluster_matrix(affinity, k, seed)


def cluster_matrix(affinity, k: int, seed: int) -> list[list[int]]:
    """The SDP groups of a filled (n, n) T, rows centred: how every T in the report is clustered."""
    return cluster(prepare_affinity(affinity), k, "sdp", seed).groups


def reliability(rows, records, num_tasks: int, pairwise: bool, k, seed) -> dict:
    """What a side's T is worth on its own: how far its models moved (``distance``), its split-half agreement (the
    ceiling at this m, for Eq. 1's and the additive T; not defined for pairwise files, one subset per entry) and its
    partner effects."""
    report = {"distance": distance_summary(rows)}
    if not pairwise:
        cluster_fn = (lambda T: cluster_matrix(T, k, seed)) if k is not None else None
        report["split_half"] = split_half_reliability(records, num_tasks, seed=seed, cluster_fn=cluster_fn)._asdict()
        report["split_half_additive"] = split_half_reliability(
            records, num_tasks, seed=seed, affinity_fn=additive_affinity
        )._asdict()  # the additive T's ceiling (gradtag.affinity.additive_affinity), rows only
    effects = partner_effects(records, num_tasks)
    report["partner_effect_share"], report["partner_effect_tasks_tested"] = effects.share_significant, effects.n_tested
    report["partner_effect_tasks_permuted"] = effects.n_permutation
    return report


def truth_agreement(paths: list[str], truths: list, score: str, num_tasks: int) -> list[dict]:
    """Per-task ρ between every two truths on their shared (subset, task) scores: truths fine-tuned from different θ*
    seeds, or for different lengths, agree only so far — the ceiling for any single-θ* estimate (FIDELITY §6)."""
    agreement = []
    for a, b in itertools.combinations(range(len(truths)), 2):
        report = comparison_report(score_records(truths[a][0], score), score_records(truths[b][0], score), num_tasks)
        agreement.append({"a": paths[a], "b": paths[b], **report})
    return agreement


def truth_report(rows, meta, score: str, num_tasks: int, planted, k, seed) -> dict:
    records = score_records(rows, score)
    subsets = [tuple(subset) for subset in meta["subsets"]]
    report = {
        "seeds": sorted({row["seed"] for row in rows}),
        "seconds": meta.get("seconds"),
        "cpu_seconds": meta.get("cpu_seconds"),
        "flops": meta.get("flops"),
    }
    report.update(reliability(rows, records, num_tasks, is_pairwise(subsets), k, seed))
    per_seed = records_by_seed(rows, score)
    if len(per_seed) >= 2:
        report["seed_ceiling_spearman_per_task"] = seed_ceiling(list(per_seed.values())).mean
    if planted is not None:
        effect = group_effect(records, planted, num_tasks)
        report.update(group_effect_slope=effect.slope, group_effect_t=effect.t_stat)
    if k is not None:
        report["groups"] = clustered(records, num_tasks, is_pairwise(subsets), k, seed)
        if planted is not None:
            report["ari_vs_planted"] = adjusted_rand(report["groups"], planted, num_tasks)
    return report


def run(job: CompareJob) -> tuple[dict, Path, list[str]]:
    """Compare what ``job`` names; write the report JSON. Returns the report, its path and one line per truth saying
    how many (subset, task) scores it shares with the estimate."""
    estimate = load_side(job.estimated, "--estimated") if job.estimated else None
    truths = [load_side(path, "--trained") for path in job.trained]
    first_meta = truths[0][1]
    num_tasks = len(first_meta["task_names"])
    for (_, meta), path in zip(truths[1:] + ([estimate] if estimate else []), [*job.trained[1:], job.estimated], strict=False):
        check_compatible(meta, path, dataset=first_meta["dataset"], dataset_fingerprint=first_meta["dataset_fingerprint"])
    planted = read_planted_groups(job.planted, num_tasks) if job.planted else None
    k = job.k or (len(planted) if planted else None)
    if k is not None and not 1 <= k <= num_tasks:
        raise UsageError(f"--k {k} must lie in 1..{num_tasks}")
    overlap = (
        [check_same_experiment(estimate, truth, path, job.allow_partial) for truth, path in zip(truths, job.trained, strict=True)]
        if estimate
        else []
    )

    report = {"estimated": job.estimated, "trained": job.trained, "k": k, "by_score": {}}
    scores = job.scores or ("loss", DOMAIN_METRICS[first_meta.get("domain", "graph")])
    for score in scores:
        by_truth = {}
        est_records = score_records(estimate[0], score) if estimate else None
        est_groups = None
        if estimate:
            report.setdefault("estimate_reliability", {})[score] = reliability(
                estimate[0], est_records, num_tasks, is_pairwise(estimate[1]["subsets"]), k, job.seed
            )
        if estimate and k is not None:
            est_groups = clustered(est_records, num_tasks, is_pairwise(estimate[1]["subsets"]), k, job.seed)
        for path, (rows, meta) in zip(job.trained, truths, strict=True):
            entry = truth_report(rows, meta, score, num_tasks, planted, k, job.seed)
            if estimate:
                entry.update(comparison_report(est_records, score_records(rows, score), num_tasks))
                if not is_pairwise(meta["subsets"]):
                    additive = rows_spearman(est_records, score_records(rows, score), num_tasks, additive_affinity)
                    entry["spearman_per_task_rows_additive"] = additive.mean
                if est_groups is not None:
                    entry["ari_estimate_vs_truth"] = adjusted_rand(est_groups, entry["groups"], num_tasks)
            by_truth[path] = entry
        report["by_score"][score] = {
            "truths": by_truth,
            "truth_agreement": truth_agreement(job.trained, truths, score, num_tasks),
        }
        if est_groups is not None:
            report["by_score"][score]["estimate_groups"] = est_groups
            if planted is not None:
                report["by_score"][score]["estimate_ari_vs_planted"] = adjusted_rand(est_groups, planted, num_tasks)
    if estimate:
        report["estimate_seconds"] = estimate[1].get("seconds")
        report["estimate_cpu_seconds"] = estimate[1].get("cpu_seconds")
        report["estimate_flops"] = estimate[1].get("flops")
        report["estimate_one_off"] = estimate[1].get("one_off")
        calibration = estimate[1].get("calibration") or {}
        report["estimate_calibration"] = {key: calibration.get(key) for key in ("cost", "truth_cost")}
    out = Path(job.out) if job.out else Path(job.trained[0]).with_name(Path(job.trained[0]).stem + "_report.json")
    write_json(out, report)
    return report, out, overlap

"""From result-CSV rows (estimated or trained f(S, j)) to score tables and saved affinity matrices."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from gradtag.affinity import ADDITIVE_L2, DEFINITIONS, additive_shortfall, pairwise_affinity, uncovered_pairs
from gradtag.artifacts import UsageError, save_npy, write_json

# score -> (CSV column, sign making higher better); F1 is the graphs' headline metric, accuracy the text tasks'
SCORES = {"loss": ("val_loss", -1.0), "f1": ("val_f1", 1.0), "accuracy": ("val_accuracy", 1.0)}
METRICS = ("loss", "f1", "accuracy")  # what every result row holds, per split
DOMAIN_METRICS = {"graph": "f1", "text": "accuracy"}  # each domain's headline per-task metric (paper: macro-F1, accuracy)


def score_records(rows: list[dict], score: str = "loss", split: str = "val") -> list[tuple[tuple[int, ...], int, float]]:
    """(subset, task, score) records, one per (subset, task), averaged over the rows' seeds.

    score ``loss`` gives ``-<split>_loss`` (higher is better, the affinity convention); ``f1`` gives ``<split>_f1``.
    """
    column, sign = SCORES[score]
    column = column.replace("val", split)
    grouped = defaultdict(list)
    for row in rows:
        subset = tuple(int(task) for task in str(row["subset"]).split())
        grouped[subset, int(row["task"])].append(sign * float(row[column]))
    return [(subset, task, float(np.mean(values))) for (subset, task), values in grouped.items()]


def records_by_seed(rows: list[dict], score: str = "loss") -> dict[int, list]:
    """Score records per seed of the rows (for the truth's seed-to-seed ceiling)."""
    seeds = sorted({row["seed"] for row in rows})
    return {seed: score_records([row for row in rows if row["seed"] == seed], score) for seed in seeds}


def is_pairwise(subsets) -> bool:
    return all(len(subset) == 2 for subset in subsets)


def affinity_matrix(records, num_tasks: int, pairwise: bool, definition: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """T (n, n) float64 and the count of subsets behind each entry: pairwise T_ij = f({i,j}, i), else the higher-order
    ``definition`` (:data:`gradtag.affinity.DEFINITIONS`: ``mean``, Eq. (1); ``additive``, ridge partner effects)."""
    return pairwise_affinity(records, num_tasks) if pairwise else DEFINITIONS[definition](records, num_tasks)


def save_affinity(prefix: Path, records, num_tasks: int, pairwise: bool, meta: dict, definition: str = "mean") -> Path:
    """Write ``<prefix>_{pairwise|higher_order|additive}.npy`` (T), ``..._counts.npy`` (n_ij) and a sidecar JSON; warn
    on pairs no subset covers. ``definition`` (higher-order only): ``mean`` writes ``_higher_order`` (Eq. 1),
    ``additive`` writes ``_additive``, its sidecar adding the ridge's λ and the tasks in fewer subsets than partners
    (``underdetermined_tasks``: [task, subsets, partners]). Returns the matrix path."""
    affinity, counts = affinity_matrix(records, num_tasks, pairwise, definition)
    kind = "pairwise" if pairwise else {"mean": "higher_order", "additive": "additive"}[definition]
    if kind == "additive":
        shortfall = additive_shortfall(records, num_tasks)
        meta = {**meta, "additive_l2": ADDITIVE_L2, "underdetermined_tasks": [[t, *shortfall[t]] for t in sorted(shortfall)]}
    path = Path(f"{prefix}_{kind}.npy")
    filled_diagonal = False
    if pairwise and np.isnan(np.diag(affinity)).all():
        # an all-pairs file has no singletons: give each task its row's mean, a neutral level for clustering
        np.fill_diagonal(affinity, np.nanmean(np.where(np.eye(num_tasks, dtype=bool), np.nan, affinity), axis=1))
        np.fill_diagonal(counts, 1)
        filled_diagonal = True
    missing = uncovered_pairs(counts)
    if missing and kind != "additive":  # written beside Eq. 1's T, of the same counts, whose call warns
        shown = ", ".join(f"({i},{j})" for i, j in missing[:10])
        print(
            f"warning: {len(missing)} task pairs are in no subset: {shown}; T is NaN there, and run_clustering.py and "
            "compare_affinities.py give those entries their row's mean (sample more subsets to cover them)"
        )
    if not np.isfinite(affinity).all() and not missing:
        raise UsageError(f"{path}: affinity holds non-finite values; check the scores")
    save_npy(path, affinity)
    save_npy(Path(f"{prefix}_{kind}_counts.npy"), counts)
    write_json(
        path.with_suffix(".json"),
        {
            **meta,
            "kind": kind,
            "uncovered_pairs": [list(pair) for pair in missing],
            "diagonal_filled_with_row_mean": filled_diagonal,
        },
    )
    return path

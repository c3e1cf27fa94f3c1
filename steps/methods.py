"""The grouping methods of the paper's Table 3 side by side: their groups, the cost of finding and of training them.

``compare_methods.py`` runs every method's steps (through the same scripts a user runs) into one work folder; this
module holds what it needs besides: the baselines' groupings (STL, naive MTL, random groups), the costs read back from
the artifacts each step writes (every step records its wall seconds, CPU seconds and FLOPs), and the table rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradtag.artifacts import UsageError
from gradtag.evaluation import adjusted_rand
from gradtag.results import read_results, read_subsets
from steps.train import partition_score as train_partition_score

# Table 3's rows, in its order: name -> what the method groups by (the table's legend)
METHODS = {
    "stl": "single-task learning: one model per task",
    "mtl": "naive MTL: one model on all tasks",
    "random": "random groups of the same k (several draws)",
    "datamaps": "data maps (STG-MTL): k-means / fuzzy c-means on each task's training dynamics",
    "tag": "TAG: look-ahead inter-task affinity during multitask training, SDP clustering",
    "exact": "exact higher-order affinity (BoostMTL): trained models on m subsets, SDP clustering",
    "gradtag1": "Grad-TAG, M = 1 meta-initialization",
    "gradtag5": "Grad-TAG, M = 5 meta-initializations",
}
LABELS = {
    "stl": "STL",
    "mtl": "Naive MTL",
    "random": "Random groups",
    "datamaps": "Data maps (STG-MTL)",
    "tag": "TAG",
    "exact": "Exact affinity (BoostMTL)",
    "gradtag1": "Grad-TAG (M = 1)",
    "gradtag5": "Grad-TAG (M = 5)",
}


@dataclass
class Cost:
    """Wall seconds, CPU seconds and FLOPs (None where a step does not count them) of some work."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    flops: float | None = 0.0

    def __add__(self, other: Cost) -> Cost:
        flops = None if self.flops is None or other.flops is None else self.flops + other.flops
        return Cost(self.seconds + other.seconds, self.cpu_seconds + other.cpu_seconds, flops)

    @classmethod
    def of_record(cls, record: dict, where: str) -> Cost:
        """The cost a step's JSON record holds (``seconds``, ``cpu_seconds``, ``flops``)."""
        if "seconds" not in record:
            raise UsageError(f"{where} records no cost (seconds); rerun the step that wrote it")
        flops = record.get("flops")
        cpu_seconds = float(record.get("cpu_seconds", record["seconds"]))
        return cls(float(record["seconds"]), cpu_seconds, None if flops is None else float(flops))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot read {path} ({error}); rerun the step that writes it") from None


def checkpoint_cost(folder: str | Path) -> Cost:
    """What training a step-1 checkpoint cost (its ``metrics.json``)."""
    path = Path(folder) / "metrics.json"
    return Cost.of_record(_read_json(path), str(path))


def gradients_cost(folder: str | Path) -> Cost:
    """What collecting a gradients folder cost: the sum over its shards' ``cost_shard*.json``."""
    paths = sorted(Path(folder).glob("cost_shard*.json"))
    if not paths:
        raise UsageError(f"{folder} holds no cost_shard*.json; rerun collect_gradients.py into it")
    total = Cost()
    for path in paths:
        total = total + Cost.of_record(_read_json(path), str(path))
    return total


def results_cost(csv_path: str | Path) -> Cost:
    """What a result CSV (a truth, a grouped training or an estimate) cost: its sidecar JSON's record."""
    path = Path(csv_path).with_suffix(".json")
    return Cost.of_record(_read_json(path), str(path))


# ---------------------------------------------------------------------------------------------------------- groupings
def single_task_groups(num_tasks: int) -> list[list[int]]:
    """STL: every task alone."""
    return [[task] for task in range(num_tasks)]


def all_tasks_group(num_tasks: int) -> list[list[int]]:
    """Naive MTL: one group of all tasks."""
    return [list(range(num_tasks))]


def random_groups(num_tasks: int, k: int, seed: int) -> list[list[int]]:
    """A uniformly random partition of the tasks into ``k`` groups of near-equal size (sizes differ by at most 1)."""
    if not 1 <= k <= num_tasks:
        raise UsageError(f"--k {k}: choose 1 <= k <= {num_tasks} (the number of tasks)")
    order = np.random.default_rng([seed, 18]).permutation(num_tasks)
    return [sorted(int(task) for task in order[group::k]) for group in range(k)]


def partition_score(csv_path: str | Path, groups: list[list[int]], metric: str) -> float:
    """Average over all tasks of their group model's test ``metric`` (a grouped training's CSV; every task once):
    ``steps.train.partition_score`` on the CSV's rows, once they are checked to cover exactly the groups' tasks."""
    rows = read_results(csv_path)
    expected = sorted(task for group in groups for task in group)
    if sorted({int(row["task"]) for row in rows}) != expected:
        raise UsageError(f"{csv_path} does not hold one model per group of its groups file; rerun its training")
    return train_partition_score(rows, groups, len(expected), metric)


def planted_ari(groups: list[list[int]], planted_file: str | Path | None, num_tasks: int) -> float | None:
    """Adjusted Rand index of ``groups`` against the planted groups file (None without one)."""
    if planted_file is None:
        return None
    return adjusted_rand(read_subsets(planted_file, num_tasks), groups, num_tasks)


# ---------------------------------------------------------------------------------------------------------- table
@dataclass
class MethodRow:
    """One row of Table 3. ``scores``: the average test metric per draw (one draw except random groups);
    ``aris``: the ARI against planted groups per draw (empty without planted groups)."""

    method: str
    groups: list[int]
    scores: list[float]
    find: Cost
    train: Cost
    aris: list[float]
    note: str = ""

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "label": LABELS[self.method],
            "groups": self.groups,
            "scores": self.scores,
            "score_mean": float(np.mean(self.scores)),
            "score_std": float(np.std(self.scores)),
            "find": vars(self.find),
            "train": vars(self.train),
            "aris": self.aris,
            "note": self.note,
        }


def _mean_std(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def _flops(value: float | None) -> str:
    return "–" if value is None else ("0" if value == 0 else f"{value:.2e}")


def format_table(rows: list[MethodRow], metric: str) -> list[str]:
    """Table 3's layout as Markdown lines: per method, the number of groups, the average test metric (×100, mean ±
    std over draws), wall / CPU seconds and FLOPs of finding the groups and of training them, and the ARI against
    planted groups."""
    name = "macro-F1" if metric == "f1" else "accuracy"
    lines = [
        f"| method | groups | avg test {name} | find s (CPU s) | find FLOPs | train s (CPU s) | train FLOPs | ARI vs planted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        groups = "/".join(str(count) for count in sorted(set(row.groups)))
        lines.append(
            f"| {LABELS[row.method]} | {groups} | {_mean_std([100 * score for score in row.scores], 1)} "
            f"| {row.find.seconds:.1f} ({row.find.cpu_seconds:.1f}) | {_flops(row.find.flops)} "
            f"| {row.train.seconds:.1f} ({row.train.cpu_seconds:.1f}) | {_flops(row.train.flops)} | {_mean_std(row.aris, 3)} |"
        )
    return lines

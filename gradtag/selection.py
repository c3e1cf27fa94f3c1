"""Greedy forward and backward selection of auxiliary tasks for one target task j (Grad-TAG, Remark 4.3, App. C.1.2).

Both walk subsets S ∋ j by a score f̂(S, j), higher = better (in the pipeline: step 3's linearized estimate, so no
model is trained along the way), asking for a whole round of candidate subsets at once so that the caller can batch
them (step 3 fits every subset of one call together):

- forward: start from {j}; each round scores S ∪ {i} for every task i outside S and adds the best, while it improves on
  f̂(S, j) and |S| < ``max_size``;
- backward: start from all tasks; each round scores S \\ {i} for every i ≠ j in S and removes the best, while it
  improves on f̂(S, j) or |S| > ``max_size`` (those removals are forced, the best of a round taken even if worse).

Ties go to the smallest task index (candidates are scored in index order and the first best kept).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# subsets (sorted task tuples, each holding the target) -> one score per subset, higher = better
Score = Callable[[list[tuple[int, ...]]], Sequence[float]]
DIRECTIONS = ("forward", "backward")


@dataclass
class Round:
    """One round: the candidates scored (subset, score) in task order, the best of them and whether it was kept
    (it improved on the current subset, or a backward removal was forced by ``max_size``)."""

    candidates: list[tuple[tuple[int, ...], float]]
    best: tuple[int, ...]
    best_score: float
    kept: bool


@dataclass
class SelectionPath:
    """The walk: the starting subset and its score, the rounds, and the subset chosen (the last one kept) with its
    score."""

    direction: str
    target: int
    start: tuple[int, ...]
    start_score: float
    rounds: list[Round] = field(default_factory=list)
    chosen: tuple[int, ...] = ()
    score: float = float("nan")


def select(score: Score, target: int, num_tasks: int, direction: str, max_size: int | None = None) -> SelectionPath:
    """Greedy selection of a subset S ∋ ``target`` of tasks 0..num_tasks-1 (see the module docstring).

    ``max_size`` caps |S| (forward: no more additions; backward: removals are forced until |S| ≤ max_size); None means
    ``num_tasks``. Each round makes one ``score`` call with all of its candidates. Returns the :class:`SelectionPath`;
    its ``chosen`` subset is the last one kept and ``score`` its score.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if not 0 <= target < num_tasks:
        raise ValueError(f"target {target} is outside 0..{num_tasks - 1}")
    max_size = num_tasks if max_size is None else max_size
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    current = (target,) if direction == "forward" else tuple(range(num_tasks))
    [current_score] = [float(value) for value in score([current])]
    path = SelectionPath(direction, target, current, current_score, chosen=current, score=current_score)
    while True:
        if direction == "forward":
            if len(current) >= max_size:
                break
            candidates = [tuple(sorted((*current, task))) for task in range(num_tasks) if task not in current]
        else:
            candidates = [tuple(task for task in current if task != removed) for removed in current if removed != target]
        if not candidates:
            break
        scores = [float(value) for value in score(candidates)]
        best = max(range(len(candidates)), key=lambda index: (scores[index], -index))
        kept = scores[best] > current_score or (direction == "backward" and len(current) > max_size)
        path.rounds.append(Round(list(zip(candidates, scores, strict=True)), candidates[best], scores[best], kept))
        if not kept:
            break
        current, current_score = candidates[best], scores[best]
    path.chosen, path.score = current, current_score
    return path

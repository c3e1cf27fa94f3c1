"""Task subsets to train or estimate on: m distinct random subsets of size a (Alg. 1, step 2), or all pairs.

The subsets are written in the ``sampled_tasks`` format (:func:`gradtag.artifacts.write_subsets`); this module only
draws them, deterministically from a seed.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

from gradtag.artifacts import UsageError

DEFAULT_SAMPLED_DIR = Path("sampled_tasks")


def sample_subsets(num_tasks: int, num_subsets: int, subset_size: int, seed: int) -> list[tuple[int, ...]]:
    """``num_subsets`` distinct subsets of ``subset_size`` tasks out of ``0..num_tasks-1``, drawn uniformly without
    replacement (every m-set of a-subsets equally likely), from ``np.random.default_rng(seed)``.

    Returns a list of tuples of ascending task indices, in draw order. Raises :class:`UsageError` when fewer than
    ``num_subsets`` distinct subsets exist (C(n, a) < m) or the sizes are out of range.
    """
    if num_tasks < 1:
        raise UsageError(f"the dataset has {num_tasks} tasks; subsets need at least one")
    if not 1 <= subset_size <= num_tasks:
        raise UsageError(f"--subset-size {subset_size} must lie within 1..{num_tasks} (the number of tasks)")
    if num_subsets < 1:
        raise UsageError(f"--num-subsets {num_subsets} must be at least 1")
    available = math.comb(num_tasks, subset_size)
    if num_subsets > available:
        raise UsageError(
            f"--num-subsets {num_subsets} is more than the {available} distinct subsets of size {subset_size} "
            f"out of {num_tasks} tasks; ask for at most {available}"
        )
    rng = np.random.default_rng(seed)
    if 2 * num_subsets > available:
        # More than half of all subsets: enumerate them (at most 2m) and take a random m, instead of rejection
        # sampling that would keep redrawing subsets already taken.
        every = list(itertools.combinations(range(num_tasks), subset_size))
        return [every[index] for index in rng.permutation(available)[:num_subsets]]
    chosen: dict[tuple[int, ...], None] = {}  # insertion-ordered set: draw order is the file order
    while len(chosen) < num_subsets:
        subset = tuple(int(task) for task in np.sort(rng.choice(num_tasks, subset_size, replace=False)))
        chosen.setdefault(subset, None)
    return list(chosen)


def all_pairs(num_tasks: int) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, of ``0..num_tasks-1`` in lexicographic order: n(n-1)/2 subsets (pairwise affinity)."""
    if num_tasks < 2:
        raise UsageError(f"the dataset has {num_tasks} task(s); pairs need at least two")
    return list(itertools.combinations(range(num_tasks), 2))


def subsets_file_path(
    dataset: str,
    num_subsets: int | None = None,
    subset_size: int | None = None,
    seed: int | None = None,
    pairs: bool = False,
    root: str | Path = DEFAULT_SAMPLED_DIR,
) -> Path:
    """``<root>/<dataset>_m<m>_a<a>_s<seed>.txt``, or ``<root>/<dataset>_pairs.txt`` with ``pairs``."""
    if pairs:
        return Path(root) / f"{dataset}_pairs.txt"
    return Path(root) / f"{dataset}_m{num_subsets}_a{subset_size}_s{seed}.txt"

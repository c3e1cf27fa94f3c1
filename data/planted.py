"""The embedded default: a generated graph whose tasks come in planted groups, deterministic from a seed.

Nodes fall into ``num_groups`` regions of a stochastic block model. Each region has a core of ``core_size`` nodes;
each of its ``tasks_per_group`` tasks is a noisy copy of that core (each core node kept with probability
``1 - noise``, and as many other nodes of the region added), so communities of one group share most members and
groups share none. Task t belongs to group ``t // tasks_per_group``; that grouping is the known answer later steps
are scored against.
"""

from __future__ import annotations

import numpy as np


def generate_planted(
    num_nodes: int,
    num_groups: int,
    tasks_per_group: int,
    core_size: int,
    noise: float,
    avg_degree: float,
    within_frac: float,
    core_within: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Sample the planted graph.

    Returns edges (E, 2) int64 (undirected, each once, i < j), labels (N, n) bool with n = num_groups *
    tasks_per_group, and the planted groups (lists of task indices). ``within_frac`` is the share of a node's edges
    that stay inside its region; ``core_within`` the share of a core node's within-region edges that stay inside
    the core, which makes the core a denser sub-block that structure (and so the model) can find.
    """
    rng = np.random.default_rng(seed)
    region = np.repeat(np.arange(num_groups), int(np.ceil(num_nodes / num_groups)))[:num_nodes]
    rng.shuffle(region)
    members = [np.flatnonzero(region == group) for group in range(num_groups)]
    cores = [rng.choice(nodes, min(core_size, len(nodes)), replace=False) for nodes in members]
    in_core = np.zeros(num_nodes, dtype=bool)
    in_core[np.concatenate(cores)] = True

    num_edges = int(avg_degree * num_nodes / 2)
    num_within = int(within_frac * num_edges)
    src = rng.integers(0, num_nodes, num_within)
    stay_in_core = in_core[src] & (rng.random(num_within) < core_within)
    dst = np.array(
        [
            rng.choice(cores[region[node]] if stay else members[region[node]])
            for node, stay in zip(src, stay_in_core, strict=True)
        ],
        dtype=np.int64,
    )
    cross_src = rng.integers(0, num_nodes, num_edges - num_within)
    cross_dst = rng.integers(0, num_nodes, num_edges - num_within)
    edges = np.stack([np.concatenate([src, cross_src]), np.concatenate([dst, cross_dst])], axis=1)
    edges = edges[edges[:, 0] != edges[:, 1]]
    edges = np.unique(np.sort(edges, axis=1), axis=0)

    num_tasks = num_groups * tasks_per_group
    labels = np.zeros((num_nodes, num_tasks), dtype=bool)
    for group in range(num_groups):
        core = cores[group]
        outside_core = np.setdiff1d(members[group], core)
        for task in range(group * tasks_per_group, (group + 1) * tasks_per_group):
            kept = core[rng.random(len(core)) >= noise]
            added = rng.choice(outside_core, min(len(core) - len(kept), len(outside_core)), replace=False)
            labels[np.concatenate([kept, added]), task] = True
    groups = [list(range(group * tasks_per_group, (group + 1) * tasks_per_group)) for group in range(num_groups)]
    return edges, labels, groups

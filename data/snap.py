"""SNAP community graphs (https://snap.stanford.edu/data/#communities) as the paper uses them.

Files, in the dataset's data directory, plain or gzipped: the edge list ``com-<name>.ungraph.txt`` (``#`` header
lines, two node ids per line) and the communities ``com-<name>.top5000.cmty.txt`` (or ``com-<name>.all.cmty.txt``),
one community per line, node ids separated by tabs or spaces. The n largest communities are the n tasks; the graph is
the subgraph induced by their union, its nodes renumbered 0..N-1 in ascending original id.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from gradtag.artifacts import UsageError

SNAP_URL = "https://snap.stanford.edu/data/bigdata/communities/"


def find_file(data_dir: Path, stems: list[str]) -> Path | None:
    """First existing ``<stem>`` or ``<stem>.gz`` in ``data_dir``."""
    for stem in stems:
        for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def read_edges(path: Path) -> np.ndarray:
    """Edge list (E, 2) int64 of original node ids; ``#`` lines skipped, self-loops dropped."""
    with _open_text(path) as fh:
        try:
            edges = np.loadtxt(fh, dtype=np.int64, comments="#", ndmin=2)
        except ValueError as err:
            raise UsageError(f"{path}: not an edge list of integer node-id pairs ({err})") from None
    if edges.shape[1] != 2:
        raise UsageError(f"{path}: expected two node ids per line, got {edges.shape[1]} columns")
    return edges[edges[:, 0] != edges[:, 1]]


def read_communities(path: Path) -> list[np.ndarray]:
    """Communities in file order, each an array of distinct original node ids."""
    communities = []
    with _open_text(path) as fh:
        for number, line in enumerate(fh, start=1):
            if line.startswith("#") or not line.strip():
                continue
            try:
                communities.append(np.unique(np.array(line.split(), dtype=np.int64)))
            except ValueError:
                raise UsageError(f"{path}:{number}: community line holds a non-integer node id") from None
    return communities


def largest_communities(communities: list[np.ndarray], num_tasks: int) -> tuple[list[np.ndarray], list[int]]:
    """The ``num_tasks`` largest communities (ties broken by file order) and their line indices in the file."""
    order = sorted(range(len(communities)), key=lambda index: (-len(communities[index]), index))[:num_tasks]
    return [communities[index] for index in order], order


def load_snap(
    name: str,
    data_dir: Path,
    edge_stems: list[str],
    community_stems: list[str],
    num_tasks: int,
    source: str = SNAP_URL,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a SNAP graph and its ``num_tasks`` largest communities.

    Returns (edges (E, 2) int64 in the renumbered ids of the induced subgraph, labels (N, n) bool, task names
    ``cmty<line index>``). ``source`` is where the files can be downloaded, named in the error when they are missing.
    """
    edge_path, community_path = find_file(data_dir, edge_stems), find_file(data_dir, community_stems)
    if edge_path is None or community_path is None:
        missing = edge_stems[0] if edge_path is None else community_stems[0]
        raise UsageError(
            f"dataset {name!r}: {missing}[.gz] not found in {data_dir}; download it (and its edge/community partner) "
            f"from {source} into {data_dir}, or pass --data-dir"
        )
    communities = read_communities(community_path)
    if len(communities) < num_tasks:
        raise UsageError(f"{community_path} holds {len(communities)} communities; lower --num-tasks to at most that")
    chosen, lines = largest_communities(communities, num_tasks)
    nodes = np.unique(np.concatenate(chosen))
    edges = read_edges(edge_path)
    keep = np.isin(edges[:, 0], nodes) & np.isin(edges[:, 1], nodes)
    edges = np.searchsorted(nodes, edges[keep])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    labels = np.zeros((len(nodes), num_tasks), dtype=bool)
    for task, community in enumerate(chosen):
        labels[np.searchsorted(nodes, community), task] = True
    return edges, labels, [f"cmty{line}" for line in lines]

"""SNAP community graphs (https://snap.stanford.edu/data/#communities) as the paper uses them.

Files, in the dataset's data directory, plain or gzipped: the edge list ``com-<name>.ungraph.txt`` (``#`` header
lines, two node ids per line) and the communities ``com-<name>.top5000.cmty.txt`` (or ``com-<name>.all.cmty.txt``),
one community per line, node ids separated by tabs or spaces. The n largest communities are the n tasks; the graph is
the subgraph induced by their union, its nodes renumbered 0..N-1 in ascending original id.

The readers here own every error of these files, each one line naming the file (and line) and the fix: a file and
its ``.gz`` side by side, gzip data that is damaged, cut short or misnamed, a data line that is not ASCII integers
(a ``#`` line may hold any byte), and chosen communities the splits cannot use. Community nodes that appear in no
edge stay in the graph as isolated nodes, with a note.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from data.graph import MIN_NEGATIVES, MIN_POSITIVES
from gradtag.artifacts import UsageError
from gradtag.results import ascii_text

SNAP_URL = "https://snap.stanford.edu/data/bigdata/communities/"
GZIP_MAGIC = b"\x1f\x8b"  # the first two bytes of every gzip file


def find_file(data_dir: Path, stems: list[str]) -> Path | None:
    """First ``<stem>`` or ``<stem>.gz`` in ``data_dir`` (stems in order of preference); both of one stem is refused."""
    for stem in stems:
        plain, gzipped = data_dir / stem, data_dir / f"{stem}.gz"
        if plain.is_file() and gzipped.is_file():
            raise UsageError(
                f"{data_dir} holds both {stem} and {stem}.gz, and only one is read; remove one (keep the one you trust)"
            )
        for candidate in (plain, gzipped):
            if candidate.is_file():
                return candidate
    return None


@contextlib.contextmanager
def _open_bytes(path: Path) -> Iterator[IO[bytes]]:
    """``path`` opened for reading bytes, gunzipped if named ``.gz``; every compression or read error, also one raised
    while the block reads, becomes a one-line :class:`UsageError` naming the file and the fix."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(GZIP_MAGIC))
        if path.suffix == ".gz" and magic != GZIP_MAGIC:
            raise UsageError(
                f"{path} is not gzip-compressed although its name ends in .gz; if it is the plain text file, rename it "
                f"to {path.with_suffix('').name}, else download it again"
            )
        if path.suffix != ".gz" and magic == GZIP_MAGIC:
            raise UsageError(f"{path} is gzip-compressed; rename it to {path.name}.gz (or gunzip it)")
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
            yield fh
    except EOFError:
        raise UsageError(f"{path}: the gzip data ends early (a cut-short download?); download it again") from None
    except (gzip.BadGzipFile, zlib.error) as err:
        raise UsageError(f"{path} is a damaged gzip file ({err}); download it again") from None
    except OSError as err:
        raise UsageError(f"cannot read {path} ({err.strerror or err}); check the file and its permissions") from None


def _data_lines(fh: IO[bytes], path: Path, kind: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of the lines of ``fh`` that are not blank or ``#`` comments (a comment may hold any
    byte); a data line with a byte that is not ASCII text is refused naming ``path``:line."""
    for number, raw in enumerate(fh, start=1):
        if raw.startswith(b"#") or not raw.strip():
            continue
        line = ascii_text(raw)
        if line is None:
            raise UsageError(
                f"{path}:{number}: holds bytes that are not ASCII text where node ids should be; is this the {kind} "
                "file? download it again"
            )
        yield number, line


def read_edges(path: Path) -> np.ndarray:
    """Edge list (E, 2) int64 of original node ids; ``#`` lines skipped, self-loops dropped."""
    with _open_bytes(path) as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # numpy's "input contained no data": refused below
        try:
            # Latin-1 decodes every byte, so a comment may hold any; a data line that is not integers fails here
            text = io.TextIOWrapper(fh, encoding="latin-1")
            edges = np.loadtxt(text, dtype=np.int64, comments="#", ndmin=2)
        except ValueError as err:
            reason = str(err)
        else:
            reason = None
    if reason is not None:  # find the line, and a byte that is not text, by reading the file once more
        with _open_bytes(path) as fh:
            for number, line in _data_lines(fh, path, "edge list"):
                tokens = line.split("#", 1)[0].split()
                if len(tokens) != 2 or not all(token.lstrip("-+").isdigit() for token in tokens):
                    raise UsageError(f"{path}:{number}: {line.strip()[:40]!r} is not a pair of integer node ids")
        raise UsageError(f"{path}: not an edge list of integer node-id pairs ({reason})")
    if edges.size == 0:
        raise UsageError(f"{path} holds no edge; it must list two node ids per line")
    if edges.shape[1] != 2:
        raise UsageError(f"{path}: expected two node ids per line, got {edges.shape[1]} columns")
    return edges[edges[:, 0] != edges[:, 1]]


def read_communities(path: Path) -> list[np.ndarray]:
    """Communities in file order, each an array of distinct original node ids."""
    communities = []
    with _open_bytes(path) as fh:
        for number, line in _data_lines(fh, path, "community"):
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
    names = [f"cmty{line}" for line in lines]
    nodes = np.unique(np.concatenate(chosen))
    edges = read_edges(edge_path)  # before the check below, so an unreadable file is named first
    check_splittable(community_path, chosen, names, len(nodes))
    first_in, second_in = np.isin(edges[:, 0], nodes), np.isin(edges[:, 1], nodes)
    missing = np.setdiff1d(nodes, np.concatenate([edges[first_in, 0], edges[second_in, 1]]))
    if len(missing):
        print(
            f"note: {len(missing)} of the {len(nodes)} community nodes (e.g. {', '.join(map(str, missing[:3]))}) are in "
            f"no edge of {edge_path}; they stay as isolated nodes"
        )
    edges = np.searchsorted(nodes, edges[first_in & second_in])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    labels = np.zeros((len(nodes), num_tasks), dtype=bool)
    for task, community in enumerate(chosen):
        labels[np.searchsorted(nodes, community), task] = True
    return edges, labels, names


def check_splittable(path: Path, chosen: list[np.ndarray], names: list[str], num_nodes: int) -> None:
    """Refuse chosen communities that the splits cannot use: fewer than ``MIN_NEGATIVES`` of the ``num_nodes`` nodes
    they span outside them (nothing to train against), or fewer than ``MIN_POSITIVES`` members (none to evaluate)."""

    def listed(tasks: list[int]) -> str:
        return ", ".join(names[task] for task in tasks[:10]) + (f" and {len(tasks) - 10} more" if len(tasks) > 10 else "")

    no_negatives = [task for task, community in enumerate(chosen) if num_nodes - len(community) < MIN_NEGATIVES]
    if no_negatives:
        raise UsageError(
            f"{path}: task(s) {listed(no_negatives)} have no negative node: their communities hold all {num_nodes} "
            f"nodes the {len(chosen)} chosen communities span; use communities that differ (e.g. remove duplicate "
            "lines from the file) or another --num-tasks"
        )
    too_small = [task for task, community in enumerate(chosen) if len(community) < MIN_POSITIVES]
    if too_small:
        raise UsageError(
            f"{path}: task(s) {listed(too_small)} have fewer than {MIN_POSITIVES} member nodes, too few to keep one "
            "for evaluation after training; lower --num-tasks (the largest communities are taken first) or remove "
            "those communities from the file"
        )

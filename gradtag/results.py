"""Subset files and result CSVs: the plain-text and CSV artifacts every step reads or writes.

``sampled_tasks`` files (also the groups format) list one subset per line; result CSVs hold one row per (subset,
task, seed) with the columns ``RESULT_COLUMNS``. Both are written atomically and read with one-line errors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from gradtag.artifacts import UsageError, atomic_path

_NOT_TEXT = re.compile(rb"[^\t\n\v\f\r\x20-\x7e]")  # a byte outside printable ASCII and whitespace


def ascii_text(raw: bytes) -> str | None:
    """``raw`` (one line of a file read as bytes) as ``str`` if it is printable ASCII text, else ``None``.

    The plain-text artifacts hold only numbers, so a byte outside ASCII is a wrong or damaged file; readers decode
    their data lines with this and skip comments before decoding them (a comment may hold any byte).
    """
    return None if _NOT_TEXT.search(raw) else raw.decode("ascii")


def read_subsets(path: str | Path, n_tasks: int) -> list[tuple[int, ...]]:
    """Read a ``sampled_tasks`` file: one subset per line, 0-based task indices, ``#`` comments, blank lines skipped.

    Returns a list of tuples of task indices in the order written. Rejects (with the line number) bytes that are not
    ASCII text outside a comment, a non-integer, an index outside ``[0, n_tasks)``, a repeated index within a line,
    and a file with no subset. Groups files (``--groups``, ``--planted``) are read here too.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"subsets file {path} does not exist; write one with sample_subsets.py")
    try:
        content = path.read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read {path} ({err.strerror}); make it readable or pass another file") from None
    subsets = []
    for number, raw in enumerate(content.splitlines(), start=1):
        line = ascii_text(raw.split(b"#", 1)[0])
        if line is None:
            raise UsageError(
                f"{path}:{number}: holds bytes that are not text, so it is not a subsets or groups file; pass the "
                "right file (one line of task indices per subset, as sample_subsets.py writes)"
            )
        line = line.strip()
        if not line:
            continue
        try:
            subset = tuple(int(token) for token in line.split())
        except ValueError:
            raise UsageError(f"{path}:{number}: {line!r} is not a list of integer task indices") from None
        bad = [task for task in subset if not 0 <= task < n_tasks]
        if bad:
            raise UsageError(f"{path}:{number}: task index {bad[0]} is out of range 0..{n_tasks - 1}")
        if len(set(subset)) != len(subset):
            repeated = next(task for task in subset if subset.count(task) > 1)
            raise UsageError(f"{path}:{number}: task index {repeated} is repeated; list each task once per line")
        subsets.append(subset)
    if not subsets:
        raise UsageError(f"{path} holds no subset; write one line of task indices per subset")
    return subsets


def write_subsets(path: str | Path, subsets: Sequence[Sequence[int]], header: str = "") -> None:
    """Write subsets in the ``sampled_tasks`` format (also the groups format), atomically."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    lines += [" ".join(str(int(task)) for task in subset) for subset in subsets]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def subset_key(subset: Sequence[int]) -> str:
    """Canonical text of a subset as stored in result CSVs: indices joined by spaces, in the order given."""
    return " ".join(str(int(task)) for task in subset)


# ---------------------------------------------------------------------------------------------------------- result CSVs
# ``distance``: how far the model behind the row moved from where it started, ‖W − W₀‖ / ‖W₀‖ over the trainable
# parameters (a fine-tuned truth: from θ*; from scratch: from its initialisation; an estimate: ‖P ŵ_S‖ / ‖θ*‖, averaged
# over its bases). It tells whether a truth stays in the first-order regime the estimate assumes (paper Sec. 3.1).
RESULT_COLUMNS = [
    "subset_id", "subset", "task", "seed", "val_f1", "val_loss", "test_f1", "test_loss", "val_accuracy", "test_accuracy",
    "distance", "source",
]  # fmt: skip
ESTIMATE_SEED = -1  # an estimate's rows' seed: one row per (subset, task), averaged over its bases
_FLOAT_COLUMNS = ("val_f1", "val_loss", "test_f1", "test_loss", "val_accuracy", "test_accuracy", "distance")
# columns files of earlier versions lack (read as NaN): accuracy, then distance
_LATER_COLUMNS = (("val_accuracy", "test_accuracy"), ("distance",))


def read_results(path: str | Path) -> list[dict]:
    """Rows of a per-(subset, task) results CSV (header ``RESULT_COLUMNS``), numbers parsed.

    Files written before the ``accuracy`` or ``distance`` columns existed are read with those columns NaN.
    """
    import csv

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"results file {path} does not exist; run the step that writes it first")
    headers, dropped = [RESULT_COLUMNS], set()
    for later in _LATER_COLUMNS:
        dropped.update(later)
        headers.append([column for column in RESULT_COLUMNS if column not in dropped])
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames not in headers:
            raise UsageError(f"{path}: header {reader.fieldnames} is not the results header {RESULT_COLUMNS}")
        rows = list(reader)
    for number, row in enumerate(rows, start=2):
        for column in dropped:  # every column a file of an earlier version may lack
            row.setdefault(column, "nan")
        try:
            if None in row.values() or None in row:  # fields missing (cut short) or extra ones
                raise ValueError
            for key in ("subset_id", "task", "seed"):
                row[key] = int(row[key])
            for key in _FLOAT_COLUMNS:
                row[key] = float(row[key])
        except (TypeError, ValueError):
            raise UsageError(
                f"{path}:{number}: the row is cut short or not numeric, so the file is damaged; delete it (and its "
                ".json sidecar) and rerun the step that writes it"
            ) from None
    return rows


def write_results(path: str | Path, rows: list[dict]) -> None:
    """Write all rows (dicts with ``RESULT_COLUMNS``; ``distance`` may be absent: NaN) atomically: a crash leaves the
    previous file intact."""
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, float("nan")) for key in RESULT_COLUMNS})

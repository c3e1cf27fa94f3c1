"""The on-disk contract between the four steps: paths, atomic writes, self-describing folders, subset files.

Every artifact folder holds a ``config.json`` naming the dataset, its fingerprint and task names, the arguments that
made it, and the fingerprint of its input. Readers call :func:`check_compatible` before using an artifact, so a step
refuses inputs made by an incompatible earlier step instead of producing silent garbage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2, nothing half-written."""


def run_main(main, args) -> None:
    """Call ``main(args)``; turn a :class:`UsageError` into a one-line message on stderr and exit status 2."""
    try:
        main(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


# ---------------------------------------------------------------------------------------------------------- paths
def run_name(tasks_tag: str, seed: int) -> str:
    """Name of one training run, e.g. ``all_seed0``: the task set and the seed."""
    return f"{tasks_tag}_seed{seed}"


def checkpoint_dir(saved_dir: str | Path, dataset: str, run: str) -> Path:
    """``saved/<dataset>/<run>/``: model.pt, config.json, metrics.json of step 1."""
    return Path(saved_dir) / dataset / run


def gradients_dir(gradients_root: str | Path, dataset: str, run: str, project_dim: int) -> Path:
    """``gradients/<dataset>/<run>_d<dim>/``: projected gradients of step 2."""
    return Path(gradients_root) / dataset / f"{run}_d{project_dim}"


def gradient_file(folder: str | Path, task: int, split: str, kind: str) -> Path:
    """``task_<j>_<split>_<kind>.npy`` with kind in gradients / outputs / labels / nodes."""
    return Path(folder) / f"task_{task}_{split}_{kind}.npy"


# ---------------------------------------------------------------------------------------------------------- writes
def check_output_path(path: str | Path) -> None:
    """Make ``path``'s folder (and its parents); refuse, as a :class:`UsageError`, a parent that is a file, a folder
    that cannot be created, and a ``path`` that exists but is not a regular file (a folder, a link, a device): the
    atomic rename would replace it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((parent for parent in reversed(path.parents) if parent.exists() and not parent.is_dir()), path.parent)
        raise UsageError(f"cannot write {path}: {blocker} is a file, not a folder; choose another output path") from None
    except OSError as err:
        raise UsageError(
            f"cannot write {path}: cannot create {path.parent} ({err.strerror}); choose another output path"
        ) from None
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UsageError(f"{path} exists and is not a regular file (a folder, link or device); choose another output path")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    check_output_path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise UsageError(f"cannot write {path} ({err.strerror}); choose a writable output path") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the final file the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a hidden ``.<name>.lock`` beside it) for the block, or refuse with a
    :class:`UsageError` if another process holds it: two runs writing ``what`` at once would both do the same work.
    The operating system drops the lock when its process dies, even by SIGKILL, so a killed run never blocks a resume.
    """
    import fcntl

    path = Path(path)
    lock_path = path.with_name(f".{path.name}.lock")
    check_output_path(lock_path)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"another run is writing {what} ({lock_path} is locked); wait for it to finish, then rerun to resume"
            ) from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist; run the step that writes it first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err}); delete it and rerun the step that writes it") from err


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def load_npy(path: str | Path, rerun: str) -> np.ndarray:
    """A ``.npy`` array a step wrote; a missing, truncated or foreign file is a :class:`UsageError` naming it and
    ``rerun``, the command that rewrites it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist; {rerun}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UsageError(f"{path} is damaged or not a .npy array ({type(err).__name__}); {rerun}") from None


def npy_complete(path: str | Path) -> bool:
    """Whether ``path`` is a whole ``.npy`` file (header readable, data as long as the header says), without reading it."""
    try:
        np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return False
    return True


def load_weights(path: str | Path) -> dict:
    """The state dict (name -> tensor, on the CPU) in a step-1 ``model.pt``; a missing, damaged or foreign file is a
    :class:`UsageError` naming it."""
    import pickle

    import torch

    path = Path(path)
    rerun = "rerun train_multitask.py --overwrite for this run"
    if not path.is_file():
        raise UsageError(f"{path} is missing; {rerun}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise UsageError(f"{path} is not a readable checkpoint ({type(err).__name__}); {rerun}") from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise UsageError(f"{path} does not hold a state dict of tensors; {rerun}")
    return state


def weights_fingerprint(path: str | Path) -> str:
    """A short hash of the weights in a ``model.pt`` (names, dtypes, shapes, values), not of the file's bytes:
    an identical retrain gives the same fingerprint, so resumable artifacts made from it stay valid."""
    state = load_weights(path)
    return fingerprint(*(part for name in sorted(state) for part in (name, state[name].numpy())))


def relative_path(target: str | Path, folder: str | Path) -> str:
    """``target`` as a path relative to ``folder`` (an artifact records its inputs so, beside the path as given)."""
    return os.path.relpath(Path(target).resolve(), Path(folder).resolve())


def locate_input(folder: str | Path, config: dict, key: str) -> Path:
    """The input folder an artifact in ``folder`` recorded under ``config[key]``: first through ``<key>_relative`` (the
    path relative to the artifact, so artifacts moved together, or read from another working directory or node, still
    find each other), then as recorded."""
    relative = config.get(f"{key}_relative")
    if relative is not None and (Path(folder) / relative).exists():
        return Path(os.path.normpath(Path(folder) / relative))
    return Path(config[key])


# Keys a step's folder config.json must hold, per kind of folder, and the script that writes it.
_CONFIG_KINDS = {
    "checkpoint": (("dataset", "dataset_fingerprint", "model", "model_options", "training", "seed"), "train_multitask.py"),
    "gradients": (
        ("dataset", "dataset_fingerprint", "task_names", "projection", "checkpoint_fingerprint"),
        "collect_gradients.py",
    ),
}


def read_config(folder: str | Path, kind: str) -> dict:
    """``folder/config.json`` of a step-1 ``checkpoint`` or step-2 ``gradients`` folder; a folder of another kind
    (e.g. a checkpoint where gradients are expected) is a :class:`UsageError` saying which kind it needs."""
    keys, writer = _CONFIG_KINDS[kind]
    config = read_json(Path(folder) / "config.json")
    missing = [key for key in keys if key not in config]
    if missing:
        raise UsageError(
            f"{folder} is not a {kind} folder written by {writer} (its config.json lacks {', '.join(missing)}); "
            f"point to a {kind} folder"
        )
    return config


def add_cost(path: str | Path, seconds: float, flops: int) -> None:
    """Add ``seconds`` and ``flops`` to the cost record ``path`` (``{"seconds", "flops"}``, summed over resumed runs)."""
    path = Path(path)
    previous = read_json(path) if path.is_file() else {"seconds": 0.0, "flops": 0}
    write_json(path, {"seconds": previous["seconds"] + seconds, "flops": previous["flops"] + flops})


def fingerprint(*parts) -> str:
    """A short stable hash of arrays, strings and numbers (order matters)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str(part.dtype).encode() + str(part.shape).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def package_versions() -> dict:
    import scipy
    import sklearn
    import torch

    return {"torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__, "sklearn": sklearn.__version__}


def check_compatible(config: dict, source: str | Path, **expected) -> None:
    """Refuse an artifact whose ``config.json`` disagrees with what the reader expects.

    ``expected`` maps keys of ``config`` (e.g. ``dataset``, ``dataset_fingerprint``, ``project_dim``) to the values
    the reader needs; any mismatch is a :class:`UsageError` naming the artifact and the key.
    """
    for key, want in expected.items():
        have = config.get(key)
        if have != want:
            raise UsageError(
                f"{source} was made with {key}={have!r} but this run needs {key}={want!r}; "
                "regenerate it with matching settings or point to the right folder"
            )


# ---------------------------------------------------------------------------------------------------------- subsets
def read_subsets(path: str | Path, n_tasks: int) -> list[tuple[int, ...]]:
    """Read a ``sampled_tasks`` file: one subset per line, 0-based task indices, ``#`` comments, blank lines skipped.

    Returns a list of tuples of task indices in the order written. Rejects (with the line number) a non-integer, an
    index outside ``[0, n_tasks)``, a repeated index within a line, and a file with no subset.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"subsets file {path} does not exist; write one with sample_subsets.py")
    subsets = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
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
RESULT_COLUMNS = ["subset_id", "subset", "task", "seed", "val_f1", "val_loss", "test_f1", "test_loss", "distance", "source"]
_FLOAT_COLUMNS = ("val_f1", "val_loss", "test_f1", "test_loss", "distance")


def read_results(path: str | Path) -> list[dict]:
    """Rows of a per-(subset, task) results CSV (header ``RESULT_COLUMNS``), numbers parsed.

    Files written before the ``distance`` column existed are read with ``distance`` NaN.
    """
    import csv

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"results file {path} does not exist; run the step that writes it first")
    without_distance = [column for column in RESULT_COLUMNS if column != "distance"]
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames not in (RESULT_COLUMNS, without_distance):
            raise UsageError(f"{path}: header {reader.fieldnames} is not the results header {RESULT_COLUMNS}")
        rows = list(reader)
    for number, row in enumerate(rows, start=2):
        row.setdefault("distance", "nan")
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

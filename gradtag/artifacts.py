"""The on-disk contract between the steps: the one bad-input error, atomic writes, locks, JSON and ``.npy`` loaders,
self-describing folders (configs, fingerprints, compatibility checks) and cost records. Checkpoint and gradient
paths and weights live in :mod:`gradtag.checkpoints`; subset files and result CSVs in :mod:`gradtag.results`.

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
from collections.abc import Iterator
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


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` archive at ``path``, atomically (the name is kept as given)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_npz(path: str | Path, keys: tuple[str, ...], rerun: str) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an ``.npz`` archive a step wrote; a missing, damaged or foreign file (or one lacking a
    key) is a :class:`UsageError` naming it and ``rerun``, the command that rewrites it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist; {rerun}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in keys if key not in archive.files]
            if missing:
                raise UsageError(f"{path} lacks {', '.join(missing)}; {rerun}")
            return {key: archive[key] for key in keys}
    except (ValueError, OSError, EOFError) as err:
        raise UsageError(f"{path} is damaged or not an .npz archive ({type(err).__name__}); {rerun}") from None


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


def add_cost(path: str | Path, seconds: float, flops: int, cpu_seconds: float) -> None:
    """Add wall ``seconds``, ``flops`` and ``cpu_seconds`` (this process, all its threads) to the cost record ``path``
    (``{"seconds", "flops", "cpu_seconds"}``, summed over resumed runs)."""
    path = Path(path)
    previous = read_json(path) if path.is_file() else {}
    write_json(
        path,
        {
            "seconds": previous.get("seconds", 0.0) + seconds,
            "flops": previous.get("flops", 0) + flops,
            "cpu_seconds": previous.get("cpu_seconds", 0.0) + cpu_seconds,
        },
    )


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


# Keys of a sidecar that say where an input was read from, not what it is: beside each, the input's fingerprint or
# contents identify it, so one folder spelled two ways (absolute, relative, ./x/../x) is one input to a resume or merge.
LOCATION_KEYS = ("init_from", "subsets_file", "gradients", "checkpoint", "truths")


def without_locations(record):
    """``record`` (a sidecar's JSON value) without its ``LOCATION_KEYS``, at any depth: what resumes and merges compare."""
    if isinstance(record, dict):
        return {key: without_locations(value) for key, value in record.items() if key not in LOCATION_KEYS}
    if isinstance(record, list):
        return [without_locations(value) for value in record]
    return record


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

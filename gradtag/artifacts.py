"""The on-disk contract between the steps: the one bad-input error, atomic writes, locks, JSON and ``.npy`` loaders,
self-describing folders (configs, fingerprints, compatibility checks) and cost records. Checkpoint and gradient
paths and weights live in :mod:`gradtag.checkpoints`; subset files and result CSVs in :mod:`gradtag.results`.

Every artifact folder holds a ``config.json`` naming the dataset, its fingerprint and task names, the arguments that
made it, and the fingerprint of its input. Readers call :func:`check_compatible` before using an artifact, so a step
refuses inputs made by an incompatible earlier step instead of producing silent garbage.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
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


INTERRUPTED = "interrupted (Ctrl-C); nothing half-written, finished work is kept"


def run_main(main, args) -> None:
    """Call ``main(args)``; turn a :class:`UsageError` into a one-line message on stderr and exit status 2, and an
    interrupt (Ctrl-C) into the line ``error: interrupted ...`` and exit status 130 (128 + SIGINT, as a shell reports it)."""
    try:
        main(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"error: {INTERRUPTED}", file=sys.stderr)
        sys.exit(130)


# ---------------------------------------------------------------------------------------------------------- writes
def check_output_path(path: str | Path) -> list[Path]:
    """Make ``path``'s folder (and its parents); refuse, as a :class:`UsageError`, a ``path`` naming a folder (``/``,
    ``.``), a parent that is a file, a folder that cannot be created, and a ``path`` that exists but is not a regular
    file (a folder, a link, a device): the atomic rename would replace it. Flags naming a file to write are checked
    at parse time too (``gradtag.checks.OUTPUT_FILE``), so that the error names the flag. Returns the folders it
    made, deepest first."""
    path = Path(path)
    if path.name in ("", ".."):
        raise UsageError(f"cannot write {path}: it names a folder, not a file; name a file in it")
    made = [parent for parent in path.parents if not parent.exists()]
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
    return made


# why a write failed, for the errors of the device rather than of the path: one line and the fix, not a traceback
_DEVICE_ERRORS = {
    errno.ENOSPC: "no space left on device; free space and rerun (finished work is kept)",
    errno.EDQUOT: "disk quota exceeded; free space and rerun (finished work is kept)",
    errno.EFBIG: "file too large for this file system; write to another file system and rerun (finished work is kept)",
    errno.EROFS: "the file system is read-only; choose a writable output path",
    errno.EIO: "input/output error on the device; check the disk and rerun (finished work is kept)",
}


class _WriteSet:
    """The files of one :func:`atomic_set`: (temporary, final path) pairs, the paths to delete, in order, and the
    folders made for them."""

    def __init__(self) -> None:
        self.files: list[tuple[Path, Path]] = []
        self.stale: list[Path] = []
        self.made: list[Path] = []

    def remove(self, path: str | Path) -> None:
        """Delete ``path`` (if it exists) when the set is renamed into place, not before: a file of an earlier run
        that the new set does not replace."""
        self.stale.append(Path(path))


_OPEN_SET: contextvars.ContextVar[_WriteSet | None] = contextvars.ContextVar("open_write_set", default=None)


@contextlib.contextmanager
def atomic_set() -> Iterator[_WriteSet]:
    """Write several files as one result set: each :func:`atomic_path` write inside the block (``write_json``,
    ``save_npy``, ``write_results``, ...) goes to its temporary file, and all of them are renamed into place only
    once the block has succeeded; on any failure (a full disk, an interrupt, a refusal) every temporary is removed and
    the files of the previous set stay as they were. A file written in the block is not visible until the block ends.
    A set opened inside another joins it. Yields the set, whose ``remove(path)`` deletes a stale file at the end."""
    if _OPEN_SET.get() is not None:
        yield _OPEN_SET.get()
        return
    files = _WriteSet()
    token = _OPEN_SET.set(files)
    try:
        yield files
    except BaseException:
        for tmp, _ in files.files:
            tmp.unlink(missing_ok=True)
        _remove_empty(files.made)
        raise
    finally:
        _OPEN_SET.reset(token)
    for tmp, path in files.files:
        os.replace(tmp, path)
    for path in files.stale:
        if not any(path == target for _, target in files.files):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds (inside an
    :func:`atomic_set`, when the set's block succeeds). Every file a step writes goes through here, so a full disk (or
    another failure of the device) while writing is one :class:`UsageError` line naming ``path``, never a traceback."""
    path = Path(path)
    made = check_output_path(path)
    write_set = _OPEN_SET.get()
    if write_set is not None:
        write_set.made += made
        made = []  # the set removes them if it fails
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        reason = _DEVICE_ERRORS.get(err.errno, f"{err.strerror}; choose a writable output path")
        _remove_empty(made)
        raise UsageError(f"cannot write {path}: {reason}") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the final file the usual permissions
        if write_set is None:
            os.replace(tmp, path)
        else:
            write_set.files.append((tmp, path))
            tmp = None  # the set renames or removes it
        made = []
    except OSError as err:
        if err.errno not in _DEVICE_ERRORS:
            raise
        raise UsageError(f"cannot write {path}: {_DEVICE_ERRORS[err.errno]}") from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
        _remove_empty(made)


def _remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (made by a write that failed) that are empty, deepest first."""
    for folder in sorted(set(folders), key=lambda folder: len(folder.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()


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


def read_utf8(path: str | Path, fix: str) -> str:
    """The text of a UTF-8 file (JSON, JSONL, YAML); a file that cannot be read, or holds bytes that are not UTF-8, is
    a one-line :class:`UsageError` naming it (and the line of the first bad byte) and ``fix``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read {path} ({err.strerror or err}); {fix}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: holds bytes that are not UTF-8 text; {fix}") from None


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


def save_torch(path: str | Path, obj) -> None:
    """``torch.save(obj)`` to ``path``, atomically, through a Python file (so a full disk is an ``OSError`` that
    :func:`atomic_path` reports, not torch's ``RuntimeError``)."""
    import torch

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)


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


COST_KEYS = ("seconds", "cpu_seconds", "flops")  # a cost record: wall seconds, CPU seconds (all threads), FLOPs


def total_cost(parts: list[dict]) -> dict:
    """The sum of cost records (``COST_KEYS``) per key; None where any part lacks it (or records None)."""
    values = {key: [part.get(key) for part in parts] for key in COST_KEYS}
    return {key: None if None in found else sum(found) for key, found in values.items()}


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

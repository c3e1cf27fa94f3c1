"""Where step 1 and step 2 put their folders and files, and how a checkpoint's weights are read and identified."""

from __future__ import annotations

from pathlib import Path

from gradtag.artifacts import UsageError, fingerprint


def run_name(tasks_tag: str, seed: int) -> str:
    """Name of one training run, e.g. ``all_seed0``: the task set and the seed."""
    return f"{tasks_tag}_seed{seed}"


def checkpoint_dir(saved_dir: str | Path, dataset: str, run: str) -> Path:
    """``saved/<dataset>/<run>/``: model.pt, config.json, metrics.json of step 1."""
    return Path(saved_dir) / dataset / run


def tag_affinity_file(folder: str | Path) -> Path:
    """``saved/<dataset>/<run>/tag_affinity.npy``: TAG's look-ahead affinity recorded while training θ* (step 1 with
    ``--record-tag``); ``tag_affinity_counts.npy`` and ``tag_affinity.json`` beside it."""
    return Path(folder) / "tag_affinity.npy"


def gradients_dir(gradients_root: str | Path, dataset: str, run: str, project_dim: int) -> Path:
    """``gradients/<dataset>/<run>_d<dim>/``: projected gradients of step 2."""
    return Path(gradients_root) / dataset / f"{run}_d{project_dim}"


def gradient_file(folder: str | Path, task: int, split: str, kind: str) -> Path:
    """``task_<j>_<split>_<kind>.npy`` with kind in gradients / outputs / labels / nodes."""
    return Path(folder) / f"task_{task}_{split}_{kind}.npy"


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


def state_fingerprint(state: dict) -> str:
    """A short hash of a state dict's weights (names, dtypes, shapes, values): what :func:`weights_fingerprint` gives
    for the ``model.pt`` it was saved to, so a step that has already loaded a checkpoint need not read it again."""
    return fingerprint(*(part for name in sorted(state) for part in (name, state[name].detach().cpu().numpy())))


def weights_fingerprint(path: str | Path) -> str:
    """A short hash of the weights in a ``model.pt``, not of the file's bytes: an identical retrain gives the same
    fingerprint, so resumable artifacts made from it stay valid."""
    return state_fingerprint(load_weights(path))

"""Flags shared by several scripts, declared once: run control, model, training, folders."""

from __future__ import annotations

import argparse
import dataclasses
import random

import numpy as np
import torch

from gradtag.artifacts import UsageError
from gradtag.checks import DROPOUT, NONNEGATIVE, POSITIVE, POSITIVE_INT
from models import MODELS


def add_run_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--seed", type=int, default=0, help="seed of every random choice this script makes")
    group.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where to compute: auto picks cuda when available, else cpu",
    )
    group.add_argument("--no-progress", action="store_true", help="hide tqdm progress bars")
    group.add_argument(
        "--threads",
        type=POSITIVE_INT,
        default=None,
        help="torch and BLAS threads (default: torch's, one per core; on a shared machine 1 keeps timings steady)",
    )


def use_threads(threads: int | None) -> None:
    """Set torch's and the BLAS libraries' thread counts for this process (``None``: leave the defaults)."""
    if threads is None:
        return
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)


def add_strict_arg(parser: argparse.ArgumentParser) -> None:
    """``--strict``, for the steps that use a step-1 base θ* (``gradtag.health.base_verdict``)."""
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 2, nothing written) a base θ* whose step-1 health record says it is degenerate: too few "
        "tasks learned, tasks memorised or flat gradients (see train_multitask.py's 'θ* health' line); without it "
        "such a base only gets a warning",
    )


def add_folder_args(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add the artifact-folder flags a script uses, e.g. ``add_folder_args(parser, "saved", "results")``."""
    helps = {
        "saved": ("--saved-dir", "saved", "root of step-1 checkpoints: <saved-dir>/<dataset>/<run>/"),
        "gradients": (
            "--gradients-dir",
            "gradients",
            "root of step-2 projected gradients: <gradients-dir>/<dataset>/<run>_d<dim>/",
        ),
        "results": ("--results-dir", "results", "folder for result CSVs, affinity matrices and groups"),
    }
    group = parser.add_argument_group("folders")
    for name in names:
        flag, default, text = helps[name]
        group.add_argument(flag, default=default, help=f"{text} (default: {default})")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="sign", choices=sorted(MODELS), help="network: SIGN (paper) or a plain MLP")
    group.add_argument(
        "--hop-width",
        type=POSITIVE_INT,
        default=None,
        help="width of each hop's layer (default: the dataset's recommended value; paper 256)",
    )
    group.add_argument(
        "--head-width",
        type=POSITIVE_INT,
        default=None,
        help="width of the last shared layer, before the per-task logits (default: the dataset's "
        "recommended value; paper 256, planted default 4 = number of groups)",
    )
    group.add_argument("--dropout", type=DROPOUT, default=0.0, help="dropout probability after each hidden layer")
    group.add_argument("--batch-norm", action="store_true", help="batch normalisation after each hidden linear layer")
    text = parser.add_argument_group("text model (text datasets: one margin per rendered instruction input)")
    text.add_argument(
        "--text-model",
        default=None,
        help="pretrained LM: a local folder or a Hugging Face name; BERT family (encoder classifier) or T5 family "
        "(scores the answer choices); default: the packaged all-MiniLM-L6-v2 (offline)",
    )
    text.add_argument("--lora-rank", type=POSITIVE_INT, default=4, help="LoRA rank r (paper: 4)")
    text.add_argument("--lora-alpha", type=POSITIVE, default=8.0, help="LoRA alpha: updates are scaled by alpha / r")
    text.add_argument("--lora-dropout", type=DROPOUT, default=0.0, help="LoRA dropout probability")
    text.add_argument(
        "--lora-targets", nargs="+", default=None, help="module-name suffixes that get LoRA (default: query value / q v)"
    )


def add_training_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument(
        "--epochs", type=POSITIVE_INT, default=None, help="maximum passes over the training samples (default: 1000; text 20)"
    )
    group.add_argument(
        "--lr",
        type=NONNEGATIVE,
        default=None,
        help="Adam learning rate (default: 1e-2, text 1e-3; with --init-from, the fine-tuned truth's 1e-3, see --fixed-steps)",
    )
    group.add_argument(
        "--weight-decay",
        type=NONNEGATIVE,
        default=None,
        help="L2 penalty (x/2 * sum of squares) on the shared weights and the trained tasks' output rows "
        "(default: the dataset's recommended value, planted 1e-2, SNAP 0; with --init-from, the base's own)",
    )
    group.add_argument(
        "--batch-size", type=POSITIVE_INT, default=None, help="training samples per optimisation step (default: 4096; text 32)"
    )
    group.add_argument(
        "--patience",
        type=POSITIVE_INT,
        default=None,
        help="stop after this many epochs without a better validation score (macro-F1 or text accuracy, then loss; "
        "default: 200; text 4)",
    )
    group.add_argument(
        "--balanced",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="weigh each task's positives and negatives equally in the loss (default: the dataset's recommended value, "
        "planted on, SNAP off as in the paper; with --init-from, the base's own)",
    )
    group.add_argument(
        "--eval-every",
        type=POSITIVE_INT,
        default=None,
        help="epochs between validation checks for early stopping (speed knob; default 5, text 1)",
    )
    group.add_argument(
        "--fixed-steps",
        type=POSITIVE_INT,
        default=None,
        help="train exactly this many optimisation steps with no early stopping (default with --init-from: 15 at lr "
        "1e-3, which moves θ* by ~5-10%% of its norm: the first-order regime the estimate models, README 'truth regime')",
    )


def model_options(args: argparse.Namespace, recommended: dict, domain: str = "graph") -> dict:
    """The model's constructor options: flags given, else the dataset's recommended widths; for a text dataset the
    LM (``--text-model``, default the packaged MiniLM) and its LoRA settings."""
    if domain == "text":
        return dict(
            name_or_path=args.text_model,
            lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=list(args.lora_targets) if args.lora_targets else None,
        )
    return dict(
        hop_width=args.hop_width or recommended.get("hop_width", 256),
        head_width=args.head_width or recommended.get("head_width", 256),
        dropout=args.dropout,
        batch_norm=args.batch_norm,
    )


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def parse_tasks(text: str, num_tasks: int) -> list[int]:
    """``all`` or space/comma-separated task indices -> sorted list; one-line error naming --tasks otherwise."""
    if text.strip() == "all":
        return list(range(num_tasks))
    try:
        tasks = [int(token) for token in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"--tasks {text!r}: give 'all' or task indices such as '0 3 5'") from None
    bad = [task for task in tasks if not 0 <= task < num_tasks]
    if bad or not tasks or len(set(tasks)) != len(tasks):
        raise UsageError(f"--tasks {text!r}: indices must be distinct and within 0..{num_tasks - 1}")
    return sorted(tasks)


def job_from_flags(cls, args: argparse.Namespace, **computed):
    """A frozen job dataclass ``cls`` from parsed flags: each field from the flag of its name (a list becomes a tuple,
    so a job holds no mutable flag values), then the ``computed`` fields."""
    values = {}
    for field in dataclasses.fields(cls):
        if hasattr(args, field.name):
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**{**values, **computed})

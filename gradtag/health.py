"""Is θ* a usable base for the linear estimates? A health check of a step-1 checkpoint, from its metrics.

A base model can degenerate silently in two ways (README, "The pipeline, step by step"):

- **near-trivial**: most tasks are never learned: their validation F1 is no better than predicting every node
  positive, so an estimate around θ* scores noise;
- **memorising**: train F1 ≈ 1 with validation F1 far below: θ* fits its training samples rather than the task, so
  its per-sample gradients describe those samples, and as the fit gets confident the residuals σ(z) − y (and with
  them the gradients the regressions of step 3 weigh) vanish and the linear estimate cannot tell subsets apart.

A task whose validation split holds fewer than ``MIN_VAL_POSITIVES`` positives (tiny communities) cannot be judged
learned or not: it is listed as such and left out of the learned share instead of counting as unlearned.

:func:`assess_base` judges a checkpoint's ``metrics.json`` (and, if given, its per-task gradient norms from
:func:`task_gradient_norms`); :func:`checkpoint_health` re-judges the record stored beside a checkpoint, so that
steps 2 and 3 apply the same thresholds, and :func:`base_verdict` is the one line they print (or refuse with).
Nothing here prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from gradtag.artifacts import UsageError, read_json
from gradtag.training import task_loss_gradients

# A task is *learned* when its validation F1 beats its own all-positive predictor's validation F1 by this much
# (absolute). Each task is compared with its own trivial predictor because positive rates differ between tasks (a
# 40%-positive community gets F1 0.57 for free). No predictor without signal beats "all positive" in expectation, and
# with ~40 validation positives its F1 varies by about 0.02, so 0.05 is beyond chance; on the embedded default the
# weakest task clears its bar by 0.07 (generator seed 1, θ* seed 0; 0.34 with θ* seed 1).
LEARNED_MARGIN = 0.05
# Unhealthy below this share of learned tasks: the estimate of an unlearned task's row of T is noise, and a tenth of
# the rows being noise already moves the clustering (an n = 20 partition loses about two tasks).
MIN_LEARNED_SHARE = 0.9
# A task is *memorised* when it fits its training samples (train F1 >= 0.95) while its validation F1 lies at least 0.3
# lower: the train/validation gap, not the training loss, tells a fit of the samples from a fit of the task. (A loss
# condition, train BCE <= 0.05, let through 14 of 17 tasks of a graph of 5-8-node communities that reached train F1
# 1.000: with one or two training positives the loss stays high while the fit is already exact.) Judged on every task
# with at least one validation positive; one positive makes a task's val F1 coarse, which is why it is the share of
# memorised tasks that is judged. The embedded default's best train F1 is 0.86, DBLP-20's 0.50.
MEMORISED_TRAIN_F1 = 0.95
MEMORISED_GAP = 0.3
# A task's validation split is *too small to judge* below this many positives: one node moves its val F1 by 1/5 of
# recall or more, four times LEARNED_MARGIN, so "learned" would be a coin flip. Such tasks are listed, left out of the
# learned share, and judged for memorisation only.
MIN_VAL_POSITIVES = 5
# Unhealthy from this share of memorised tasks on: a few tiny communities may be fitted exactly without spoiling the
# rest, but a quarter of the tasks with vanishing gradients flattens the regressions of every subset holding them.
MAX_MEMORISED_SHARE = 0.25
# A task's gradient is *flat* when ‖∇θ L_j(θ*)‖ is below this fraction of the 90th percentile over tasks: three orders
# of magnitude means its training loss sits at a (fitted) stationary point that first-order estimates cannot move. The
# reference is the 90th percentile, not the median, because when most tasks are memorised the median is flat too.
# (When all tasks are flat no relative test can tell; the memorised test, which is scale-free, does.)
FLAT_RATIO = 1e-3
FLAT_REFERENCE_PERCENTILE = 90
# Unhealthy from this share of flat tasks on (the same tolerance of a tenth of unusable rows as MIN_LEARNED_SHARE).
MAX_FLAT_SHARE = 0.1
# The spread of gradient norms is reported as the ratio of these percentiles (robust to one odd task); not judged.
SPREAD_PERCENTILES = (90, 10)
_LISTED = 10  # task indices named in one problem line before "..."


@dataclass(frozen=True)
class BaseHealth:
    """The health of one θ*. Task lists hold task indices (as in ``metrics["tasks"]``), not columns.

    ``learned`` (n,) bools in the order of ``tasks`` (False for an ``unjudged`` task: one whose validation split is too
    small to judge, left out of ``learned_share``, the share among the judged tasks); ``gradient_norms`` (n,) floats or
    None when not computed; ``gradient_spread`` the 90th over the 10th percentile of the norms (inf when the 10th is
    0; None without norms); ``problems`` human-readable lines, empty exactly when ``healthy``.
    """

    tasks: tuple[int, ...]
    learned: tuple[bool, ...]
    learned_share: float
    unjudged: tuple[int, ...]
    memorised: tuple[int, ...]
    gradient_norms: tuple[float, ...] | None
    gradient_spread: float | None
    flat: tuple[int, ...]
    problems: tuple[str, ...]
    healthy: bool

    @property
    def num_learned(self) -> int:
        return sum(self.learned)

    def to_json(self) -> dict:
        """A JSON-safe dict (an infinite spread becomes None), with the thresholds it was judged by."""
        record = asdict(self)
        spread = record["gradient_spread"]
        record["gradient_spread"] = spread if spread is None or np.isfinite(spread) else None
        record["thresholds"] = thresholds()
        return record


def thresholds() -> dict:
    """The module's thresholds by name (recorded beside each judgement)."""
    return {
        "learned_margin": LEARNED_MARGIN,
        "min_learned_share": MIN_LEARNED_SHARE,
        "memorised_train_f1": MEMORISED_TRAIN_F1,
        "memorised_gap": MEMORISED_GAP,
        "min_val_positives": MIN_VAL_POSITIVES,
        "max_memorised_share": MAX_MEMORISED_SHARE,
        "flat_ratio": FLAT_RATIO,
        "flat_reference_percentile": FLAT_REFERENCE_PERCENTILE,
        "max_flat_share": MAX_FLAT_SHARE,
    }


def _named(tasks) -> str:
    listed = ", ".join(map(str, list(tasks)[:_LISTED]))
    return listed + (", ..." if len(tasks) > _LISTED else "")


def assess_base(metrics: dict, grad_norms=None) -> BaseHealth:
    """Judge θ* from its ``metrics.json`` (``gradtag.training.evaluate``'s output, with ``"tasks"``).

    metrics: ``{"tasks": [task indices] (optional; default 0..n-1), "train": {"f1": (n,) list}, "val": {"f1": (n,)
    list, "all_positive_f1": (n,) list, "positives": (n,) list}}``; older metrics without ``val.all_positive_f1`` fall
    back to the split's ``all_positive_macro_f1`` for every task, and without ``val.positives`` judge every task.
    grad_norms: None or (n,) ‖∇θ L_j(θ*)‖ in the order of the tasks (:func:`task_gradient_norms`).

    A task is unjudged when its validation split has fewer than ``MIN_VAL_POSITIVES`` positives (graph tasks, metric
    F1); learned when val F1 > its all-positive val F1 + ``LEARNED_MARGIN`` (with ``metrics["metric"] == "accuracy"``,
    the text domain's: when val accuracy > its majority class's + ``LEARNED_MARGIN``); memorised when it has a
    validation positive, train F1 >= ``MEMORISED_TRAIN_F1`` and val F1 <= train F1 - ``MEMORISED_GAP``; flat when its
    gradient norm is <= ``FLAT_RATIO`` × the ``FLAT_REFERENCE_PERCENTILE``-th percentile of the norms. Unhealthy when
    no task can be judged, the learned share of the judged tasks is below ``MIN_LEARNED_SHARE``, the memorised share
    reaches ``MAX_MEMORISED_SHARE`` or the flat share reaches ``MAX_FLAT_SHARE``.
    """
    train, val = metrics["train"], metrics["val"]
    val_f1, train_f1 = np.asarray(val["f1"], dtype=float), np.asarray(train["f1"], dtype=float)
    n = len(val_f1)
    tasks = tuple(int(task) for task in metrics.get("tasks", range(n)))
    positives = np.asarray(val.get("positives", [MIN_VAL_POSITIVES] * n), dtype=float)
    if metrics.get("metric", "f1") == "accuracy":
        score, trivial = np.asarray(val["accuracy"], dtype=float), np.asarray(val["majority_accuracy"], dtype=float)
        reference = "validation accuracy within {margin} of predicting the majority class"
        judged = np.ones(n, dtype=bool)  # accuracy counts every example, not the positives
    else:
        score = val_f1
        trivial = np.asarray(val.get("all_positive_f1", [val.get("all_positive_macro_f1", 0.0)] * n), dtype=float)
        reference = "validation F1 within {margin} of predicting every node positive"
        judged = positives >= MIN_VAL_POSITIVES
    learned = judged & (score > trivial + LEARNED_MARGIN)
    memorised = (positives > 0) & (train_f1 >= MEMORISED_TRAIN_F1) & (val_f1 <= train_f1 - MEMORISED_GAP)
    problems = []
    share = float(learned.sum() / judged.sum()) if judged.any() else 0.0
    if n and not judged.any():
        problems.append(
            f"no task can be judged learned: every validation split has fewer than {MIN_VAL_POSITIVES} positives "
            "(raise --val-frac, or use larger communities)"
        )
    elif share < MIN_LEARNED_SHARE:
        problems.append(
            f"only {int(learned.sum())}/{int(judged.sum())} {'' if judged.all() else 'judged '}tasks learned "
            f"({share:.0%} < {MIN_LEARNED_SHARE:.0%}); "
            f"tasks {_named([task for task, ok, fair in zip(tasks, learned, judged, strict=True) if fair and not ok])} "
            "have " + reference.format(margin=LEARNED_MARGIN)
        )
    if n and memorised.mean() >= MAX_MEMORISED_SHARE:
        problems.append(
            f"{int(memorised.sum())}/{n} tasks memorised ({memorised.mean():.0%} >= {MAX_MEMORISED_SHARE:.0%}): train F1 "
            f">= {MEMORISED_TRAIN_F1} with validation F1 at least {MEMORISED_GAP} lower, tasks "
            f"{_named([task for task, bad in zip(tasks, memorised, strict=True) if bad])} (add weight decay, narrow the model)"
        )
    norms, spread, flat = None, None, np.zeros(n, dtype=bool)
    if grad_norms is not None:
        norms = np.asarray(grad_norms, dtype=float)
        if norms.shape != (n,):
            raise ValueError(f"grad_norms has shape {norms.shape}, expected ({n},): one norm per task")
        high, low = np.percentile(norms, SPREAD_PERCENTILES)
        spread = float(high / low) if low > 0 else float("inf")
        reference = np.percentile(norms, FLAT_REFERENCE_PERCENTILE)
        flat = norms <= FLAT_RATIO * reference
        if n and flat.mean() >= MAX_FLAT_SHARE:
            problems.append(
                f"{int(flat.sum())}/{n} tasks have flat gradients (‖∇L_j(θ*)‖ <= {FLAT_RATIO:g} x the "
                f"{FLAT_REFERENCE_PERCENTILE}th percentile {reference:.2e}), tasks "
                f"{_named([task for task, bad in zip(tasks, flat, strict=True) if bad])}"
            )
    return BaseHealth(
        tasks=tasks,
        learned=tuple(bool(ok) for ok in learned),
        learned_share=share,
        unjudged=tuple(task for task, fair in zip(tasks, judged, strict=True) if not fair),
        memorised=tuple(task for task, bad in zip(tasks, memorised, strict=True) if bad),
        gradient_norms=None if norms is None else tuple(float(norm) for norm in norms),
        gradient_spread=spread,
        flat=tuple(task for task, bad in zip(tasks, flat, strict=True) if bad),
        problems=tuple(problems),
        healthy=not problems,
    )


def task_gradient_norms(model: torch.nn.Module, dataset, tasks: list[int], balanced: bool, device) -> np.ndarray:
    """(len(tasks),) float64: ‖∇θ L_j(θ*)‖ over the trainable parameters, for each task j in ``tasks``
    (:func:`~gradtag.training.task_loss_gradients`: the loss θ* was trained with, without weight decay)."""
    return task_loss_gradients(model, dataset, tasks, balanced, device).double().norm(dim=1).cpu().numpy()


# ---------------------------------------------------------------------------------------------------------- reading
def checkpoint_health(folder: str | Path) -> BaseHealth | None:
    """Re-judge the health record in ``<folder>/metrics.json`` with this module's thresholds; None when the
    checkpoint has no record (made before health checks) or no metrics.json."""
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        return None
    metrics = read_json(path)
    if "health" not in metrics:
        return None
    return assess_base(metrics, metrics["health"].get("gradient_norms"))


def format_health(health: BaseHealth) -> str:
    """One line, e.g. ``θ* health: 19/20 tasks learned (95%), 0 memorised, gradient-norm spread 3.1x: healthy``; with
    tasks too small to judge, ``12/16 judged tasks learned (75%), 4 too small to judge, ...``."""
    spread = "not measured" if health.gradient_spread is None else f"{health.gradient_spread:.3g}x"
    count = len(health.problems)
    verdict = "healthy" if health.healthy else f"DEGENERATE, {count} problem{'s' if count > 1 else ''}"
    judged = len(health.tasks) - len(health.unjudged)
    learned = f"{health.num_learned}/{judged} {'judged ' if health.unjudged else ''}tasks learned ({health.learned_share:.0%})"
    learned = learned if judged or not health.tasks else "no task judged"
    unjudged = f", {len(health.unjudged)} too small to judge" if health.unjudged else ""
    return (
        f"θ* health: {learned}{unjudged}, {len(health.memorised)} memorised, {len(health.flat)} flat, "
        f"gradient-norm spread {spread}: {verdict}"
    )


def unjudged_note(health: BaseHealth) -> str | None:
    """A ``note:`` line naming the tasks whose validation split is too small to judge; None when there are none."""
    if not health.unjudged:
        return None
    return (
        f"note: tasks {_named(health.unjudged)} have fewer than {MIN_VAL_POSITIVES} validation positives: too few to "
        "tell learned from not, so they are left out of the learned share (raise --val-frac to judge them)"
    )


def base_verdict(folder: str | Path, strict: bool) -> str | None:
    """What steps 2 and 3 say about the step-1 base in ``folder``: None when healthy and every task could be judged,
    else one line to print on stderr.

    An unhealthy base gives a ``warning:`` line, or with ``strict`` a :class:`UsageError` (so the step refuses before
    writing anything); a base without a health record gives a ``note:`` line, never an error.
    """
    health = checkpoint_health(folder)
    if health is None:
        return f"note: base {folder} has no health record (trained before health checks); its health is unknown"
    if health.healthy:
        return unjudged_note(health)
    problems = "; ".join(health.problems)
    if strict:
        raise UsageError(f"base {folder} looks degenerate: {problems}; retrain it, or drop --strict to use it anyway")
    return f"warning: base {folder} looks degenerate: {problems}; pass --strict to refuse"

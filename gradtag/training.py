"""Training and evaluating multitask node classifiers (step 1, and every "train on this subset" run).

Each task is a binary node label with its own training nodes, so the loss is binary cross-entropy over each task's own
training samples only (masked), averaged over the tasks trained. Model selection: the epoch with the best validation
macro-F1 over the trained tasks (validation loss breaks ties), or a fixed number of steps when fine-tuning.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gradtag.artifacts import UsageError, check_compatible, read_config, save_torch
from gradtag.checkpoints import load_weights
from gradtag.datamaps import sigmoid_true_probability
from gradtag.flops import SampledFlops
from models import build_model


def masked_bce(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, task_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over tasks of each task's weighted mean BCE over its own samples.

    logits, labels, weights: (B, n). ``weights`` is 0 for every (sample, task) entry that is not a training sample of
    the task (a boolean mask works: plain means) and may weigh classes (see :func:`class_weights`); entries of weight 0
    contribute nothing, not even through the mean. Tasks without any weighted sample in the batch are skipped.
    ``task_weights`` (n,), if given, makes the mean over tasks a weighted one, Σ_j w_j L_j / Σ_j w_j over the tasks
    present (a group's model of STG-MTL, its tasks weighted by their memberships; all ones: the plain mean).
    """
    weights = weights.to(logits.dtype)
    losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * weights
    totals = weights.sum(dim=0)
    present = totals > 0
    if task_weights is None:
        return (losses.sum(dim=0)[present] / totals[present]).mean()
    task_weights = task_weights.to(logits.dtype)[present]
    return (losses.sum(dim=0)[present] / totals[present] * task_weights).sum() / task_weights.sum()


def weighted_tasks(tasks: list[int], task_weights) -> tuple[list[int], np.ndarray | None]:
    """The tasks a weighted run trains and their weights: those of weight > 0 (a task of weight 0 is left out of the
    loss, the weight decay and model selection, so its parameters stay exactly as they were). Without weights:
    ``(tasks, None)``."""
    if task_weights is None:
        return list(tasks), None
    task_weights = np.asarray(task_weights, dtype=np.float64)
    if task_weights.shape != (len(tasks),) or np.any(task_weights < 0) or not np.any(task_weights > 0):
        raise ValueError(f"task_weights must be (len(tasks),) = ({len(tasks)},), nonnegative, not all 0: {task_weights}")
    keep = task_weights > 0
    return [task for task, kept in zip(tasks, keep, strict=True) if kept], task_weights[keep]


def weighted_selection(scores: dict, score_key: str, task_weights) -> tuple[float, float]:
    """(selection score, mean loss) of one split's :func:`split_metrics` for model selection: the plain means
    (``score_key``'s mean and ``mean_loss``) or, with ``task_weights`` (len(tasks),), the means weighted by them, so
    that a weighted group's model is selected by the objective it is trained on. ``score_key``: ``f1`` or
    ``accuracy``."""
    if task_weights is None:
        return scores["macro_f1" if score_key == "f1" else "mean_accuracy"], scores["mean_loss"]
    weights = np.asarray(task_weights, dtype=np.float64)
    return float(np.average(scores[score_key], weights=weights)), float(np.average(scores["loss"], weights=weights))


def class_weights(labels: np.ndarray, mask: np.ndarray, balanced: bool) -> np.ndarray:
    """Per (sample, task) loss weights (N, n) float32: 0 off ``mask``; on it 1, or with ``balanced`` each class of a
    task weighted so that positives and negatives carry equal total weight (mean weight 1 over the task's samples).

    With 10% positives, an unweighted model that predicts every node negative is a strong optimum, thresholded F1
    collapses, and an under-fitted model predicts no positive at all; balancing keeps the logit-0 threshold meaningful.
    """
    weights = mask.astype(np.float32)
    if balanced:
        positives = (labels & mask).sum(axis=0)
        negatives = (~labels & mask).sum(axis=0)
        total = positives + negatives
        weights = (
            np.where(labels, total / np.maximum(2 * positives, 1), total / np.maximum(2 * negatives, 1)).astype(np.float32) * mask
        )
    return weights


def binary_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    """F1 of the positive class; 0 when there is no positive prediction and no positive label."""
    true_pos = np.sum(predicted & truth)
    denom = predicted.sum() + truth.sum()
    return float(2 * true_pos / denom) if denom else 0.0


def split_metrics(per_task) -> dict:
    """Per task, from ``[(logits (N_j,), labels (N_j,) bool)]``: F1 of the positive class (logit > 0), mean BCE and
    accuracy, their means, and the F1 of the trivial predictor "every sample is positive", 2·positives / (positives +
    samples), per task and averaged, the majority class's accuracy and the number of positives per task — the keys
    :func:`evaluate` returns for one split (both domains use it)."""
    f1s, losses, accuracies, trivial, majority, positives = [], [], [], [], [], []
    for z, y in per_task:
        f1s.append(binary_f1(z > 0, y))
        losses.append(float(np.mean(np.logaddexp(0, z) - y * z)))
        accuracies.append(float(np.mean((z > 0) == y)))
        trivial.append(float(2 * y.sum() / max(y.sum() + len(y), 1)))
        majority.append(float(max(np.mean(y), 1 - np.mean(y))) if len(y) else 0.0)
        positives.append(int(np.sum(y)))
    return {
        "f1": f1s,
        "loss": losses,
        "accuracy": accuracies,
        "macro_f1": float(np.mean(f1s)),
        "mean_loss": float(np.mean(losses)),
        "mean_accuracy": float(np.mean(accuracies)),
        "all_positive_f1": trivial,
        "all_positive_macro_f1": float(np.mean(trivial)),
        "majority_accuracy": majority,
        "positives": positives,
    }


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, features: torch.Tensor, nodes: np.ndarray, device: torch.device, batch_size: int = 8192
) -> torch.Tensor:
    """Logits (len(nodes), n) of the model on the given nodes, computed in eval mode, returned on CPU."""
    model.eval()
    outputs = [model(features[nodes[start : start + batch_size]].to(device)).cpu() for start in range(0, len(nodes), batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


def evaluate(
    model: torch.nn.Module,
    dataset,
    tasks: list[int],
    device: torch.device,
    splits=("train", "val", "test"),
    flops: SampledFlops | None = None,
    logits_fn=None,
    progress: bool = False,
) -> dict:
    """Per task and split: F1 of the positive class (threshold logit 0) and mean BCE.

    ``flops``, if given, tallies the forward passes (per node scored; see ``gradtag.flops.SampledFlops``).
    ``logits_fn(nodes) -> (len(nodes), n) tensor``, if given, supplies the logits instead of the model's forward pass
    (e.g. a Taylor expansion of the model). ``progress`` is accepted for the text domain's signature: a graph split is
    scored in one batched pass, without a bar.

    Returns ``{split: {"f1": (len(tasks),) list, "loss": list, "accuracy": list, "macro_f1": float, "mean_loss": float,
    "mean_accuracy": float, "all_positive_f1": list, "all_positive_macro_f1": float, "majority_accuracy": list,
    "positives": (len(tasks),) list of int}}``, the last two being the per-task F1 of the trivial
    predictor "every sample is positive" and their mean, for reference (``gradtag.health`` compares each task to its own).
    """
    result = {}
    for split in splits:
        mask = dataset.masks[split][:, tasks]
        nodes = np.flatnonzero(mask.any(axis=1))
        with flops.measure(len(nodes)) if flops is not None else contextlib.nullcontext():
            logits = (logits_fn or (lambda chosen: predict_logits(model, dataset.features, chosen, device)))(nodes)
            logits = logits[:, tasks].numpy()
        labels = dataset.labels[nodes][:, tasks]
        columns = [mask[nodes, column] for column in range(len(tasks))]
        result[split] = split_metrics([(logits[rows, column], labels[rows, column]) for column, rows in enumerate(columns)])
    return result


def task_loss_gradients(
    model: torch.nn.Module, dataset, tasks: list[int], balanced: bool, device, progress: bool = False
) -> torch.Tensor:
    """(len(tasks), p) ∇θ L_j(θ) over the trainable parameters (``gradtag.gradients.flat_params`` order), per task j.

    L_j is the loss the model was trained with, restricted to task j: the (class-balanced if ``balanced``,
    :func:`class_weights`) mean BCE over j's training nodes (:func:`masked_bce`), without the weight-decay term. One
    forward and backward per task, in eval mode (as step 2 takes its gradients). Float32 like the model. ``progress``
    shows a transient bar over the tasks.
    """
    was_training = model.training
    model.eval()
    params = [param for param in model.parameters() if param.requires_grad]
    rows = []
    for task in tqdm(tasks, desc="task gradients", unit="task", disable=not progress, leave=False):
        nodes = dataset.samples(task, "train")
        labels = dataset.labels[nodes, task][:, None]
        weights = torch.as_tensor(class_weights(labels, np.ones_like(labels, dtype=bool), balanced), device=device)
        logits = model(dataset.features[nodes].to(device))[:, [task]]
        loss = masked_bce(logits, torch.as_tensor(labels, dtype=logits.dtype, device=device), weights)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        pieces = [torch.zeros_like(param) if g is None else g for g, param in zip(grads, params, strict=True)]
        rows.append(torch.cat([piece.reshape(-1) for piece in pieces]))
    model.train(was_training)
    return torch.stack(rows).detach() if rows else torch.empty(0, sum(param.numel() for param in params))


def l2_penalty(model: torch.nn.Module, tasks: torch.Tensor) -> torch.Tensor:
    """Sum of squared weights of the shared layers and of the trained tasks' output rows only.

    Penalising the other tasks' rows would shrink them although their tasks are not trained, so training a subset
    leaves every parameter that belongs to another task exactly as it was.
    """
    output = model.output_layer
    shared = [param for param in model.parameters() if param is not output.weight and param is not output.bias]
    total = sum(param.pow(2).sum() for param in shared)
    return total + output.weight[tasks].pow(2).sum() + output.bias[tasks].pow(2).sum()


def shared_parameter_names(model: torch.nn.Module) -> list[str]:
    """The trainable parameters all tasks share: every one but the per-task output layer (row j of its weight and
    bias j belong to task j alone), the parameters TAG's look-ahead moves (``gradtag.tag``)."""
    output = {id(model.output_layer.weight), id(model.output_layer.bias)}
    return [name for name, param in model.named_parameters() if param.requires_grad and id(param) not in output]


def tag_batch_losses(model: torch.nn.Module, dataset, tasks: list[int], balanced: bool, device):
    """For ``gradtag.tag``: ``batch (node ids) -> (inputs, task_losses)`` (``model`` is unused: the text domain's
    signature), the model's inputs on the batch and the
    per-task training losses of :func:`train_model` on it, (len(tasks),) with the present tasks (those with a
    weighted training sample in the batch): each task's weighted mean BCE (:func:`masked_bce` before its mean over
    tasks), without the weight-decay term."""
    train_mask = dataset.masks["train"][:, tasks]
    weights = torch.as_tensor(class_weights(dataset.labels[:, tasks], train_mask, balanced))
    labels = torch.as_tensor(dataset.labels[:, tasks], dtype=torch.float32)
    task_index = torch.as_tensor(tasks, device=device)

    def batch_losses(batch):
        batch_weights, batch_labels = weights[batch].to(device), labels[batch].to(device)
        totals = batch_weights.sum(dim=0)

        def task_losses(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            losses = F.binary_cross_entropy_with_logits(logits[:, task_index], batch_labels, reduction="none")
            return (losses * batch_weights).sum(dim=0) / totals.clamp(min=1e-12), totals > 0

        return (dataset.features[batch].to(device),), task_losses

    return batch_losses


@dataclass
class TrainConfig:
    epochs: int = 200
    lr: float = 1e-2
    weight_decay: float = 0.0
    batch_size: int = 4096
    patience: int = 200
    fixed_steps: int | None = None
    eval_every: int = 5
    balanced: bool = False


def train_model(
    model: torch.nn.Module,
    dataset,
    tasks: list[int],
    config: TrainConfig,
    device: torch.device,
    seed: int,
    progress: bool = False,
    before_step=None,
    task_weights=None,
    record_data_map: bool = False,
) -> dict:
    """Train ``model`` in place on the training samples of ``tasks``; return a summary of the run.

    Only the training nodes of the listed tasks are visited, and the loss masks every (node, task) entry that is not a
    training sample of a listed task, so the logits of other tasks receive no gradient. With
    ``config.fixed_steps`` the model takes exactly that many optimiser steps and keeps the last weights; otherwise it
    keeps the weights of the best validation epoch (macro-F1, then loss; checked every ``eval_every`` epochs) and
    stops after ``patience`` epochs in which neither that score nor the validation loss improved. The summary's
    ``flops`` counts training steps and validation passes (``gradtag.flops.SampledFlops``). ``before_step(batch,
    step)``, if given, sees each batch (node ids) before its step (:func:`run_schedule`; e.g. ``gradtag.tag``).

    ``task_weights`` (len(tasks),) nonnegative, if given, weighs each task's loss (:func:`masked_bce`) and its
    validation score (:func:`weighted_selection`). With ``record_data_map`` (epochs only, not ``fixed_steps``) the
    summary's ``data_map`` holds the data-map trace (:func:`data_map_pairs`, :mod:`gradtag.datamaps`):
    ``probabilities`` (epochs run, P) float32, p(true label) of every training (node, task) pair after each epoch, in
    eval mode; its pairs' ``tasks``, ``samples`` (node ids) and ``labels``, (P,) each.
    """
    tasks, task_weights = weighted_tasks(tasks, task_weights)
    generator = torch.Generator().manual_seed(seed)
    train_mask = dataset.masks["train"][:, tasks]
    weights = torch.as_tensor(class_weights(dataset.labels[:, tasks], train_mask, config.balanced))
    nodes = torch.as_tensor(np.flatnonzero(train_mask.any(axis=1)))
    labels = torch.as_tensor(dataset.labels[:, tasks], dtype=torch.float32)
    task_index = torch.as_tensor(tasks, device=device)
    loss_weights = None if task_weights is None else torch.as_tensor(np.asarray(task_weights, dtype=np.float32), device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    step_flops, eval_flops = SampledFlops(), SampledFlops()

    def epoch_batches():
        model.train()
        order = nodes[torch.randperm(len(nodes), generator=generator)]
        for start in range(0, len(order), config.batch_size):
            yield order[start : start + config.batch_size]

    def take_step(batch) -> None:
        with step_flops.measure(len(batch)):
            logits = model(dataset.features[batch].to(device))[:, task_index]
            loss = masked_bce(logits, labels[batch].to(device), weights[batch].to(device), loss_weights)
            if config.weight_decay:
                loss = loss + config.weight_decay / 2 * l2_penalty(model, task_index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def validate() -> tuple[float, float]:
        scores = evaluate(model, dataset, tasks, device, splits=("val",), flops=eval_flops)["val"]
        return weighted_selection(scores, "f1", task_weights)

    trace, pairs = [], data_map_pairs(dataset, tasks) if record_data_map else None

    def record_epoch(epoch: int) -> None:  # dataset cartography: p(true label) of every training pair, eval mode
        pair_tasks, pair_nodes, pair_labels = pairs
        scored, rows = np.unique(pair_nodes, return_inverse=True)
        with eval_flops.measure(len(scored)):
            logits = predict_logits(model, dataset.features, scored, device).numpy()
        trace.append(sigmoid_true_probability(logits[rows, pair_tasks], pair_labels))

    summary = run_schedule(
        config,
        epoch_batches,
        take_step,
        validate,
        lambda: copy.deepcopy(model.state_dict()),
        model.load_state_dict,
        progress,
        "train",
        before_step,
        on_epoch_end=record_epoch if record_data_map else None,
    )
    if record_data_map:
        summary["data_map"] = data_map_record(trace, pairs)
    return {**summary, "flops": step_flops.total + eval_flops.total}


def data_map_pairs(dataset, tasks: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training (sample, task) pairs of ``tasks``, task by task (samples ascending, as ``dataset.samples``):
    their task ids, sample ids (node ids, or a text task's example ids) and 0/1 labels, (P,) int64 each. Both
    domains' datasets have ``samples`` and ``task_labels``."""
    pair_tasks = np.concatenate([np.full(len(dataset.samples(task, "train")), task, dtype=np.int64) for task in tasks])
    samples = np.concatenate([np.asarray(dataset.samples(task, "train"), dtype=np.int64) for task in tasks])
    labels = np.concatenate([np.asarray(dataset.task_labels(task, "train")).astype(np.int64) for task in tasks])
    return pair_tasks, samples, labels


def data_map_record(trace: list[np.ndarray], pairs) -> dict:
    """The data map a training run returns: ``probabilities`` (epochs, P) float32 and the pairs' ``tasks``,
    ``samples`` and ``labels`` (P,) int64."""
    pair_tasks, samples, labels = pairs
    probabilities = np.stack(trace) if trace else np.zeros((0, len(pair_tasks)), dtype=np.float32)
    return {"probabilities": probabilities.astype(np.float32), "tasks": pair_tasks, "samples": samples, "labels": labels}


def run_schedule(
    config: TrainConfig,
    epoch_batches,
    take_step,
    validate,
    snapshot,
    restore,
    progress: bool,
    desc: str,
    before_step=None,
    on_epoch_end=None,
) -> dict:
    """The training schedule both domains share (:func:`train_model`, ``gradtag.text_training.train_model``).

    With ``config.fixed_steps``: exactly that many steps, the last weights kept. Otherwise up to ``config.epochs``
    epochs, validated every ``eval_every`` (and at the last), keeping the weights of the best (score, −loss) and
    stopping after ``patience`` epochs in which neither that key nor the validation loss improved.

    Args:
        epoch_batches: () -> the batches of one epoch (called once per epoch, in order).
        take_step: batch -> None, one optimiser step.
        validate: () -> (selection score, mean loss) on the validation split; higher scores are better.
        snapshot: () -> a copy of the weights to keep; restore: that copy -> None.
        before_step: optional (batch, step) -> None, called with each batch and the number of steps taken so far just
            before its optimiser step, at the weights that step starts from (``gradtag.tag``'s look-ahead needs them).
        on_epoch_end: optional epoch index -> None, called after every epoch's steps, before its validation (not with
            fixed steps, which have no epochs); e.g. the data-map trace.

    Returns ``epochs_run``, ``steps`` and ``best_epoch`` (None with fixed steps).
    """
    best_key, best_state, best_epoch, steps, epoch = None, None, 0, 0, 0
    # patience counts from the last gain in either the selection key or the validation loss: under class imbalance
    # macro-F1 can sit at 0 for many epochs while the model is still learning (the loss keeps falling)
    best_loss, last_progress = float("inf"), 0
    max_epochs = config.epochs if config.fixed_steps is None else 10**9
    bar = tqdm(total=config.fixed_steps or config.epochs, desc=desc, disable=not progress, leave=False)
    for epoch in range(max_epochs):
        for batch in epoch_batches():
            if before_step is not None:
                before_step(batch, steps)
            take_step(batch)
            steps += 1
            if config.fixed_steps is not None:
                bar.update()
                if steps >= config.fixed_steps:
                    break
        if config.fixed_steps is not None:
            if steps >= config.fixed_steps:
                break
            continue
        bar.update()
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if epoch % config.eval_every and epoch != max_epochs - 1:
            continue
        score, loss = validate()
        key = (score, -loss)
        if loss < best_loss:
            best_loss, last_progress = loss, epoch
        if best_key is None or key > best_key:
            best_key, best_state, best_epoch = key, snapshot(), epoch
        elif epoch - max(best_epoch, last_progress) >= config.patience:
            break
    bar.close()
    if best_state is not None:
        restore(best_state)
    return {"epochs_run": epoch + 1, "steps": steps, "best_epoch": best_epoch if best_state is not None else None}


# ---------------------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(folder: Path, model: torch.nn.Module) -> None:
    save_torch(Path(folder) / "model.pt", model.state_dict())


def model_from_config(config: dict, device: torch.device) -> torch.nn.Module:
    """Rebuild the (untrained) network a checkpoint's ``config.json`` describes."""
    return build_model(
        config["model"], config["in_dim"], config["num_hops"], len(config["task_names"]), **config["model_options"]
    ).to(device)


def load_checkpoint(folder: str | Path, device: torch.device, dataset=None) -> tuple[torch.nn.Module, dict]:
    """Load ``saved/<dataset>/<run>/`` (model.pt + config.json); if ``dataset`` is given, refuse a checkpoint made on
    another dataset, task list or split (fingerprint mismatch)."""
    folder = Path(folder)
    config = read_config(folder, "checkpoint")
    state = load_weights(folder / "model.pt")
    if dataset is not None:
        check_compatible(config, folder, dataset=dataset.name, dataset_fingerprint=dataset.fingerprint)
    model = model_from_config(config, device)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise UsageError(
            f"{folder / 'model.pt'} does not fit the {config['model']!r} model its config.json describes "
            f"({config['model_options']}); rerun train_multitask.py --overwrite for this run"
        ) from None
    model.eval()
    return model, config

"""Training, scoring and differentiating text models on instruction tasks (the text domain of steps 1, 2 and truths).

The text counterpart of :mod:`gradtag.training` and of step 2's gradient collection, with the same signatures where
the graph side has them. A text task j is an instruction: its samples are the (example, instruction j) pairs of
:class:`data.text.TextDataset`, each rendered to its own input text; the model (:mod:`models.text`, a pretrained LM
with LoRA) gives one margin f(x) per input, trained with the logistic loss on the pair's 0/1 label, so one model
serves every instruction and the instruction is part of the input. Only LoRA and head parameters train.

Metrics per task and split: accuracy (the text domain's headline metric, as in the paper), F1 of label 1 and the mean
logistic loss, with the same keys as :func:`gradtag.training.evaluate` so that the health check, the truth CSVs and
the comparison read both domains alike.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gradtag.artifacts import UsageError, check_compatible, read_config, save_torch
from gradtag.checkpoints import load_weights
from gradtag.datamaps import sigmoid_true_probability
from gradtag.flops import SampledFlops
from gradtag.gradients import output_gradient_factors, trainable_parameters
from gradtag.training import (
    TrainConfig,
    data_map_pairs,
    data_map_record,
    run_schedule,
    split_metrics,
    weighted_selection,
    weighted_tasks,
)
from models.text import build_text_model, encode_text_batch, model_inputs, output_gradients, predict

MAX_LENGTH = 128  # input tokens kept per rendered example (longer inputs are cut on the right)


# ---------------------------------------------------------------------------------------------------------- batches
def encode(model, inputs: list[str], choices: list[list[str]] | None, device, max_length: int = MAX_LENGTH) -> dict:
    """A tokenized batch on ``device``: ``input_ids``/``attention_mask`` (B, L), and the answer choices for seq2seq."""
    batch = encode_text_batch(model.tokenizer, inputs, choices if model.kind == "seq2seq" else None, max_length)
    return {key: value.to(device) for key, value in batch.items()}


def task_pairs(dataset, tasks: list[int], split: str) -> tuple[list[str], list[list[str]], np.ndarray, np.ndarray]:
    """The (input text, answer choices, label, owner column) of every sample of ``tasks`` in ``split``, task by task."""
    inputs, choices, labels, owners = [], [], [], []
    for column, task in enumerate(tasks):
        pairs = dataset.pairs(split, task)
        inputs += pairs.inputs
        choices += pairs.answer_choices
        labels.append(pairs.labels)
        owners.append(np.full(len(pairs), column))
    return inputs, choices, np.concatenate(labels).astype(np.float32), np.concatenate(owners)


def pair_weights(labels: np.ndarray, owners: np.ndarray, balanced: bool) -> np.ndarray:
    """(N,) float32 loss weights: each task's samples weigh 1/len in total (every task counts alike, as the graph's
    per-task mean); with ``balanced`` each class of a task carries half of its weight."""
    weights = np.zeros(len(labels), dtype=np.float32)
    for column in np.unique(owners):
        rows = owners == column
        if balanced:
            positive = rows & (labels == 1)
            for chosen in (positive, rows & ~positive):
                weights[chosen] = 0.5 / max(int(chosen.sum()), 1)
        else:
            weights[rows] = 1.0 / rows.sum()
    return weights


# ---------------------------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def predict_pairs(
    model, inputs: list[str], choices: list[list[str]], device, batch_size: int = 64, progress: bool = False, desc: str = "score"
) -> np.ndarray:
    """(N,) float64 margins f(x) of the model in eval mode, ``batch_size`` inputs per forward pass (a transient
    progress bar over the inputs with ``progress``)."""
    outputs = []
    bar = tqdm(total=len(inputs), desc=desc, unit="example", disable=not progress, leave=False)
    for start in range(0, len(inputs), batch_size):
        stop = start + batch_size
        batch = encode(model, inputs[start:stop], choices[start:stop], device)
        outputs.append(predict(model, batch, batch_size).double().cpu().numpy())
        bar.update(len(outputs[-1]))
    bar.close()
    return np.concatenate(outputs) if outputs else np.zeros(0)


def evaluate(
    model,
    dataset,
    tasks: list[int],
    device,
    splits=("train", "val", "test"),
    flops: SampledFlops | None = None,
    progress: bool = False,
):
    """Per task and split: accuracy, F1 of label 1 (margin > 0) and mean logistic loss, as
    :func:`gradtag.training.evaluate` (``macro_f1``, ``mean_loss``, ``all_positive_f1``, plus ``accuracy`` and
    ``mean_accuracy``). ``flops`` tallies the forward passes per input scored; ``progress`` shows a bar per split."""
    result = {}
    for split in splits:
        inputs, choices, labels, owners = task_pairs(dataset, tasks, split)
        with flops.measure(len(inputs)) if flops is not None else contextlib.nullcontext():
            margins = predict_pairs(model, inputs, choices, device, progress=progress, desc=f"score {split}")
        result[split] = split_metrics(
            [(margins[owners == column], labels[owners == column].astype(bool)) for column in range(len(tasks))]
        )
    return result


# ---------------------------------------------------------------------------------------------------------- training
def train_model(
    model,
    dataset,
    tasks: list[int],
    config: TrainConfig,
    device,
    seed: int,
    progress: bool = False,
    task_weights=None,
    record_data_map: bool = False,
    before_step=None,
) -> dict:
    """Train the model's LoRA and head parameters in place on the training pairs of ``tasks`` (AdamW at ``config.lr``,
    decoupled weight decay ``config.weight_decay``, the per-task weighted logistic loss of :func:`pair_weights`).

    Model selection as :func:`gradtag.training.train_model`: ``config.fixed_steps`` optimiser steps keeping the last
    weights, or the epoch of best validation accuracy (loss breaks ties; checked every ``eval_every`` epochs) with
    ``patience``. Returns ``epochs_run``, ``steps``, ``best_epoch`` and ``flops``. ``before_step(rows, step)``, if
    given, sees each batch (row indices into :func:`task_pairs`' order) before its step (e.g. ``gradtag.tag``).

    ``task_weights`` (len(tasks),) nonnegative, if given, scales task j's share of the loss to w_j / mean(w) (all
    ones: unchanged) and weighs the validation accuracy and loss alike (``gradtag.training.weighted_selection``).
    ``record_data_map`` adds the summary's ``data_map`` as the graph loop does (``gradtag.training.train_model``): p(true
    label) of every training (example, instruction) pair after each epoch, in eval mode, pairs task by task.
    """
    tasks, task_weights = weighted_tasks(tasks, task_weights)
    inputs, choices, labels, owners = task_pairs(dataset, tasks, "train")
    pair_loss_weights = pair_weights(labels, owners, config.balanced)
    if task_weights is not None:
        scale = np.asarray(task_weights, dtype=np.float64)
        pair_loss_weights = (pair_loss_weights * (scale / scale.mean())[owners]).astype(np.float32)
    weights = torch.as_tensor(pair_loss_weights)
    labels_t = torch.as_tensor(labels)
    trainable = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    step_flops, eval_flops = SampledFlops(), SampledFlops()

    def epoch_batches():
        model.train()
        order = torch.randperm(len(inputs), generator=generator).numpy()
        with tqdm(total=len(order), desc="epoch", unit="example", disable=not progress, leave=False) as bar:
            for start in range(0, len(order), config.batch_size):
                yield order[start : start + config.batch_size]
                bar.update(len(order[start : start + config.batch_size]))

    def take_step(rows) -> None:
        batch = encode(model, [inputs[i] for i in rows], [choices[i] for i in rows], device)
        with step_flops.measure(len(rows)):
            margins = model(**model_inputs(model, batch))
            losses = torch.nn.functional.binary_cross_entropy_with_logits(margins, labels_t[rows].to(device), reduction="none")
            # weights sum to 1 per task over the whole training set: rescaled to this batch's share of it
            loss = (losses * weights[rows].to(device)).sum() * len(inputs) / len(rows) / len(tasks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def validate() -> tuple[float, float]:
        scores = evaluate(model, dataset, tasks, device, splits=("val",), flops=eval_flops, progress=progress)["val"]
        return weighted_selection(scores, "accuracy", task_weights)

    def restore(state) -> None:
        load_state(model, state, "the best epoch's weights")

    trace = []

    def record_epoch(epoch: int) -> None:  # dataset cartography: p(true label) of every training pair, eval mode
        with eval_flops.measure(len(inputs)):
            trace.append(sigmoid_true_probability(predict_pairs(model, inputs, choices, device), labels))

    summary = run_schedule(
        config,
        epoch_batches,
        take_step,
        validate,
        lambda: trainable_state(model),
        restore,
        progress,
        "train text",
        before_step,
        on_epoch_end=record_epoch if record_data_map else None,
    )
    if record_data_map:  # task_pairs lists the pairs task by task, examples ascending: data_map_pairs' order
        summary["data_map"] = data_map_record(trace, data_map_pairs(dataset, tasks))
    return {**summary, "flops": step_flops.total + eval_flops.total}


def shared_parameter_names(model) -> list[str]:
    """Every trainable (LoRA and head) parameter: one head scores every instruction, so all of them are shared and
    TAG's look-ahead (``gradtag.tag``) moves them all."""
    return list(trainable_parameters(model))


def tag_batch_losses(model, dataset, tasks: list[int], balanced: bool, device):
    """For ``gradtag.tag``: ``rows -> (inputs, task_losses)``, the encoded batch of those training pairs
    (:func:`task_pairs` order, as :func:`train_model` draws them) and its per-task losses (len(tasks),): each task's
    weighted mean logistic loss over its pairs in the batch (:func:`pair_weights`), present where it has any."""
    inputs, choices, labels, owners = task_pairs(dataset, tasks, "train")
    weights = torch.as_tensor(pair_weights(labels, owners, balanced))
    labels_t, owners_t = torch.as_tensor(labels), torch.as_tensor(owners)

    def batch_losses(rows):
        batch = encode(model, [inputs[i] for i in rows], [choices[i] for i in rows], device)
        one_hot = torch.nn.functional.one_hot(owners_t[rows], len(tasks)).to(device, torch.float32)  # (B, n)
        row_weights, row_labels = weights[rows].to(device), labels_t[rows].to(device)
        totals = (row_weights[:, None] * one_hot).sum(dim=0)

        def task_losses(margins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            losses = torch.nn.functional.binary_cross_entropy_with_logits(margins, row_labels, reduction="none")
            return ((losses * row_weights)[:, None] * one_hot).sum(dim=0) / totals.clamp(min=1e-12), totals > 0

        return model_inputs(model, batch), task_losses

    return batch_losses


def task_loss_gradients(model, dataset, tasks: list[int], balanced: bool, device, progress: bool = False) -> torch.Tensor:
    """(len(tasks), p) ∇θ L_j(θ*) over the trainable parameters per task j: the (balanced) mean logistic loss over j's
    training pairs, in eval mode, for the health check (:func:`gradtag.health.task_gradient_norms`); ``progress``
    shows a bar over the tasks' training pairs."""
    params = [param for param in model.parameters() if param.requires_grad]
    rows = []
    was_training = model.training
    model.eval()
    total_pairs = len(task_pairs(dataset, tasks, "train")[0])
    bar = tqdm(total=total_pairs, desc="task gradients", unit="example", disable=not progress, leave=False)
    for task in tasks:
        inputs, choices, labels, owners = task_pairs(dataset, [task], "train")
        weights = torch.as_tensor(pair_weights(labels, owners, balanced), device=device)
        total = [torch.zeros_like(param) for param in params]
        for start in range(0, len(inputs), 64):
            batch = encode(model, inputs[start : start + 64], choices[start : start + 64], device)
            margins = model(**model_inputs(model, batch))
            losses = torch.nn.functional.binary_cross_entropy_with_logits(
                margins, torch.as_tensor(labels[start : start + 64], device=device), reduction="none"
            )
            grads = torch.autograd.grad((losses * weights[start : start + 64]).sum(), params, allow_unused=True)
            total = [t if g is None else t + g for t, g in zip(total, grads, strict=True)]
            bar.update(len(margins))
        rows.append(torch.cat([piece.reshape(-1) for piece in total]))
    bar.close()
    model.train(was_training)
    return torch.stack(rows).detach()


# ---------------------------------------------------------------------------------------------------------- gradients
def collect_projected_gradients(
    model,
    inputs: list[str],
    choices: list[list[str]],
    projector,
    batch_size: int,
    device,
    progress: bool = True,
    method: str = "factored",
    desc: str = "gradients",
    flops: SampledFlops | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """g = Pᵀ ∇θ f(x; θ*) for every input text, and f(x; θ*): (N, d) and (N,) float32 (Alg. 1, lines 2-4).

    ``method="factored"`` (encoder models; a seq2seq model's decoder runs once per answer choice, so it always takes
    the vmap path) takes every layer's input and back-propagated error from one batched forward and backward
    (:func:`gradtag.gradients.output_gradient_factors`; LoRA's and the head's linear layers) and hands them to
    ``projector.project_layers``: per-example gradients without a per-example pass. Any other method runs
    :func:`models.text.output_gradients` (a ``torch.func`` vmap over examples) and projects the full gradients; both
    give the same numbers up to float rounding. ``flops``, if given, tallies the work per input (counted on the
    first batch).
    """
    gradients = np.zeros((len(inputs), projector.project_dim), dtype=np.float32)
    outputs = np.zeros(len(inputs), dtype=np.float32)
    bar = tqdm(total=len(inputs), desc=desc, unit="example", disable=not progress)
    for start in range(0, len(inputs), batch_size):
        stop = min(start + batch_size, len(inputs))
        batch = encode(model, inputs[start:stop], choices[start:stop], device)
        with flops.measure(stop - start) if flops is not None else contextlib.nullcontext():
            if method == "factored" and model.kind == "encoder":
                zeros = torch.zeros(stop - start, 1, dtype=torch.int64, device=device)
                parts, margins = output_gradient_factors(model, model_inputs(model, batch), zeros)
                projected, margins = projector.project_layers(parts)[:, 0], margins[:, 0]
            else:
                grads, margins = output_gradients(model, batch)
                projected = projector.project(grads)
        gradients[start:stop] = projected.float().cpu().numpy()
        outputs[start:stop] = margins.detach().float().cpu().numpy()
        bar.update(stop - start)
    bar.close()
    return gradients, outputs


# ---------------------------------------------------------------------------------------------------------- checkpoints
def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable (LoRA and head) parameters by name: what a text checkpoint stores (the base comes by name)."""
    return {name: param.clone() for name, param in trainable_parameters(model).items()}


def save_checkpoint(folder: Path, model) -> None:
    save_torch(Path(folder) / "model.pt", trainable_state(model))


def model_from_config(config: dict, device) -> torch.nn.Module:
    """The (untrained) text model a checkpoint's ``config.json`` describes (``model_options`` = its build arguments)."""
    try:
        return build_text_model(**config["model_options"]).to(device)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"text model: {error}") from None


def load_state(model, state: dict, where) -> None:
    """Copy a text checkpoint's trainable parameters into ``model``; refuses one of another model or LoRA setting."""
    expected = trainable_parameters(model)
    if set(state) != set(expected) or any(state[name].shape != param.shape for name, param in expected.items()):
        raise UsageError(f"{where} does not fit the text model its config.json describes; rerun train_multitask.py --overwrite")
    model.load_state_dict(state, strict=False)


def load_checkpoint(folder: str | Path, device, dataset=None) -> tuple[torch.nn.Module, dict]:
    """Load a text checkpoint folder (model.pt = trainable parameters, config.json) like
    :func:`gradtag.training.load_checkpoint`, refusing one made on another dataset when ``dataset`` is given."""
    folder = Path(folder)
    config = read_config(folder, "checkpoint")
    state = load_weights(folder / "model.pt")
    if dataset is not None:
        check_compatible(config, folder, dataset=dataset.name, dataset_fingerprint=dataset.fingerprint)
    model = model_from_config(config, device)
    load_state(model, state, folder / "model.pt")
    model.eval()
    return model, config

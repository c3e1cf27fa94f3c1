"""The two domains behind the same steps: which model, training loop, scoring and checkpoint format a dataset takes.

A graph dataset (``dataset.domain == "graph"``) trains a SIGN/MLP with one logit per task (:mod:`gradtag.training`),
a text dataset an LM with LoRA and one margin per rendered input (:mod:`gradtag.text_training`). Both expose the same
operations here, so steps 1 and 2 and the truths are written once: :func:`domain_of` picks the implementation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gradtag import text_training, training
from gradtag.artifacts import UsageError, read_config
from gradtag.flops import SampledFlops, count_flops
from gradtag.gradients import collect_projected_gradients
from gradtag.scores import DOMAIN_METRICS
from models import build_model
from models.text import build_text_model
from steps.cli import seed_everything


class GraphDomain:
    """SIGN or MLP on SIGN hop features; the checkpoint holds the whole state dict."""

    name = "graph"
    metric = DOMAIN_METRICS[name]
    gradient_batch_size = 256  # nodes per batched gradient call in step 2 (collect_gradients.py --batch-size)
    train_model, evaluate = staticmethod(training.train_model), staticmethod(training.evaluate)
    task_loss_gradients = staticmethod(training.task_loss_gradients)
    save_checkpoint, load_checkpoint = staticmethod(training.save_checkpoint), staticmethod(training.load_checkpoint)
    shared_parameter_names, tag_batch_losses = (
        staticmethod(training.shared_parameter_names),
        staticmethod(training.tag_batch_losses),
    )

    def model_config(self, dataset) -> dict:
        """What ``config.json`` records to rebuild the network besides its options."""
        return {"in_dim": dataset.features.shape[2], "num_hops": dataset.features.shape[1] - 1}

    def new_model(self, job, dataset, options: dict, seed: int, device) -> torch.nn.Module:
        seed_everything(seed)
        in_dim, num_hops = dataset.features.shape[2], dataset.features.shape[1] - 1
        return build_model(job.model, in_dim, num_hops, dataset.num_tasks, **options).to(device)

    def state(self, model) -> dict:
        """The weights a checkpoint stores (and a truth starts from)."""
        return {key: value.clone() for key, value in model.state_dict().items()}

    def subset_model(self, job, dataset, options: dict, seed: int, state: dict | None, device) -> torch.nn.Module:
        """A model to train on one subset: seed ``seed``'s fresh initialisation, or ``state`` (a base) when given."""
        model = self.new_model(job, dataset, options, seed, device)
        if state is not None:
            model.load_state_dict(state)
        return model

    def collect(self, model, dataset, pieces, projector, job, device, desc: str):
        """(gradients (N, d), outputs (N,), FLOPs) of every sample of ``pieces`` [(task, split, samples)], in order;
        the FLOPs counted exactly (the whole collection under the counter)."""
        nodes = np.concatenate([samples for _, _, samples in pieces])
        owners = np.concatenate([np.full(len(samples), task) for task, _, samples in pieces])
        with count_flops() as flops:
            gradients, outputs = collect_projected_gradients(
                model,
                dataset.features,
                (nodes, owners),
                projector,
                job.batch_size or self.gradient_batch_size,
                device,
                not job.no_progress,
                job.method,
                desc,
            )
        return gradients, outputs, flops.total


class TextDomain:
    """A pretrained LM with LoRA; the checkpoint holds the trainable (LoRA and head) parameters, the base comes by name.

    One model object per seed is kept and reset to its start for every subset: loading the pretrained weights again
    for each of hundreds of subsets would cost more than fine-tuning them."""

    name = "text"
    metric = DOMAIN_METRICS[name]
    gradient_batch_size = 16  # rendered inputs per call: 256 RTE inputs of 128 tokens exhausted 24 GB in step 2
    train_model, evaluate = staticmethod(text_training.train_model), staticmethod(text_training.evaluate)
    task_loss_gradients = staticmethod(text_training.task_loss_gradients)
    save_checkpoint = staticmethod(text_training.save_checkpoint)
    load_checkpoint = staticmethod(text_training.load_checkpoint)
    shared_parameter_names = staticmethod(text_training.shared_parameter_names)
    tag_batch_losses = staticmethod(text_training.tag_batch_losses)

    def __init__(self) -> None:
        self._models: dict[int, tuple[torch.nn.Module, dict]] = {}

    def model_config(self, dataset) -> dict:
        return {"in_dim": None, "num_hops": None}

    def new_model(self, job, dataset, options: dict, seed: int, device) -> torch.nn.Module:
        seed_everything(seed)
        try:
            return build_text_model(**options, seed=seed).to(device)
        except (FileNotFoundError, ValueError) as error:
            raise UsageError(f"--text-model: {error}") from None

    def state(self, model) -> dict:
        return text_training.trainable_state(model)

    def subset_model(self, job, dataset, options: dict, seed: int, state: dict | None, device) -> torch.nn.Module:
        if seed not in self._models:
            model = self.new_model(job, dataset, options, seed, device)
            self._models[seed] = (model, self.state(model))
        model, fresh = self._models[seed]
        text_training.load_state(model, state if state is not None else fresh, f"the start of seed {seed}")
        seed_everything(seed)  # each subset trains from the same random state, as a freshly built graph model does
        return model

    def collect(self, model, dataset, pieces, projector, job, device, desc: str):
        """As the graph domain's, but the FLOPs are counted on the first batch and extrapolated per input
        (``SampledFlops``): PyTorch's counter kept every batch's tensors alive, ~1.4 GB per 64 RTE inputs."""
        inputs, choices = [], []
        for task, split, _ in pieces:
            pairs = dataset.pairs(split, task)
            inputs += pairs.inputs
            choices += pairs.answer_choices
        flops = SampledFlops()
        gradients, outputs = text_training.collect_projected_gradients(
            model,
            inputs,
            choices,
            projector,
            job.batch_size or self.gradient_batch_size,
            device,
            not job.no_progress,
            job.method,
            desc,
            flops,
        )
        return gradients, outputs, flops.total


def domain_of(dataset_or_config) -> GraphDomain | TextDomain:
    """The domain of a dataset (its ``domain``) or of a checkpoint config (its ``domain`` key; graph if absent)."""
    name = dataset_or_config.get("domain", "graph") if isinstance(dataset_or_config, dict) else dataset_or_config.domain
    return TextDomain() if name == "text" else GraphDomain()


def load_checkpoint(folder: str | Path, device, dataset=None):
    """Either domain's checkpoint, by its config's ``domain``."""
    return domain_of(read_config(folder, "checkpoint")).load_checkpoint(folder, device, dataset)

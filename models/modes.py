"""Module-mode and functional-state helpers shared by every model family."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every submodule in eval mode (dropout off, batch norm on its running statistics) for the block, then each
    one's own ``training`` flag restored."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def functional_state(model: nn.Module, device: torch.device | str | None = None) -> tuple[dict, dict]:
    """The two dicts ``torch.func.functional_call(model, (params, constants), ...)`` takes: the trainable
    (``requires_grad``) parameters by name in ``named_parameters()`` order, and everything else (frozen parameters and
    buffers), all detached and moved to ``device`` when it is given."""
    params = {name: param.detach() for name, param in model.named_parameters() if param.requires_grad}
    constants = {name: param.detach() for name, param in model.named_parameters() if not param.requires_grad}
    constants.update(dict(model.named_buffers()))
    if device is not None:
        params = {name: tensor.to(device) for name, tensor in params.items()}
        constants = {name: tensor.to(device) for name, tensor in constants.items()}
    return params, constants

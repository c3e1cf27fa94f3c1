"""SIGN (Frasca et al., 2020) as used by Grad-TAG (App. C.1.1): one MLP per hop, concatenated, then a projection head."""

import torch
from torch import nn


def _block(in_dim: int, out_dim: int, dropout: float, batch_norm: bool) -> nn.Sequential:
    layers = [nn.Linear(in_dim, out_dim)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(out_dim))
    layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class SIGN(nn.Module):
    """Input (B, num_hops + 1, in_dim): the hop features X, ÂX, ..., Â^K X of each node. Output (B, num_tasks) logits.

    Each hop k has its own layer ``in_dim -> hop_width``; the concatenation ((num_hops + 1) * hop_width) passes through
    a 2-layer head ``-> head_width -> num_tasks``. ``head_width`` is the layer all tasks share last: a narrow one makes
    tasks compete for capacity (see README, "the embedded default").
    """

    def __init__(
        self,
        in_dim: int,
        num_hops: int,
        num_tasks: int,
        hop_width: int = 256,
        head_width: int = 256,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        self.hops = nn.ModuleList(_block(in_dim, hop_width, dropout, batch_norm) for _ in range(num_hops + 1))
        self.head = nn.Sequential(
            _block((num_hops + 1) * hop_width, head_width, dropout, batch_norm), nn.Linear(head_width, num_tasks)
        )

    @property
    def output_layer(self) -> nn.Linear:
        """The per-task output layer: row j of its weight (and bias j) belong to task j alone."""
        return self.head[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.cat([hop(x[:, k]) for k, hop in enumerate(self.hops)], dim=-1)
        return self.head(hidden)

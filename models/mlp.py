"""A plain MLP on a node's own features (hop 0 only): the graph-free baseline."""

import torch
from torch import nn

from models.sign import _block


class MLP(nn.Module):
    """Input (B, num_hops + 1, in_dim), of which only hop 0 is used. Output (B, num_tasks) logits."""

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
        del num_hops  # the MLP ignores propagated features by design
        self.body = nn.Sequential(
            _block(in_dim, hop_width, dropout, batch_norm),
            _block(hop_width, head_width, dropout, batch_norm),
            nn.Linear(head_width, num_tasks),
        )

    @property
    def output_layer(self) -> nn.Linear:
        """The per-task output layer: row j of its weight (and bias j) belong to task j alone."""
        return self.body[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x[:, 0])

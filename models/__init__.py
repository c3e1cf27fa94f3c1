"""Models by name: ``build_model(name, in_dim, num_hops, num_tasks, **options)`` for graphs, and
``build_text_model(name_or_path, kind, lora_rank, ...)`` for text (a pretrained LM with LoRA, see :mod:`models.text`).
"""

from models.mlp import MLP
from models.sign import SIGN
from models.text import TEXT_MODELS, build_text_model

MODELS = {"sign": SIGN, "mlp": MLP}

__all__ = ["MLP", "MODELS", "SIGN", "TEXT_MODELS", "build_model", "build_text_model"]


def build_model(name: str, in_dim: int, num_hops: int, num_tasks: int, **options):
    """Return an ``nn.Module`` mapping hop features (B, num_hops + 1, in_dim) to task logits (B, num_tasks)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](in_dim=in_dim, num_hops=num_hops, num_tasks=num_tasks, **options)

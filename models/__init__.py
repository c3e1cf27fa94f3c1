"""Models by name: ``build_model(name, in_dim, num_hops, num_tasks, **options)``."""

from models.mlp import MLP
from models.sign import SIGN

MODELS = {"sign": SIGN, "mlp": MLP}


def build_model(name: str, in_dim: int, num_hops: int, num_tasks: int, **options):
    """Return an ``nn.Module`` mapping hop features (B, num_hops + 1, in_dim) to task logits (B, num_tasks)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](in_dim=in_dim, num_hops=num_hops, num_tasks=num_tasks, **options)

"""Johnson–Lindenstrauss random projection of gradients (Alg. 1 of Li, Sharma, Zhang, KDD 2024).

Grad-TAG replaces the gradient ∇f(x, y; θ*) ∈ R^p of each (sample, task) pair by g = Pᵀ ∇f ∈ R^d, with P a p × d
matrix of i.i.d. N(0, 1/d) entries (or Rademacher ±1/√d), then fits logistic regressions on g (Eq. 4) and maps the
solution back with Ŵ = θ* + P ŵ (Eq. 5).

P is never held whole. Its rows are generated in fixed chunks of ``chunk_rows`` rows, chunk ``c`` from its own
CPU ``torch.Generator`` seeded from ``(seed, c)``; the caller's ``block_rows`` only groups chunks for compute and
caching. So P depends on ``(kind, seed, num_params, project_dim, chunk_rows)`` alone: not on the call, the batch
split, ``block_rows`` or the device (blocks are made on the CPU and copied to the data's device). Chunk ``c`` is the
same for every ``num_params`` that contains it, so P for a smaller network is a prefix of P for a larger one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

KINDS = ("gaussian", "rademacher")
SCHEME = "gradtag-jl-v1"  # names the chunk-seeding rule below; bump it if the rule ever changes


def _chunk_seed(seed: int, chunk: int) -> int:
    """A 63-bit torch seed for chunk ``chunk`` of the projection with seed ``seed`` (NumPy SeedSequence mixing)."""
    high, low = np.random.SeedSequence([seed, chunk]).generate_state(2, dtype=np.uint32)
    return ((int(high) << 32) | int(low)) & (2**63 - 1)


class Projector:
    """A p × d JL matrix P regenerated from its seed, applied block by block (Alg. 1).

    Args:
        num_params: p, the number of trainable parameters (rows of P).
        project_dim: d, the projected dimension (columns of P).
        seed: non-negative integer; the only source of randomness of P.
        kind: ``"gaussian"`` (entries N(0, 1/d), the paper's default) or ``"rademacher"`` (entries ±1/√d).
        block_rows: rows of P handled per matrix product; a memory/speed knob that does not change P.
        chunk_rows: rows of P drawn from one generator; part of P's definition, recorded in :meth:`spec`.
        cache_bytes: blocks are kept on each (device, dtype) they were used with while their total size there stays
            under this budget (bytes); the rest are regenerated on every call. Not part of P's definition.
    """

    def __init__(
        self,
        num_params: int,
        project_dim: int,
        seed: int,
        kind: str = "gaussian",
        block_rows: int = 16384,
        chunk_rows: int = 1024,
        cache_bytes: int = 2**30,
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown projection kind {kind!r}; choose from {KINDS}")
        for name, value in (
            ("num_params", num_params),
            ("project_dim", project_dim),
            ("block_rows", block_rows),
            ("chunk_rows", chunk_rows),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes!r}")
        self.num_params = int(num_params)
        self.project_dim = int(project_dim)
        self.seed = int(seed)
        self.kind = kind
        self.block_rows = int(block_rows)
        self.chunk_rows = int(chunk_rows)
        self.cache_bytes = int(cache_bytes)
        self.scale = 1.0 / math.sqrt(self.project_dim)
        self._cache: dict[tuple[str, torch.dtype], dict[int, torch.Tensor]] = {}
        self._cached_bytes: dict[tuple[str, torch.dtype], int] = {}

    # ------------------------------------------------------------------------------------------------ description
    def spec(self) -> dict:
        """What defines P, for ``projection.json``: ``from_spec(spec())`` rebuilds the same matrix."""
        return {
            "kind": self.kind,
            "project_dim": self.project_dim,
            "seed": self.seed,
            "num_params": self.num_params,
            "block_rows": self.block_rows,
            "chunk_rows": self.chunk_rows,
            "dtype": "float32",
            "scheme": SCHEME,
        }

    @classmethod
    def from_spec(cls, spec: dict, cache_bytes: int = 2**30) -> Projector:
        """Rebuild the projector written by :meth:`spec`; refuses a spec made by another generation scheme or dtype."""
        if spec.get("scheme", SCHEME) != SCHEME or spec.get("dtype", "float32") != "float32":
            raise ValueError(
                f"projection spec {spec} was made by scheme {spec.get('scheme')!r} / dtype "
                f"{spec.get('dtype')!r}; this code generates {SCHEME!r} / 'float32'"
            )
        return cls(
            spec["num_params"],
            spec["project_dim"],
            spec["seed"],
            kind=spec["kind"],
            block_rows=spec.get("block_rows", 16384),
            chunk_rows=spec.get("chunk_rows", 1024),
            cache_bytes=cache_bytes,
        )

    def __repr__(self) -> str:
        return (
            f"Projector(num_params={self.num_params}, project_dim={self.project_dim}, seed={self.seed}, "
            f"kind={self.kind!r}, block_rows={self.block_rows}, chunk_rows={self.chunk_rows})"
        )

    # ------------------------------------------------------------------------------------------------ generation
    @property
    def num_blocks(self) -> int:
        return math.ceil(self.num_params / self.block_rows)

    def _block_range(self, block: int) -> tuple[int, int]:
        start = block * self.block_rows
        return start, min(start + self.block_rows, self.num_params)

    def _chunk(self, chunk: int) -> torch.Tensor:
        """Rows ``[chunk * chunk_rows, (chunk + 1) * chunk_rows)`` of P (unclipped), (chunk_rows, d) float32 on CPU."""
        generator = torch.Generator(device="cpu")
        generator.manual_seed(_chunk_seed(self.seed, chunk))
        shape = (self.chunk_rows, self.project_dim)
        if self.kind == "gaussian":
            values = torch.randn(shape, generator=generator, dtype=torch.float32)
        else:
            values = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).to(torch.float32).mul_(2).sub_(1)
        return values.mul_(self.scale)

    def _generate(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` of P as a (stop - start, d) float32 CPU tensor."""
        first, last = start // self.chunk_rows, (stop - 1) // self.chunk_rows
        rows = torch.cat([self._chunk(c) for c in range(first, last + 1)])
        offset = first * self.chunk_rows
        return rows[start - offset : stop - offset]

    def block(self, block: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Block ``block`` of P: rows ``[block * block_rows, min((block + 1) * block_rows, p))``, shape (rows, d).

        The tensor may be the cached copy: read it, do not modify it in place.
        """
        if not 0 <= block < self.num_blocks:
            raise IndexError(f"block {block} out of range [0, {self.num_blocks})")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # one cache for "cuda" and "cuda:0"
        key = (str(device), dtype)
        cache = self._cache.setdefault(key, {})
        if block in cache:
            return cache[block]
        values = self._generate(*self._block_range(block)).to(device=device, dtype=dtype)
        size = values.numel() * values.element_size()
        if self._cached_bytes.get(key, 0) + size <= self.cache_bytes:
            cache[block] = values
            self._cached_bytes[key] = self._cached_bytes.get(key, 0) + size
        return values

    def blocks(
        self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(start, stop, P[start:stop])`` for every block, in row order."""
        for block in range(self.num_blocks):
            start, stop = self._block_range(block)
            yield start, stop, self.block(block, device, dtype)

    def clear_cache(self) -> None:
        """Drop every cached block (on every device)."""
        self._cache.clear()
        self._cached_bytes.clear()

    def matrix(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """P materialised, (p, d). For tests and small p only."""
        return torch.cat([values for _, _, values in self.blocks(device, dtype)])

    # ------------------------------------------------------------------------------------------------ products
    def project(self, grads: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """g = Pᵀ ∇ for a batch of B gradients (Alg. 1, line 4): returns (B, d) in the gradients' dtype and device.

        ``grads`` is either a (B, p) tensor or a sequence of per-parameter gradients, each (B, *param_shape), whose
        flattened sizes add up to p in the parameter order of P's rows (``model.named_parameters()`` order, see
        :mod:`gradtag.gradients`). The sequence form never builds the (B, p) matrix.
        """
        parts = [grads] if isinstance(grads, torch.Tensor) else list(grads)
        if not parts:
            raise ValueError("project() needs at least one gradient tensor")
        batch = parts[0].shape[0]
        flat = []
        for part in parts:
            if part.shape[0] != batch:
                raise ValueError(f"all gradient tensors need the same batch size; got {part.shape[0]} and {batch}")
            flat.append(part.reshape(batch, -1))
        total = sum(part.shape[1] for part in flat)
        if total != self.num_params:
            raise ValueError(f"gradients have {total} entries per sample but the projector has num_params={self.num_params}")
        device, dtype = flat[0].device, flat[0].dtype
        out = torch.zeros(batch, self.project_dim, device=device, dtype=dtype)
        offsets = np.cumsum([0] + [part.shape[1] for part in flat])
        for start, stop, values in self.blocks(device, dtype):
            # Each parameter's slice that overlaps rows [start, stop) meets the matching rows of this block.
            for index, part in enumerate(flat):
                lo, hi = max(start, offsets[index]), min(stop, offsets[index + 1])
                if lo < hi:
                    out.addmm_(part[:, lo - offsets[index] : hi - offsets[index]], values[lo - start : hi - start])
        return out

    def expand(self, w: torch.Tensor) -> torch.Tensor:
        """P w, mapping a projected-space solution back to parameter space (Eq. 5: Ŵ = θ* + P ŵ).

        ``w`` is (d,) or (d, m); returns (p,) or (p, m) in ``w``'s dtype and device.
        """
        if w.shape[0] != self.project_dim:
            raise ValueError(f"w has leading size {w.shape[0]} but project_dim is {self.project_dim}")
        out = torch.empty((self.num_params, *w.shape[1:]), device=w.device, dtype=w.dtype)
        for start, stop, values in self.blocks(w.device, w.dtype):
            out[start:stop] = values @ w
        return out

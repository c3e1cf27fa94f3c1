"""Johnson–Lindenstrauss random projection of gradients (Alg. 1 of Li, Sharma, Zhang, KDD 2024).

Grad-TAG replaces the gradient ∇f(x, y; θ*) ∈ R^p of each (sample, task) pair by g = Pᵀ ∇f ∈ R^d, with P a p × d
matrix of i.i.d. N(0, 1/d) entries (or Rademacher ±1/√d), then fits logistic regressions on g (Eq. 4) and maps the
solution back with Ŵ = θ* + P ŵ (Eq. 5).

P is never held whole. Its rows are generated in fixed chunks of ``chunk_rows`` rows, chunk ``c`` from its own
CPU ``torch.Generator`` seeded from ``(seed, c)``; the caller's ``block_rows`` only groups chunks for compute and
caching. So P depends on ``(kind, seed, num_params, project_dim, chunk_rows)`` alone: not on the call, the batch
split, ``block_rows`` or the device (blocks are made on the CPU and copied to the data's device). Chunk ``c`` is the
same for every ``num_params`` that contains it, so P for a smaller network is a prefix of P for a larger one.

Two projectors share one interface (``spec``, ``project``, ``project_layers``, ``expand``, ``matrix``):
:class:`Projector`, the dense JL matrix above, and :class:`KroneckerProjector`, a structured P per weight matrix
(LoGra, Choe et al. 2024) followed by a small dense JL map. :func:`projector_from_spec` rebuilds either from
``projection.json``.

``project_layers`` takes the gradient in factored form. The gradient of a logit with respect to a linear layer's
weight W (out × in) is the outer product δ aᵀ of the back-propagated error δ (out) and the layer's input a (in), so
Pᵀ vec(δ aᵀ) = Σ_o δ_o (Σ_i P[o·in + i] a_i): the inner sum is computed once per sample and reused by each of its K
tasks, which costs 2·in·out·d once plus 2·out·d per task instead of 2·in·out·d per task — exact, with the same P.
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
        return self._cached(block, device, dtype, lambda device: self._generate(*self._block_range(block)).to(device, dtype))

    def _cached(self, name, device, dtype: torch.dtype, make) -> torch.Tensor:
        """The tensor ``name`` on (device, dtype): from the cache, else ``make(device)``, kept while the cache on that
        device and dtype stays under ``cache_bytes``."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # one cache for "cuda" and "cuda:0"
        key = (str(device), dtype)
        cache = self._cache.setdefault(key, {})
        if name in cache:
            return cache[name]
        values = make(device)
        size = values.numel() * values.element_size()
        if self._cached_bytes.get(key, 0) + size <= self.cache_bytes:
            cache[name] = values
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

    def rows(self, start: int, stop: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``[start, stop)`` of P, (stop - start, d), assembled from the (cached) blocks."""
        if not 0 <= start < stop <= self.num_params:
            raise IndexError(f"rows [{start}, {stop}) out of range [0, {self.num_params})")
        first, last = start // self.block_rows, (stop - 1) // self.block_rows
        parts = [self.block(block, device, dtype) for block in range(first, last + 1)]
        joined = parts[0] if len(parts) == 1 else torch.cat(parts)
        offset = first * self.block_rows
        return joined[start - offset : stop - offset]

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

    def _input_major(self, offset: int, width_out: int, width_in: int, device, dtype) -> torch.Tensor:
        """Rows ``[offset, offset + out·in)`` of P, a weight matrix's, laid out (in, out·d) so that one matrix product
        contracts them with the layer's inputs; cached under the same budget as the blocks."""

        def make(device) -> torch.Tensor:
            rows = self.rows(offset, offset + width_out * width_in, device, dtype).view(width_out, width_in, -1)
            return rows.permute(1, 0, 2).reshape(width_in, -1)

        return self._cached(("input_major", offset, width_out, width_in), device, dtype, make)

    def project_layers(self, parts: Sequence[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """g = Pᵀ ∇ for b samples with K gradients each, given per parameter in factored form: returns (b, K, d).

        ``parts`` holds one entry per parameter, in P's row order: either the gradient itself, a (b, K, *shape)
        tensor, or for a weight matrix (out, in) the pair ``(inputs (b, in), errors (b, K, out))`` whose outer
        product errors[s, k] ⊗ inputs[s] is the gradient (see the module docstring). Equal to :meth:`project` of
        the materialised gradients up to float rounding.
        """
        if not parts:
            raise ValueError("project_layers() needs at least one gradient part")
        errors_or_grads = [part[1] if isinstance(part, tuple) else part for part in parts]
        batch, count = errors_or_grads[0].shape[:2]
        device, dtype = errors_or_grads[0].device, errors_or_grads[0].dtype
        out = torch.zeros(batch, count, self.project_dim, device=device, dtype=dtype)
        offset = 0
        for part in parts:
            if isinstance(part, tuple):
                inputs, errors = part
                width_out, width_in = errors.shape[2], inputs.shape[1]
                size = width_in * width_out
                # Σ_i P[o·in + i] a_i for every o at once: one (b, in) @ (in, out·d) product per batch of samples
                per_sample = (inputs @ self._input_major(offset, width_out, width_in, device, dtype)).view(batch, width_out, -1)
                out += torch.bmm(errors, per_sample)  # (b, K, out) @ (b, out, d): the per-pair part
            else:
                size = math.prod(part.shape[2:])
                out += (part.reshape(batch * count, size) @ self.rows(offset, offset + size, device, dtype)).view_as(out)
            offset += size
        if offset != self.num_params:
            raise ValueError(f"gradient parts have {offset} entries per sample; the projector has num_params={self.num_params}")
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


# ---------------------------------------------------------------------------------------------------- structured
KRONECKER_SCHEME = "gradtag-kron-v1"  # names the seeding rule of KroneckerProjector; bump it if the rule changes


def _normal(seed_words: list[int], shape: tuple[int, ...], std: float) -> torch.Tensor:
    """A float32 CPU tensor of N(0, std²) entries from its own generator seeded by ``seed_words``."""
    generator = torch.Generator(device="cpu")
    high, low = np.random.SeedSequence(seed_words).generate_state(2, dtype=np.uint32)
    generator.manual_seed(((int(high) << 32) | int(low)) & (2**63 - 1))
    return torch.randn(shape, generator=generator, dtype=torch.float32).mul_(std)


class KroneckerProjector:
    """A structured p × d projection P = blockdiag(B_l ⊗ A_l, I) · C: per weight matrix a Kronecker sketch, then JL.

    Each trainable weight matrix l of shape (out, in) is sketched to Bᵀ G A (r_out × r_in) with A (in × r_in) and
    B (out × r_out) of i.i.d. N(0, 1/r) entries, r = min(rank, side) (a side no wider than ``rank`` is kept whole);
    every other parameter (biases, norms) is kept whole. The sketches, D' numbers per sample in all, are then mapped
    to d by a dense D' × d JL matrix C of N(0, 1/d) entries, so E[P Pᵀ] = I and the output has the dense projector's
    width and meaning (LoGra, Choe et al. 2024, adds the second map so that every layer shares one d). The factored
    gradient (a, δ) of a linear layer is sketched as (Bᵀ δ) ⊗ (Aᵀ a): about 2·(out + in)·r + r² + 2·D'·d FLOPs per
    pair against 2·p·d for the dense projector. It is a JL map with worse constants than a dense one; its effect on
    the affinities is measured in README ("Step 2 at paper size").

    Args:
        shapes: the trainable parameters' shapes in P's row order (``named_parameters()`` order).
        project_dim: d. seed: non-negative integer, the only source of randomness. rank: r, the sketch width per side.
    """

    kind = "kronecker"

    def __init__(self, shapes: Sequence[Sequence[int]], project_dim: int, seed: int, rank: int = 16):
        for name, value in (("project_dim", project_dim), ("rank", rank)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not shapes:
            raise ValueError("a KroneckerProjector needs at least one parameter shape")
        self.shapes = [tuple(int(size) for size in shape) for shape in shapes]
        self.project_dim, self.seed, self.rank = int(project_dim), int(seed), int(rank)
        self.num_params = sum(math.prod(shape) for shape in self.shapes)
        self.factors: list[tuple[torch.Tensor | None, torch.Tensor | None] | None] = []
        self.sketch_sizes = []
        for index, shape in enumerate(self.shapes):
            if len(shape) != 2:
                self.factors.append(None)
                self.sketch_sizes.append(math.prod(shape))
                continue
            sides = []
            for side, width in enumerate(shape):  # side 0: out (B), side 1: in (A)
                reduced = min(self.rank, width)
                sides.append(None if reduced == width else _normal([self.seed, 1, index, side], (width, reduced), reduced**-0.5))
            self.factors.append(tuple(sides))
            self.sketch_sizes.append(math.prod(min(self.rank, width) for width in shape))
        self.sketch_dim = sum(self.sketch_sizes)
        self.mix = _normal([self.seed, 2], (self.sketch_dim, self.project_dim), self.project_dim**-0.5)
        self._on: dict[tuple[str, torch.dtype], tuple[list, torch.Tensor]] = {}

    def spec(self) -> dict:
        """What defines P, for ``projection.json``: :func:`projector_from_spec` rebuilds the same matrix."""
        return {
            "kind": self.kind,
            "project_dim": self.project_dim,
            "seed": self.seed,
            "num_params": self.num_params,
            "rank": self.rank,
            "shapes": [list(shape) for shape in self.shapes],
            "dtype": "float32",
            "scheme": KRONECKER_SCHEME,
        }

    def __repr__(self) -> str:
        return (
            f"KroneckerProjector(num_params={self.num_params}, project_dim={self.project_dim}, seed={self.seed}, "
            f"rank={self.rank}, sketch_dim={self.sketch_dim})"
        )

    def _tensors(self, device, dtype) -> tuple[list, torch.Tensor]:
        """The factors and C on (device, dtype), cached (they are small: (out + in)·r per layer and D'·d)."""
        key = (str(torch.device(device)), dtype)
        if key not in self._on:
            move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
            factors = [None if pair is None else tuple(move(t) for t in pair) for pair in self.factors]
            self._on[key] = (factors, self.mix.to(device=device, dtype=dtype))
        return self._on[key]

    def _sketch(self, grads: torch.Tensor, pair) -> torch.Tensor:
        """Bᵀ G A of gradients (..., out, in), flattened to (..., r_out·r_in)."""
        left, right = pair
        if right is not None:
            grads = grads @ right
        if left is not None:
            grads = left.T @ grads
        return grads.flatten(-2)

    def project(self, grads: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """g = Pᵀ ∇ for B gradients, given as (B, p) or per parameter (B, *shape) in row order: returns (B, d)."""
        if isinstance(grads, torch.Tensor):
            if grads.dim() != 2 or grads.shape[1] != self.num_params:
                raise ValueError(f"expected (B, {self.num_params}) gradients, got shape {tuple(grads.shape)}")
            sizes = [math.prod(shape) for shape in self.shapes]
            pieces = zip(grads.split(sizes, dim=1), self.shapes, strict=True)
            grads = [part.reshape(len(grads), *shape) for part, shape in pieces]
        grads = list(grads)
        if [tuple(g.shape[1:]) for g in grads] != self.shapes:
            raise ValueError(f"gradient shapes {[tuple(g.shape[1:]) for g in grads]} differ from the projector's {self.shapes}")
        factors, mix = self._tensors(grads[0].device, grads[0].dtype)
        sketches = [g.flatten(1) if pair is None else self._sketch(g, pair) for g, pair in zip(grads, factors, strict=True)]
        return torch.cat(sketches, dim=1) @ mix

    def project_layers(self, parts: Sequence[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """As :meth:`Projector.project_layers`: parts per parameter, (b, K, *shape) or (inputs (b, in), errors
        (b, K, out)) for a weight matrix; returns (b, K, d). A factored weight is sketched without forming δ aᵀ."""
        if len(parts) != len(self.shapes):
            raise ValueError(f"got {len(parts)} gradient parts for a projector of {len(self.shapes)} parameters")
        first = parts[0][1] if isinstance(parts[0], tuple) else parts[0]
        batch, count = first.shape[:2]
        factors, mix = self._tensors(first.device, first.dtype)
        sketches = []
        for part, pair in zip(parts, factors, strict=True):
            if isinstance(part, tuple):
                inputs, errors = part
                left, right = pair
                inputs = inputs if right is None else inputs @ right  # (b, r_in)
                errors = errors if left is None else errors @ left  # (b, K, r_out)
                sketches.append((errors.unsqueeze(-1) * inputs[:, None, None, :]).flatten(2))
            elif pair is None:
                sketches.append(part.reshape(batch, count, -1))
            else:
                sketches.append(self._sketch(part, pair))
        return torch.cat(sketches, dim=2) @ mix

    def expand(self, w: torch.Tensor) -> torch.Tensor:
        """P w: (d,) or (d, m) to (p,) or (p, m), in ``w``'s dtype and device (Eq. 5: Ŵ = θ* + P ŵ)."""
        if w.shape[0] != self.project_dim:
            raise ValueError(f"w has leading size {w.shape[0]} but project_dim is {self.project_dim}")
        factors, mix = self._tensors(w.device, w.dtype)
        columns = w.reshape(self.project_dim, -1)
        mixed = mix @ columns  # (D', m)
        pieces, offset = [], 0
        for shape, size, pair in zip(self.shapes, self.sketch_sizes, factors, strict=True):
            block = mixed[offset : offset + size]
            offset += size
            if pair is None:
                pieces.append(block)
                continue
            left, right = pair
            sketch = block.T.reshape(-1, min(self.rank, shape[0]), min(self.rank, shape[1]))  # (m, r_out, r_in)
            if right is not None:
                sketch = sketch @ right.T
            if left is not None:
                sketch = left @ sketch
            pieces.append(sketch.flatten(1).T)
        out = torch.cat(pieces)
        return out.reshape(self.num_params, *w.shape[1:])

    def matrix(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """P materialised, (p, d). For tests and small p only."""
        return self.expand(torch.eye(self.project_dim, device=device, dtype=dtype))


PROJECTIONS = (*KINDS, KroneckerProjector.kind)


def make_projector(kind: str, shapes: Sequence[Sequence[int]], project_dim: int, seed: int, rank: int = 16):
    """The projector of ``kind`` (one of :data:`PROJECTIONS`) for trainable parameters of these shapes."""
    if kind == KroneckerProjector.kind:
        return KroneckerProjector(shapes, project_dim, seed, rank=rank)
    return Projector(sum(math.prod(shape) for shape in shapes), project_dim, seed, kind=kind)


def projector_from_spec(spec: dict, cache_bytes: int = 2**30) -> Projector | KroneckerProjector:
    """Rebuild the projector that wrote ``spec`` (``projection.json``); refuses another scheme or dtype."""
    if spec.get("kind") == KroneckerProjector.kind:
        if spec.get("scheme") != KRONECKER_SCHEME or spec.get("dtype", "float32") != "float32":
            raise ValueError(f"projection spec {spec} was made by another scheme; this code generates {KRONECKER_SCHEME!r}")
        return KroneckerProjector(spec["shapes"], spec["project_dim"], spec["seed"], rank=spec["rank"])
    return Projector.from_spec(spec, cache_bytes=cache_bytes)

"""Floating-point operation counts of the pipeline's steps, taken by torch's own counter.

``torch.utils.flop_counter.FlopCounterMode`` counts the matrix products (mm, bmm, addmm, convolutions, attention) a
block of code runs, forward and backward, vmapped or not, but not the in-place ``addmm_`` (step 2's projection
accumulates with it): its 2 m k n are added here, as are the regression's dense solves (LU: 2/3 n³ per matrix,
Cholesky: n³/3, a triangular pair of solves: 2 n² per right-hand side). Elementwise work (sigmoids, sums) is not counted:
the figures are a lower bound that is dominated, on both sides of a comparison, by the same kind of work.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode


def _batch(shape) -> int:
    return math.prod(shape[:-2])


def _lu_factor_flops(a_shape, *args, out_shape=None, **kwargs) -> int:
    n = a_shape[-1]
    return _batch(a_shape) * (2 * n**3 // 3)


def _lu_solve_flops(lu_shape, pivots_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    n, rhs = lu_shape[-1], b_shape[-1]
    return _batch(lu_shape) * 2 * n * n * rhs


def _solve_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    n = a_shape[-1]
    rhs = b_shape[-1] if len(b_shape) == len(a_shape) else 1
    return _lu_factor_flops(a_shape) + _batch(a_shape) * 2 * n * n * rhs


def _cholesky_flops(a_shape, *args, out_shape=None, **kwargs) -> int:
    n = a_shape[-1]
    return _batch(a_shape) * (n**3 // 3)


def _cholesky_solve_flops(b_shape, factors_shape, *args, out_shape=None, **kwargs) -> int:
    n, rhs = factors_shape[-1], b_shape[-1]
    return _batch(factors_shape) * 2 * n * n * rhs


def _addmm_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """In-place ``addmm_`` (the projection's accumulation), which torch's counter leaves out: 2 m k n."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


SOLVE_FORMULAS = {
    torch.ops.aten.linalg_cholesky_ex: _cholesky_flops,
    torch.ops.aten.cholesky_solve: _cholesky_solve_flops,
    torch.ops.aten.addmm_: _addmm_flops,
    torch.ops.aten.linalg_lu_factor_ex: _lu_factor_flops,
    torch.ops.aten.linalg_lu_solve: _lu_solve_flops,
    torch.ops.aten._linalg_solve_ex: _solve_flops,
}


@dataclass
class FlopCount:
    """Filled in when the ``count_flops`` block ends: ``total`` floating-point operations."""

    total: int = 0


@contextmanager
def count_flops():
    """``with count_flops() as flops: ...`` then ``flops.total``: matrix-product and solve FLOPs of the block."""
    counter = FlopCounterMode(display=False, custom_mapping=SOLVE_FORMULAS)
    result = FlopCount()
    with counter:
        yield result
    result.total = int(counter.get_total_flops())


class SampledFlops:
    """FLOPs of a block repeated many times at a cost linear in its size (rows of a batch, or 1 for a fixed block).

    The counter's Python dispatch slows small ops several-fold (a training loop ran 7x slower under it), so the block
    is counted exactly once, at its first run, and extrapolated per unit of size: ``with tally.measure(len(batch)):``.
    """

    def __init__(self) -> None:
        self.per_unit: float | None = None
        self.units = 0

    @contextmanager
    def measure(self, units: int):
        if self.per_unit is None and units > 0:
            with count_flops() as flops:
                yield
            self.per_unit = flops.total / units
        else:
            yield
        self.units += units

    @property
    def total(self) -> int:
        return 0 if self.per_unit is None else round(self.per_unit * self.units)


def format_flops(flops: float | None) -> str:
    """Human-readable count: '3.2 GFLOP'; '–' when unknown."""
    if flops is None:
        return "–"
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.0f} FLOP"

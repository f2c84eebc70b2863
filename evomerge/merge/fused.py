"""Fused CPU kernels (numba) for linear and task arithmetic / DARE: every step of a merge done
on a small block of a row before the next block is read.

The eager row-chunk kernels (:mod:`evomerge.merge.methods`) make one pass over a chunk per
torch operation: about forty for a three-source DARE-TIES, each a trip through the cache and
a dispatch. Here a block of 1024 elements (in L1) is cast, differenced, masked, weighted,
summed, sign-elected, rounded and stored in one visit. The arithmetic is the eager kernels',
in the same order, in float32; the masks are the same draws of :mod:`evomerge.merge.masks`
(bit for bit). A fused merge equals the eager one but for the rescale's L1 norms (summed in
another order, vectorized: a rounding step of the output at most), linear's weighted sum (the
eager add with ``alpha`` is a fused multiply-add) and the sign of zeros.

Used on the CPU for bfloat16 / float32 inputs and outputs when numba is installed (a core
dependency); ``EVOMERGE_FUSED=0`` turns it off. numba's own threading is not used (it does not
survive ``fork``): chunks of rows go through :mod:`evomerge.merge.chunked`'s thread pool, the
kernels release the GIL. Compiled code is cached on disk, so only a machine's first merge pays
for the compilation (seconds).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from evomerge.merge import masks

_DENSE = masks.SCALE  # a keep bound that keeps every element: the source is not sparsified
_HAVE_NUMBA = importlib.util.find_spec("numba") is not None
SUPPORTED = (torch.bfloat16, torch.float32)  # the dtypes the kernels take


def enabled() -> bool:
    return _HAVE_NUMBA and os.environ.get("EVOMERGE_FUSED", "1") != "0"


def usable(
    tensors: Sequence[torch.Tensor], base: torch.Tensor | None, out_dtype: torch.dtype
) -> bool:
    """Whether the fused kernels take this merge: CPU, one input dtype among bf16/f32, an
    output among them, contiguous inputs."""
    if not enabled() or out_dtype not in SUPPORTED:
        return False
    inputs = [*tensors, *([base] if base is not None else [])]
    dtype = inputs[0].dtype
    return dtype in SUPPORTED and all(
        t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() for t in inputs
    )


def _flat(t: torch.Tensor) -> np.ndarray:
    """A zero-copy numpy view: bf16 as its uint16 bit patterns."""
    t = t.reshape(-1)
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


@dataclass(frozen=True)
class GtaSpec:
    """Task arithmetic / DARE resolved for one tensor. The L1 rescale multiplies the weights
    in :func:`merge_gta`, once its first pass has the norms."""

    weights: tuple[float, ...]
    bounds: tuple[int, ...]  # keep when draw < bound (unsigned 16-bit draws); _DENSE: all
    seeds: tuple[int, ...]
    consensus: bool
    lam: float
    normalize: bool
    rescale: bool
    eps: float

    @property
    def sparse(self) -> bool:
        return any(b < _DENSE for b in self.bounds)


Runner = Callable[[Callable[[int], Any], range], list[Any]]


def merge_gta(
    spec: GtaSpec,
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor,
    out: torch.Tensor,
    rows: int,
    step: int,
    scale: float,
    run: Runner,
) -> torch.Tensor:
    """Merge into ``out`` (its dtype); returns a 0-dim check that is finite only if every
    output element is (when it is not, the caller checks exactly)."""
    k, srcs, per_row, bf16 = _inputs(tensors, rows)
    b = _flat(base)
    offs = np.array([masks.seed_offset(s) & 0xFFFFFFFF for s in spec.seeds], dtype=np.uint64)
    bounds = np.array(spec.bounds, dtype=np.uint64)
    starts = range(0, rows, step)
    coefs = np.array(spec.weights, dtype=np.float64)
    if spec.rescale and spec.sparse:
        sums = np.zeros((2 * len(srcs), rows), dtype=np.float64)

        def stats(r0: int) -> None:
            k.gta_stats(srcs, b, sums, r0, min(rows, r0 + step), per_row, bf16, bounds, offs)

        run(stats, starts)
        totals = sums.sum(axis=1)
        for i, bound in enumerate(spec.bounds):
            before, after = totals[2 * i], totals[2 * i + 1]
            if bound < _DENSE and before >= spec.eps and after >= spec.eps:
                coefs[i] *= before / after
    post = spec.lam * (0.5 if spec.consensus else 1.0)
    div = 1.0
    if spec.normalize and not spec.consensus:
        w = float(sum(spec.weights))
        div = w if abs(w) >= 1e-8 else 1.0
    o = _flat(out)
    out_bf16 = out.dtype == torch.bfloat16
    c32 = coefs.astype(np.float32)

    def apply(r0: int) -> float:
        lo, hi = r0 * per_row, min(rows, r0 + step) * per_row
        return k.gta_apply(
            srcs, b, o, lo, hi, bf16, out_bf16, c32, bounds, offs, spec.consensus,
            np.float32(div), np.float32(post), np.float32(scale),
        )  # fmt: skip

    return _total(run(apply, starts))


def merge_linear(
    weights: Sequence[float],
    tensors: Sequence[torch.Tensor],
    out: torch.Tensor,
    rows: int,
    step: int,
    scale: float,
    run: Runner,
) -> torch.Tensor:
    """Σ wᵢθᵢ (weights already normalized) into ``out``; the check sum as :func:`merge_gta`'s."""
    k, srcs, per_row, bf16 = _inputs(tensors, rows)
    o = _flat(out)
    out_bf16 = out.dtype == torch.bfloat16
    w = np.array(weights, dtype=np.float32)

    def apply(r0: int) -> float:
        lo, hi = r0 * per_row, min(rows, r0 + step) * per_row
        return k.linear_apply(srcs, o, lo, hi, bf16, out_bf16, w, np.float32(scale))

    return _total(run(apply, range(0, rows, step)))


def _inputs(
    tensors: Sequence[torch.Tensor], rows: int
) -> tuple[Any, tuple[np.ndarray, ...], int, bool]:
    """The kernels, the sources as flat arrays, elements per row, whether they are bf16."""
    per_row = tensors[0].numel() // rows if rows else 0
    return _kernels(), tuple(_flat(t) for t in tensors), per_row, tensors[0].dtype == torch.bfloat16


def _total(sums: list[float]) -> torch.Tensor:
    """The kernels' check sums (see ``_check``) as the 0-dim tensor merge_chunked returns."""
    total = math.fsum(sums) if all(map(math.isfinite, sums)) else math.inf
    return torch.tensor(total, dtype=torch.float64)


def _kernels() -> Any:
    """The compiled kernels: numba is imported (and the kernels loaded from its disk cache, or
    compiled) on the first merge, not when evomerge is imported."""
    from evomerge.merge import _fused_kernels

    return _fused_kernels

"""Merging one tensor a block of rows at a time.

A merge that casts whole tensors to float32 and makes one full-size temporary per operation
runs at DRAM speed with a fresh allocation per step. Here a method's :class:`Kernel` computes
output rows ``[r0, r1)`` from the same rows of its inputs, so the float32 working set is a few
chunks that stay in cache, and the result is written once, straight into the output dtype.

Whole-tensor statistics (DARE/DELLA's L1 rescale) come from a first pass of per-row partial
sums; their totals are summed in a fixed order, so the result does not depend on the chunk
size: chunked and unchunked merges are equal bit for bit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch

from evomerge.merge.fused import usable
from evomerge.merge.workspace import CPU_CHUNK


@dataclass
class Params:
    """Resolved parameters for one tensor: per-source lists align with ``tensors``."""

    per_source: dict[str, list[float]]
    shared: dict[str, float | bool]
    seed: int = 0

    def __getitem__(self, key: str) -> float | bool:
        return self.shared[key]


T = TypeVar("T")

# On a GPU cache blocking does not pay; chunks only bound the float32 working set.
DEVICE_CHUNK = 1 << 24


@dataclass
class Chunk:
    """Rows of every input, as 2-D views (rows, cols) in the sources' dtype."""

    tensors: Sequence[torch.Tensor]
    base: torch.Tensor | None
    start: int  # flat (row-major) index of the chunk's first element: where masks draw
    work: torch.dtype  # float32, or float64 for float64 sources
    totals: torch.Tensor | None = None  # the kernel's statistics summed over all rows

    def to_work(self, t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if out is None:
            return t.to(self.work, copy=True)
        return out.copy_(t)


@dataclass(frozen=True)
class Kernel:
    """The row-chunk form of a method.

    ``apply`` returns the chunk's merged rows in the work dtype (it may return a scratch buffer
    the driver copies out at once). ``stats``, when set, is a first pass returning per-row
    float64 partial sums, shape (n_stats, rows); ``apply`` then sees their totals in
    ``chunk.totals``; ``wants_stats`` says whether these parameters need them.
    """

    apply: Callable[[Chunk, Params], torch.Tensor]
    stats: Callable[[Chunk, Params], torch.Tensor] | None = None
    wants_stats: Callable[[Params], bool] = lambda p: True
    # the whole merge in one fused kernel (:mod:`evomerge.merge.fused`), where it applies:
    # (tensors, base, p, out, rows, rows_per_chunk, scale, run) -> the finiteness check, or
    # None to leave these parameters to ``apply``
    fused: Callable[..., torch.Tensor | None] | None = None


def as_rows(shape: torch.Size) -> tuple[int, ...]:
    """The shape a tensor is chunked in: split along its first dimension; a vector or a
    scalar is one row (DELLA ranks a vector as one row, as mergekit does)."""
    if len(shape) >= 2:
        return tuple(shape)
    return (1, shape[0] if len(shape) == 1 else 1)


def chunk_rows(shape: tuple[int, ...], device: torch.device, chunk_elements: int | None) -> int:
    per_row = 1
    for s in shape[1:]:
        per_row *= s
    n = chunk_elements or (CPU_CHUNK if device.type == "cpu" else DEVICE_CHUNK)
    return max(1, n // max(per_row, 1))


def merge_chunked(
    kernel: Kernel,
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    p: Params,
    *,
    out_dtype: torch.dtype | None = None,
    scale: float = 1.0,
    rows_per_chunk: int | None = None,
    chunk_elements: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge into a new tensor of ``out_dtype`` (default: the work dtype).

    Also returns a 0-dim check taken from each output chunk while it is in cache (its sum; the
    fused kernels' scaled sum): when it is finite, every element is; when it is not, the caller
    checks exactly (a sum of finite values can overflow).
    """
    ref = base if base is not None else tensors[0]
    work = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    out = torch.empty(ref.shape, dtype=out_dtype or work, device=ref.device)
    shape = as_rows(ref.shape)
    rows, per_row = shape[0], (ref.numel() // shape[0] if shape[0] else 0)
    step = rows_per_chunk or chunk_rows(shape, ref.device, chunk_elements)
    views = [t.reshape(shape) for t in tensors]
    base_view = base.reshape(shape) if base is not None else None
    out_view = out.view(shape)

    def chunk(r0: int) -> Chunk:
        r1 = r0 + step
        b = base_view[r0:r1] if base_view is not None else None
        return Chunk([t[r0:r1] for t in views], b, r0 * per_row, work)

    starts = range(0, rows, step)
    run = _runner(ref.device, len(starts))
    if kernel.fused is not None and usable(tensors, base, out.dtype):
        check = kernel.fused(tensors, base, p, out, rows, step, scale, run)
        if check is not None:
            return out, check
    totals = None
    if kernel.stats is not None and kernel.wants_stats(p):
        parts = run(lambda r0: kernel.stats(chunk(r0), p), starts)  # type: ignore[misc]
        totals = torch.cat(parts, dim=1).sum(dim=1) if parts else None
    acc = torch.float32 if work == torch.float32 else work

    def merge_rows(r0: int) -> torch.Tensor:
        c = chunk(r0)
        c.totals = totals
        res = kernel.apply(c, p)
        if scale != 1.0:
            res = res.mul_(scale)
        dst = out_view[r0 : r0 + step]
        dst.copy_(res)
        return torch.sum(dst, dtype=acc)

    sums = run(merge_rows, starts)
    check = torch.stack(sums).sum(dtype=torch.float64) if sums else torch.zeros(())
    return out, check


_SERIAL = threading.local()


@contextmanager
def serial() -> Iterator[None]:
    """Merges in this thread run their chunks one after another, in this thread: for a
    background merge that must leave the other cores to the engine."""
    before = getattr(_SERIAL, "on", False)
    _SERIAL.on = True
    try:
        yield
    finally:
        _SERIAL.on = before


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:  # a forked child has none of its parent's threads
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _runner(device: torch.device, n: int) -> Callable[[Callable[[int], T], range], list[T]]:
    """Map over chunk starts, in order: on the CPU across torch's intra-op thread count, each
    worker single-threaded inside (chunks are too small to split further with profit)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or n < 2 or getattr(_SERIAL, "on", False):
        return lambda fn, starts: [fn(r0) for r0 in starts]
    pool = _pool(threads)
    return lambda fn, starts: list(pool.map(fn, starts))


def _pool(threads: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers != threads:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            # torch.set_num_threads in a worker sets that thread's OpenMP count, but also the
            # process default that threads read on their first op: set it in every worker, make
            # each read it at once (get_num_threads), then restore the default.
            barrier = threading.Barrier(threads + 1)

            def single() -> None:
                torch.set_num_threads(1)
                torch.get_num_threads()
                barrier.wait()

            pool = ThreadPoolExecutor(threads, thread_name_prefix="evomerge-merge")
            futures = [pool.submit(single) for _ in range(threads)]
            barrier.wait()
            for f in futures:
                f.result()
            torch.set_num_threads(threads)
            _POOL = pool
        return _POOL


def row_sums(x: torch.Tensor) -> torch.Tensor:
    """Per-row sums (over every dimension but the first), as float64 for :attr:`Kernel.stats`.
    A row's sum does not depend on which other rows share its chunk."""
    return x.reshape(x.shape[0], -1).sum(dim=1).to(torch.float64)

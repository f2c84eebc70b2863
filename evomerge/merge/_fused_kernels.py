"""The numba kernels of :mod:`evomerge.merge.fused` (imported on the first fused merge).

Module-level functions, so that numba caches their machine code on disk.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from evomerge.merge.masks import SCALE

BLOCK = 1024  # float32 elements of a row worked on at once: a few such buffers stay in L1
_MASK32 = np.uint64(0xFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B1)
_M1, _M2 = np.uint64(0x7FEB352D), np.uint64(0x846CA68B)
_ONE, _S15, _S16, _LOW16 = np.uint64(1), np.uint64(15), np.uint64(16), np.uint64(0xFFFF)
_DENSE_U = np.uint64(SCALE)
_ZERO = np.float32(0.0)
_U16 = np.uint32(16)
_K1024 = np.float32(1024.0)
_F1 = np.float32(1.0)

_jit = numba.njit(nogil=True, cache=True)
_inline = numba.njit(inline="always", cache=True)


@_inline
def _draw(idx: Any, off: Any) -> Any:
    """``masks.draws16 + 2**15`` of one element: lowbias32 of its pair, then its half."""
    x = ((idx >> _ONE) * _GOLDEN + off) & _MASK32
    x ^= x >> _S16
    x = (x * _M1) & _MASK32
    x ^= x >> _S15
    x = (x * _M2) & _MASK32
    x ^= x >> _S16
    return (x >> _S16) if (idx & _ONE) else (x & _LOW16)


@_inline
def _load(src: Any, lo: Any, n: Any, f: Any, u: Any, bf16: Any) -> None:
    sv = src[lo : lo + n]  # a slice: indexing it with the loop variable vectorizes
    if bf16:  # a bf16 is the high half of the float32 with the same value
        for j in range(n):
            u[j] = np.uint32(sv[j]) << _U16
    else:
        for j in range(n):
            f[j] = sv[j]


@_inline
def _store(dst: Any, lo: Any, n: Any, f: Any, u: Any, out_bf16: Any) -> None:
    """Round to nearest even and store (a NaN's payload may differ from torch's: the
    caller's finiteness check refuses it either way)."""
    dv = dst[lo : lo + n]
    if out_bf16:
        for j in range(n):
            x = u[j]
            dv[j] = np.uint16((x + np.uint32(0x7FFF) + ((x >> _U16) & np.uint32(1))) >> _U16)
    else:
        for j in range(n):
            dv[j] = f[j]


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "nsz"})
def _check(s: Any, n: Any) -> Any:
    """Σ 1024·sᵢ: finite unless an element is not, or would round to inf in bf16 (≥ 3.4e38),
    or is merely ≥ 3.3e35, or the sum overflows; the last two send the caller to its exact
    check. A vectorized reduction, not a pass of its own over the output."""
    z = _ZERO
    for j in range(n):
        z += s[j] * _K1024
    return z


@_jit
def _gta_apply(
    srcs, base, out, lo, hi, bf16, out_bf16, coefs, bounds, offs, consensus, div, post, scale
):  # type: ignore[no-untyped-def]
    f = np.empty(BLOCK, np.float32)
    fu = f.view(np.uint32)
    b = np.empty(BLOCK, np.float32)
    bu = b.view(np.uint32)
    s = np.empty(BLOCK, np.float32)
    su = s.view(np.uint32)
    a = np.empty(BLOCK, np.float32)
    total = 0.0
    for start in range(lo, hi, BLOCK):
        n = min(BLOCK, hi - start)
        _load(base, start, n, b, bu, bf16)
        for i in range(len(srcs)):
            _load(srcs[i], start, n, f, fu, bf16)
            c = coefs[i]
            bound, off = bounds[i], offs[i]
            if bound < _DENSE_U:
                for j in range(n):
                    v = (f[j] - b[j]) * c
                    f[j] = v if _draw(np.uint64(start + j), off) < bound else _ZERO
            else:
                for j in range(n):
                    f[j] = (f[j] - b[j]) * c
            if i == 0:
                for j in range(n):
                    s[j] = f[j]
                    a[j] = abs(f[j])
            else:
                for j in range(n):
                    s[j] += f[j]
                    a[j] += abs(f[j])
        if consensus:  # Σ of the deltas with the majority's sign: (s + copysign(Σ|d|, s)) / 2
            for j in range(n):
                s[j] = (s[j] + np.copysign(a[j], s[j])) * post
        else:
            for j in range(n):
                s[j] = s[j] / div * post
        for j in range(n):
            s[j] = (s[j] + b[j]) * scale
        total += _check(s, n)
        _store(out, start, n, s, su, out_bf16)
    return total


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "nsz"})
def _gta_stats(srcs, base, sums, r0, r1, per_row, bf16, bounds, offs):  # type: ignore[no-untyped-def]
    """Per row and source: Σ|δ| and Σ|δ|·kept. Blocks hold whole rows (or, for rows longer
    than a block, start where a row does), and reassociation lets the sums vectorize: a row is
    summed the same way whatever chunk holds it, so the sums do not depend on chunking."""
    f = np.empty(BLOCK, np.float32)
    fu = f.view(np.uint32)
    b = np.empty(BLOCK, np.float32)
    bu = b.view(np.uint32)
    keep = np.empty(BLOCK, np.float32)
    if per_row == 0:
        return
    rows_per_block = max(1, BLOCK // per_row)
    for rb in range(r0, r1, rows_per_block):
        re = min(r1, rb + rows_per_block)
        for part in range(0, per_row, BLOCK):  # one pass unless a row is longer than a block
            width = min(BLOCK, per_row - part)
            for r in range(rb, re):  # the block: these rows' [part, part + width)
                _load(
                    base,
                    r * per_row + part,
                    width,
                    b[(r - rb) * width :],
                    bu[(r - rb) * width :],
                    bf16,
                )
            for i in range(len(srcs)):
                bound, off = bounds[i], offs[i]
                for r in range(rb, re):
                    o = (r - rb) * width
                    fo, bo, ko = f[o : o + width], b[o : o + width], keep[o : o + width]
                    _load(srcs[i], r * per_row + part, width, fo, fu[o : o + width], bf16)
                    start = r * per_row + part
                    for j in range(width):  # |δ| in f, the kept |δ| in keep
                        m = abs(fo[j] - bo[j])
                        fo[j] = m
                        ko[j] = m if _draw(np.uint64(start + j), off) < bound else _ZERO
                    before = _ZERO
                    after = _ZERO
                    for j in range(width):
                        before += fo[j]
                        after += ko[j]
                    sums[2 * i, r] += before
                    sums[2 * i + 1, r] += after


@_jit
def _linear_apply(srcs, out, lo, hi, bf16, out_bf16, w, scale):  # type: ignore[no-untyped-def]
    f = np.empty(BLOCK, np.float32)
    fu = f.view(np.uint32)
    s = np.empty(BLOCK, np.float32)
    su = s.view(np.uint32)
    total = 0.0
    for start in range(lo, hi, BLOCK):
        n = min(BLOCK, hi - start)
        for i in range(len(srcs)):
            _load(srcs[i], start, n, f, fu, bf16)
            wi = w[i]
            if i == 0:
                for j in range(n):
                    s[j] = f[j] * wi
            else:
                for j in range(n):
                    s[j] += f[j] * wi
        for j in range(n):
            s[j] *= scale
        total += _check(s, n)
        _store(out, start, n, s, su, out_bf16)
    return total


gta_apply, gta_stats, linear_apply = _gta_apply, _gta_stats, _linear_apply

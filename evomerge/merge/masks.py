"""Seeded, device-independent random draws for DARE/DELLA masks, computed a chunk at a time.

A draw is a function of (seed, flat element index) only, so the same recipe masks the same
elements on the CPU, on any GPU, and whatever the chunking of the merge. Each element gets a
16-bit uniform: one 32-bit integer hash (lowbias32 of ``pair * 0x9E3779B1 + f(seed)``) per pair
of elements, its low half for the even element and its high half for the odd one. Half as many
hashes as elements, all in wrapping int32 arithmetic, which every device computes identically
(unlike ``torch.rand``, whose CPU and CUDA streams differ). A keep test ``u < density`` on
``u = k / 2**16`` is then one integer comparison of the halves, read as int16 in place.

The resolution is 2**-16: a density ``d`` keeps each element with probability
``ceil(d * 2**16) / 2**16`` (within 1.6e-5 of ``d``).
"""

from __future__ import annotations

import math

import torch

from evomerge.merge.workspace import scratch


def _i32(v: int) -> int:
    """``v`` mod 2**32 as a signed int32 value."""
    v &= 0xFFFFFFFF
    return v - 2**32 if v >= 2**31 else v


BITS = 16
SCALE = 1 << BITS  # draws are k / SCALE, k in [0, SCALE)
_GOLDEN = _i32(0x9E3779B1)
_M1 = _i32(0x7FEB352D)  # lowbias32's multipliers
_M2 = _i32(0x846CA68B)
_HALF_FLIP = _i32(0x80008000)  # k -> k - 2**15 in each signed 16-bit half


def seed_offset(seed: int) -> int:
    """The additive seed term of the hash input (int32)."""
    return _i32(seed * 2654435761 + 0x5BD1E995)


_RAMPS: dict[torch.device, torch.Tensor] = {}


def _ramp(n: int, device: torch.device) -> torch.Tensor:
    """``arange(n) * 0x9E3779B1`` in wrapping int32, cached per device (grown by doubling)."""
    r = _RAMPS.get(device)
    if r is None or r.numel() < n:
        size = max(n, 2 * r.numel() if r is not None else 1 << 16)
        r = torch.arange(size, dtype=torch.int32, device=device).mul_(_GOLDEN)
        _RAMPS[device] = r
    return r[:n]


def draws16(
    start: int, count: int, seed: int, device: torch.device, *, reuse: bool = False
) -> torch.Tensor:
    """The draws of elements ``start .. start+count-1`` as int16 ``k - 2**15`` (k in [0, 2**16)).

    int16 so that the keep test is one signed comparison, without a conversion pass. With
    ``reuse`` the result lives in this thread's scratch buffers (:func:`workspace.scratch`): valid
    until the thread's next call, for a kernel that converts it at once.
    """
    first, last = start >> 1, (start + count + 1) >> 1  # pairs covering the elements
    n = last - first
    if first + n > 2**31:
        raise ValueError(f"masks: {start + count} elements exceed the 2**32 the hash indexes")
    if reuse:
        x = scratch("hash", (n,), torch.int32, device)
        tmp = scratch("hash-tmp", (n,), torch.int32, device)
    else:
        x, tmp = torch.empty(n, dtype=torch.int32, device=device), None
    torch.add(_ramp(n, device), _i32(first * _GOLDEN + seed_offset(seed)), out=x)
    if tmp is None:
        tmp = torch.empty_like(x)
    torch.bitwise_right_shift(x, 16, out=tmp).bitwise_and_(0xFFFF)
    x.bitwise_xor_(tmp).mul_(_M1)
    torch.bitwise_right_shift(x, 15, out=tmp).bitwise_and_(0x1FFFF)
    x.bitwise_xor_(tmp).mul_(_M2)
    torch.bitwise_right_shift(x, 16, out=tmp).bitwise_and_(0xFFFF)
    x.bitwise_xor_(tmp)
    # little-endian halves (every torch device): element 2j is the low half of pair j. The
    # xor with 0x8000 on each half maps k to k - 2**15 in signed int16.
    x.bitwise_xor_(_HALF_FLIP)
    off = start - 2 * first
    return x.view(torch.int16)[off : off + count]


def keep_below(density: float) -> int:
    """The int16 bound b such that ``draw < b`` keeps an element with probability ≈ density."""
    return min(SCALE, math.ceil(density * SCALE)) - SCALE // 2


def keep_mask(shape: tuple[int, ...], start: int, seed: int, density: float, device: torch.device):
    """Bernoulli(density) keep mask of the elements ``start ..`` (row-major) of a chunk."""
    n = math.prod(shape)
    return draws16(start, n, seed, device).reshape(shape) < keep_below(density)


def uniform_at(shape: tuple[int, ...], start: int, seed: int, device: torch.device) -> torch.Tensor:
    """The draws of a chunk as float32 in [0, 1): exactly k / 2**16."""
    n = math.prod(shape)
    u = draws16(start, n, seed, device).to(torch.float32).add_(SCALE // 2).mul_(1.0 / SCALE)
    return u.reshape(shape)

"""Per-thread scratch buffers for the merge kernels.

A fresh allocation of a chunk's size is fresh pages, and faulting them in costs more than the
arithmetic done on them; a kernel's temporaries are therefore this thread's buffers, reused
from chunk to chunk under a name.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence

import torch

# float32 elements per chunk on the CPU: a chunk's few float32 buffers stay in cache.
CPU_CHUNK = int(os.environ.get("EVOMERGE_CHUNK_ELEMENTS", str(1 << 18)))

_LOCAL = threading.local()


def scratch(
    name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """This thread's buffer ``name`` viewed as ``shape``; its content is whatever its last user
    left. Only on the CPU (a GPU's caching allocator already reuses memory) and for requests of
    a chunk's size (a larger one is a plain allocation, not kept)."""
    n = math.prod(shape)
    if device.type != "cpu" or n > 4 * CPU_CHUNK:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    bufs: dict[tuple[str, torch.dtype], torch.Tensor] = _LOCAL.__dict__.setdefault("bufs", {})
    buf = bufs.get((name, dtype))
    if buf is None or buf.numel() < n:
        buf = bufs[(name, dtype)] = torch.empty(max(n, CPU_CHUNK), dtype=dtype)
    return buf[:n].view(tuple(shape))

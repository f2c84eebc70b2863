"""One table of dtypes: names users write, safetensors' header codes, and their sizes.

Sizes come from ``torch.dtype.itemsize`` rather than a hand-kept list, so a new dtype (FP8,
int16…) is one line here and every size computation (shard sizing, RAM checks) follows.
"""

from __future__ import annotations

import torch

#: names a recipe or an engine option may use
BY_NAME: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}

#: safetensors header codes (``safe_open(...).get_slice(k).get_dtype()``)
BY_SAFETENSORS: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def to_torch(name: str) -> torch.dtype:
    """A dtype from a user name (``bfloat16``), a safetensors code (``BF16``) or ``torch.x``."""
    key = name.strip()
    if key.startswith("torch."):
        key = key[len("torch.") :]
    if key in BY_NAME:
        return BY_NAME[key]
    if key.upper() in BY_SAFETENSORS:
        return BY_SAFETENSORS[key.upper()]
    raise KeyError(f"unknown dtype {name!r}; known: {sorted(BY_NAME)}")


def itemsize(dtype: str | torch.dtype) -> int:
    """Bytes per element."""
    return (dtype if isinstance(dtype, torch.dtype) else to_torch(dtype)).itemsize

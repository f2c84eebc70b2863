"""NearSwap (mergekit's ``nearswap``): take the other model's value where it is already close to
the base, keep the base's where they differ by more than ``t``.

Per element, with a the base and b the other model: w = clamp(t / max(|a - b|, 1e-6), 0, 1),
result = w·b + (1 - w)·a. This module is also the worked example in CONTRIBUTING.md of adding a
merge method: one file, and its module name in ``methods._BUILTIN_MODULES``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evomerge.merge.methods import Param, Params, register


@register(
    "nearswap",
    params=(Param("t", None, low=0.0),),
    needs_base=True,
    min_models=1,
    max_models=1,
)
def nearswap(tensors: Sequence[torch.Tensor], base: torch.Tensor | None, p: Params) -> torch.Tensor:
    assert base is not None  # needs_base: the materializer passes it
    other, t = tensors[0], float(p.shared["t"])
    weight = (t / (base - other).abs().clamp(min=1e-6)).clamp(min=0.0, max=1.0)
    return torch.lerp(base, other, weight)

"""Method parameters for tests that call merge kernels directly: a method's defaults, with
per-source values given as one value for every source or as a list."""

from __future__ import annotations

from evomerge.merge.methods import Params, get_method


def params(name: str, n: int, seed: int = 0, **kw: object) -> Params:
    per_source: dict[str, list[float]] = {}
    shared: dict[str, float | bool] = {}
    for p in get_method(name).params:
        v = kw.get(p.name, p.default)
        if p.per_source:
            per_source[p.name] = list(v) if isinstance(v, list | tuple) else [v] * n  # type: ignore[arg-type]
        else:
            shared[p.name] = v  # type: ignore[assignment]
    return Params(per_source, shared, seed)

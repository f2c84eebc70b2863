"""The merge-method registry: what a method declares (:class:`Param`, :class:`Method`), how it
registers (:func:`register`), and how a name is found (:func:`get_method`: evomerge's own modules
first, then the ``evomerge.methods`` entry points of installed plugins)."""

from __future__ import annotations

import importlib
import importlib.metadata
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from evomerge.errors import RecipeError
from evomerge.merge.chunked import Kernel, Params


@dataclass(frozen=True)
class Param:
    """A method parameter. ``default=None`` means required; bounds are inclusive unless
    ``open_low`` (density lives in (0, 1])."""

    name: str
    default: float | bool | None
    per_source: bool = False
    low: float | None = None
    high: float | None = None
    open_low: bool = False

    @property
    def is_flag(self) -> bool:
        return isinstance(self.default, bool)

    def check(self, value: float, where: str) -> None:
        lo_bad = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        hi_bad = self.high is not None and value > self.high
        if lo_bad or hi_bad or not math.isfinite(value):
            lo = "(" if self.open_low else "["
            rng = f"{lo}{self.low if self.low is not None else '-inf'}, "
            rng += f"{self.high if self.high is not None else 'inf'}]"
            raise RecipeError(f"{where}: {self.name}={value} is outside {rng}")


MergeFn = Callable[[Sequence[torch.Tensor], torch.Tensor | None, Params], torch.Tensor]


@dataclass(frozen=True)
class Method:
    name: str
    fn: MergeFn
    params: tuple[Param, ...]
    needs_base: bool
    min_models: int = 1
    max_models: int | None = None
    random: bool = False
    negative_weights: bool = True
    # the row-chunk form of ``fn`` (see :mod:`evomerge.merge.chunked`), for methods that have one
    kernel: Kernel | None = None
    param_index: dict[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_index", {p.name: p for p in self.params})

    def __call__(
        self, tensors: Sequence[torch.Tensor], base: torch.Tensor | None, p: Params
    ) -> torch.Tensor:
        return self.fn(tensors, base, p)


METHODS: dict[str, Method] = {}


def register(
    name: str,
    *,
    params: tuple[Param, ...],
    needs_base: bool,
    min_models: int = 1,
    max_models: int | None = None,
    random: bool = False,
    negative_weights: bool = True,
    kernel: Kernel | None = None,
) -> Callable[[MergeFn], MergeFn]:
    def deco(fn: MergeFn) -> MergeFn:
        if name in METHODS:
            raise ValueError(f"merge method {name!r} registered twice")
        METHODS[name] = Method(
            name, fn, params, needs_base, min_models, max_models, random, negative_weights, kernel
        )
        return fn

    return deco


ENTRY_POINT_GROUP = "evomerge.methods"

# The modules that register evomerge's own methods, imported on the first lookup: a new method
# in a module of its own is that module, plus one line here.
_BUILTIN_MODULES = ("evomerge.merge.methods", "evomerge.merge.nearswap")


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def builtin_methods() -> list[str]:
    """The names of evomerge's own merge methods (plugins' are found on lookup)."""
    _load_builtins()
    return sorted(n for n, m in METHODS.items() if m.fn.__module__.startswith("evomerge."))


def get_method(name: str) -> Method:
    if name not in METHODS:
        _load_builtins()
    method = METHODS.get(name) or _from_entry_point(name)
    if method is None:
        known = sorted({*METHODS, *(ep.name for ep in _entry_points())})
        raise RecipeError(f"method: unknown merge method {name!r}; known: {known}")
    return method


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _from_entry_point(name: str) -> Method | None:
    """Import the installed plugin that provides method ``name``, if any."""
    for ep in _entry_points():
        if ep.name != name:
            continue
        where = f"merge method {name!r} (entry point {ep.value!r} of {ENTRY_POINT_GROUP})"
        try:
            obj = ep.load()
        except Exception as e:
            raise RecipeError(f"method: {where} failed to load: {e}") from e
        if name not in METHODS and isinstance(obj, Method):
            METHODS[name] = obj if obj.name == name else replace(obj, name=name)
        if name not in METHODS:
            raise RecipeError(f"method: {where} registered no method of that name")
        return METHODS[name]
    return None

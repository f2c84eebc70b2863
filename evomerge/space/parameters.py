"""``kind: parameters`` — per-layer merge coefficients (parameter space): one gene per searched
parameter × source (for per-model parameters) × layer group × module kind."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from evomerge.errors import RecipeError
from evomerge.genes import Gene
from evomerge.merge.methods import get_method
from evomerge.recipe import (
    ByModule,
    GlobalValue,
    Gradient,
    ParamSpec,
    PerLayer,
    Recipe,
    Slot,
    at_layer,
    select,
)
from evomerge.space import curves
from evomerge.space.base import Bound, SearchSpace, SpaceError, SpaceSpec, register_kind


class ParametersSpec(SpaceSpec):
    kind: Literal["parameters"] = "parameters"
    method: str
    models: list[str] | None = None  # default: every source but the base
    genes: dict[str, Bound]
    fixed: dict[str, GlobalValue] = Field(default_factory=dict)
    granularity: Annotated[int, Field(ge=1)] = 1  # layers per group
    split: list[Literal["attention", "mlp"]] = Field(default_factory=list)
    smoothing: bool = False  # interpolate across groups (a mergekit gradient) instead of steps
    # per-layer values as a piecewise-linear curve over depth with this many control points
    # (space/curves.py): a handful of genes per coefficient however deep the model
    curve: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _curve_alone(self) -> ParametersSpec:
        if self.curve is not None and (self.granularity != 1 or self.smoothing):
            raise ValueError("curve: replaces granularity and smoothing; set only one of them")
        return self


@register_kind("parameters", ParametersSpec)
class ParametersSpace(SearchSpace):
    spec: ParametersSpec

    def __init__(self, spec: ParametersSpec, **kw: Any) -> None:
        super().__init__(spec, **kw)
        self.params = ParamGenes.of(
            self, spec, spec.granularity, spec.split, spec.smoothing, curve=spec.curve
        )
        self._set_genes(self.params.genes)

    def decode(self, genome: np.ndarray) -> Recipe:
        (x,) = self._genome(genome)
        return self.params.recipe(self, self.params.values(x))

    def encode(self, recipe: Recipe) -> np.ndarray:
        return self.params.encode(recipe)


def _group_label(g: int, gran: int, n_layers: int) -> str:
    lo, hi = g * gran, min(n_layers, (g + 1) * gran) - 1
    return f"L{lo}" if lo == hi else f"L{lo}-{hi}"


Values = dict[tuple[str, str | None, str | None], list[float]]  # (param, model, kind) → per group


class ParamGenes:
    """Per-layer coefficients of one method: genes per parameter × model × group × kind; the
    parameters, layers and combined kinds use it."""

    @classmethod
    def of(
        cls,
        space: SearchSpace,
        spec: Any,  # a spec with method, models, genes and fixed
        granularity: int,
        split: Sequence[str],
        smoothing: bool,
        curve: int | None = None,
    ) -> ParamGenes:
        models = space._models(spec.models, needs_base=get_method(spec.method).needs_base)
        return cls(spec, models, space.num_layers, granularity, split, smoothing, curve)

    def __init__(
        self,
        spec: Any,
        models: list[str],
        n_layers: int,
        granularity: int,
        split: Sequence[str],
        smoothing: bool,
        curve: int | None = None,
    ) -> None:
        self.method = get_method(spec.method)
        self.fixed: dict[str, GlobalValue] = dict(spec.fixed)
        self.models, self.n_layers, self.gran = models, n_layers, granularity
        self.kinds: list[str | None] = [*split, "default"] if split else [None]
        self.smoothing = smoothing
        self.curve = curve  # control points per coefficient (then "groups" are those points)
        self.n_groups = curve if curve else math.ceil(n_layers / granularity)
        self.bounds: dict[str, Bound] = dict(spec.genes)
        params = self.method.param_index
        for name, bound in self.bounds.items():
            p = params.get(name)
            if p is None:
                raise SpaceError(
                    f"genes.{name}: not a parameter of {self.method.name!r} (known: "
                    f"{sorted(params)})"
                )
            if p.is_flag:
                raise SpaceError(f"genes.{name}: a flag, not a number; set it under `fixed:`")
            for v in (bound.low, bound.high):
                try:
                    p.check(v, f"genes.{name}")
                except RecipeError as e:
                    raise SpaceError(str(e)) from None
        for name in spec.fixed:
            if name not in params:
                raise SpaceError(f"fixed.{name}: not a parameter of {self.method.name!r}")
            if name in self.bounds:
                raise SpaceError(f"fixed.{name}: also a searched gene; choose one")
        self.keys: list[tuple[str, str | None, int, str | None]] = []  # param, model, group, kind
        for name in self.bounds:
            for owner in self._owners(name):
                for g in range(self.n_groups):
                    for kind in self.kinds:
                        self.keys.append((name, owner, g, kind))

    def _owners(self, name: str) -> list[str | None]:
        return list(self.models) if self.method.param_index[name].per_source else [None]

    @property
    def genes(self) -> list[Gene]:
        out = []
        for name, owner, g, kind in self.keys:
            label = f"c{g}" if self.curve else _group_label(g, self.gran, self.n_layers)
            parts = [owner, name, label, kind]
            out.append(Gene(".".join(p for p in parts if p)))
        return out

    def values(self, x: np.ndarray) -> Values:
        """(param, model, kind) → one value per group (per layer for a curve)."""
        if self.curve:
            return {
                key: [self.bounds[key[0]].value(u) for u in units]
                for key, units in curves_units(self, x).items()
            }
        out: Values = {}
        for (name, owner, _g, kind), u in zip(self.keys, x, strict=True):
            out.setdefault((name, owner, kind), []).append(self.bounds[name].value(u))
        return out

    def recipe(
        self,
        space: SearchSpace,
        values: Mapping[Any, list[float]],
        routing: list[Slot] | None = None,
    ) -> Recipe:
        """The merge these values make (over ``routing``'s layers when given)."""
        per_model: dict[str, dict[str, ParamSpec]] = {m: {} for m in self.models}
        shared: dict[str, ParamSpec] = {}
        for name in self.bounds:
            for owner in self._owners(name):
                by_kind = {k: self._layer_spec(values[(name, owner, k)]) for k in self.kinds}
                spec = by_kind[None] if self.kinds == [None] else ByModule(**by_kind)  # type: ignore[arg-type]
                if owner is None:
                    shared[name] = spec
                else:
                    per_model[owner][name] = spec
        base = space.base if self.method.needs_base else None
        names = set(self.models) | ({base} if base else set())
        if routing:
            names |= {s.source for s in routing if s.source}
        sources = {
            m: {"path": space.sources[m], "parameters": per_model.get(m, {})} for m in sorted(names)
        }
        return space._recipe(
            method=self.method.name,
            base=base,
            sources=sources,
            parameters={**self.fixed, **shared},
            routing=routing,
        )

    def _layer_spec(self, groups: list[float]) -> ParamSpec:
        if self.curve:
            return groups[0] if self.n_layers == 1 else PerLayer(per_layer=groups)
        if self.n_groups == 1:
            return groups[0]
        if self.smoothing:
            return Gradient(gradient=groups)
        return PerLayer(per_layer=[groups[layer // self.gran] for layer in range(self.n_layers)])

    def encode(self, recipe: Recipe) -> np.ndarray:
        out = np.empty(len(self.keys))
        for i, (name, owner, g, kind) in enumerate(self.keys):
            spec = self._spec_of(recipe, name, owner)
            if self.curve:  # the curve through the recipe's per-layer values
                layers = [self._read(spec, la, kind, layer=la) for la in range(self.n_layers)]
                point = curves.sample(np.asarray(layers), self.curve)[g]
                out[i] = self.bounds[name].unit(float(point))
            else:
                out[i] = self.bounds[name].unit(self._read(spec, g, kind))
        return out

    def _spec_of(self, recipe: Recipe, name: str, owner: str | None) -> ParamSpec:
        if owner is None:
            spec = recipe.parameters.get(name)
        else:
            src = recipe.sources.get(owner)
            if src is None:
                raise SpaceError(f"recipe has no source {owner!r} that the space searches")
            spec = src.parameters.get(name, recipe.parameters.get(name))
        if spec is None or isinstance(spec, bool):
            raise SpaceError(f"recipe gives no value for {name!r} of {owner or 'the merge'}")
        return spec

    def _read(self, spec: ParamSpec, g: int, kind: str | None, layer: int | None = None) -> float:
        try:
            values = select(spec, tensor="", kind=kind or "default")
        except RecipeError as e:
            raise SpaceError(f"recipe: {e}") from None
        if layer is not None:
            return at_layer(values, layer, self.n_layers)
        if isinstance(values, Gradient) and len(values.gradient) == self.n_groups:
            return float(values.gradient[g])
        layer = g * self.gran
        if self.smoothing and self.n_groups > 1:
            layer = round(g * (self.n_layers - 1) / (self.n_groups - 1))
        return at_layer(values, layer, self.n_layers)


def curves_units(params: ParamGenes, x: np.ndarray) -> dict[Any, np.ndarray]:
    """(param, model, kind) → the unit value of each layer a curve's control points make."""
    ctrl: dict[Any, list[float]] = {}
    for (name, owner, _g, kind), u in zip(params.keys, x, strict=True):
        ctrl.setdefault((name, owner, kind), []).append(float(u))
    return {key: curves.expand(np.asarray(c), params.n_layers) for key, c in ctrl.items()}

"""``kind: parameters`` — per-layer merge coefficients (parameter space): one gene per searched
parameter × source (for per-model parameters) × layer group × module kind."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from evomerge.errors import RecipeError
from evomerge.genes import Gene
from evomerge.merge.methods import Method, get_method
from evomerge.recipe import (
    ByModule,
    GlobalValue,
    Gradient,
    LayerMethod,
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
    method: str | None = None  # required unless `methods` is given
    # a categorical `method` gene per layer group among these (see `MethodGenes`)
    methods: Annotated[list[str], Field(min_length=2)] | None = None
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
            self,
            spec,
            spec.granularity,
            spec.split,
            spec.smoothing,
            allow_methods=True,
            curve=spec.curve,
        )
        self._set_genes(self.params.genes)

    def decode(self, genome: np.ndarray) -> Recipe:
        (x,) = self._genome(genome)
        return self.params.recipe(self, self.params.values(x))

    def encode(self, recipe: Recipe) -> np.ndarray:
        return self.params.encode(recipe)

    def uniform(self) -> Recipe:
        return self.params.uniform(self)


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
        *,
        allow_methods: bool = False,
        curve: int | None = None,
    ) -> ParamGenes:
        methods = getattr(spec, "methods", None)
        if methods is not None:
            if not allow_methods:
                raise SpaceError("methods: a method gene is offered by `kind: parameters` only")
            if curve:
                raise SpaceError("methods: not with curve (a group's method is one per group)")
            return MethodGenes.of(space, spec, granularity, split, smoothing)
        if spec.method is None:
            raise SpaceError("method: required (or give `methods: [...]` to search it)")
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
        self.method = self._primary(spec)
        self.fixed: dict[str, GlobalValue] = dict(spec.fixed)
        self.models, self.n_layers, self.gran = models, n_layers, granularity
        self.kinds: list[str | None] = [*split, "default"] if split else [None]
        self.smoothing = smoothing
        self.curve = curve  # control points per coefficient (then "groups" are those points)
        self.n_groups = curve if curve else math.ceil(n_layers / granularity)
        self.bounds: dict[str, Bound] = dict(spec.genes)
        params = self._param_index()
        for name, bound in self.bounds.items():
            p = params.get(name)
            if p is None:
                raise SpaceError(
                    f"genes.{name}: not a parameter of {self._method_names()} (known: "
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
                raise SpaceError(f"fixed.{name}: not a parameter of {self._method_names()}")
            if name in self.bounds:
                raise SpaceError(f"fixed.{name}: also a searched gene; choose one")
        self.keys: list[tuple[str, str | None, int, str | None]] = []  # param, model, group, kind
        for name in self.bounds:
            for owner in self._owners(name):
                for g in range(self.n_groups):
                    for kind in self.kinds:
                        self.keys.append((name, owner, g, kind))

    def _primary(self, spec: Any) -> Method:
        return get_method(spec.method)

    def _param_index(self) -> dict[str, Any]:
        return dict(self.method.param_index)

    def _method_names(self) -> str:
        return repr(self.method.name)

    def _owners(self, name: str) -> list[str | None]:
        return list(self.models) if self._param_index()[name].per_source else [None]

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
        top, known, layer_methods = self._layout(values)
        per_model, shared = self._specs(values, [n for n in self.bounds if n in known])
        base = space.base if self.method.needs_base else None
        extra = {"layer_methods": layer_methods} if layer_methods else {}
        return space._recipe(
            method=top,
            base=base,
            sources=self._sources(space, base, per_model, routing),
            parameters={**{k: v for k, v in self.fixed.items() if k in known}, **shared},
            routing=routing,
            **extra,
        )

    def _layout(self, values: Mapping[Any, list[float]]) -> tuple[str, set[str], list[LayerMethod]]:
        """The recipe's method, the parameters it takes, and its per-layer methods (none: one
        method throughout)."""
        return self.method.name, {*self.bounds, *self.fixed}, []

    def uniform(self, space: SearchSpace) -> Recipe:
        """Every coefficient alike for every model and layer: the method's default where the
        bounds allow it, else the bounds' middle."""
        values: Values = {}
        for name, owner, _g, kind in self.keys:
            b, d = self.bounds[name], self.method.param_index[name].default
            v = float(d) if isinstance(d, int | float) and b.low <= d <= b.high else b.value(0.5)
            values.setdefault((name, owner, kind), []).append(v)
        return self.recipe(space, values)

    def _specs(
        self, values: Mapping[Any, list[float]], names: Iterable[str]
    ) -> tuple[dict[str, dict[str, ParamSpec]], dict[str, ParamSpec]]:
        """The coefficients ``names`` as recipe parameters: per model, and shared."""
        per_model: dict[str, dict[str, ParamSpec]] = {m: {} for m in self.models}
        shared: dict[str, ParamSpec] = {}
        for name in names:
            for owner in self._owners(name):
                by_kind = {k: self._layer_spec(values[(name, owner, k)]) for k in self.kinds}
                spec = by_kind[None] if self.kinds == [None] else ByModule(**by_kind)  # type: ignore[arg-type]
                if owner is None:
                    shared[name] = spec
                else:
                    per_model[owner][name] = spec
        return per_model, shared

    def _sources(
        self,
        space: SearchSpace,
        base: str | None,
        per_model: Mapping[str, dict[str, ParamSpec]],
        routing: list[Slot] | None,
    ) -> dict[str, dict[str, Any]]:
        """The recipe's sources: the merged models, the base, and any model a slot routes."""
        names = set(self.models) | ({base} if base else set())
        if routing:
            names |= {s.source for s in routing if s.source}
        return {
            m: {"path": space.sources[m], "parameters": per_model.get(m, {})} for m in sorted(names)
        }

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
            out[i] = self._encode_one(recipe, name, owner, g, kind)
        return out

    def _encode_one(
        self, recipe: Recipe, name: str, owner: str | None, g: int, kind: str | None
    ) -> float:
        spec = self._spec_of(recipe, name, owner)
        if self.curve:  # the curve through the recipe's per-layer values
            layers = [self._read(spec, la, kind, layer=la) for la in range(self.n_layers)]
            point = curves.sample(np.asarray(layers), self.curve)[g]
            return self.bounds[name].unit(float(point))
        return self.bounds[name].unit(self._read(spec, g, kind))

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


class MethodGenes(ParamGenes):
    """``methods: [ties, dare_ties, slerp]``: besides the coefficients, a categorical ``method``
    gene per layer group, and, when a one-model method (slerp) is among them and the space has
    several models, a ``partner`` gene per group: the model that group slerps the base toward
    (mergekit's slerp merges the base with exactly one other model).

    A coefficient the group's method does not read (``t`` in a TIES group, ``density`` in a SLERP
    group) is an inactive gene: decoding writes the middle of its bounds in its place, and leaves
    out a parameter no chosen method reads, so genomes that differ only in inactive genes make
    one recipe and one hash. Embeddings, the final norm and the head follow layer 0's method, as
    they follow its parameter values.
    """

    @classmethod
    def of(  # type: ignore[override]
        cls,
        space: SearchSpace,
        spec: Any,
        granularity: int,
        split: Sequence[str],
        smoothing: bool,
    ) -> MethodGenes:
        if spec.method is not None and spec.method not in spec.methods:
            raise SpaceError(
                f"method: {spec.method!r} is not among methods {spec.methods}; a space with "
                "`methods` searches the method (a preset's `method` may stay if it is one of them)"
            )
        if len(set(spec.methods)) != len(spec.methods):
            raise SpaceError(f"methods: {spec.methods} names a method twice")
        if smoothing:
            raise SpaceError(
                "methods: with smoothing, a group's inactive coefficients would shape its "
                "neighbours' interpolated values; use steps (smoothing: false)"
            )
        found = [get_method(m) for m in spec.methods]
        if len({m.needs_base for m in found}) != 1:
            raise SpaceError(
                f"methods: {spec.methods} mix methods that merge onto a base with methods that "
                "do not; they would merge different models"
            )
        models = space._models(spec.models, needs_base=found[0].needs_base)
        return cls(spec, models, space.num_layers, granularity, split, smoothing)

    def __init__(self, spec: Any, models: list[str], *args: Any) -> None:
        self.methods = [get_method(m) for m in spec.methods]
        super().__init__(spec, models, *args)
        for m in self.methods:
            for p in m.params:
                if p.default is None and p.name not in self.bounds and p.name not in self.fixed:
                    raise SpaceError(
                        f"methods: {m.name!r} requires {p.name!r}; search it under `genes:` or "
                        "set it under `fixed:`"
                    )
            if m.min_models > len(models):
                raise SpaceError(
                    f"methods: {m.name!r} needs at least {m.min_models} models, the space has "
                    f"{models}"
                )
        # the models a one-model method may pair with the base; empty: nothing to choose
        single = any(m.max_models == 1 for m in self.methods)
        self.partners: list[str] = list(models) if single and len(models) > 1 else []

    def _primary(self, spec: Any) -> Method:
        return get_method(spec.methods[0])

    def _param_index(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in self.methods:
            for name, p in m.param_index.items():
                if name in out and out[name].per_source != p.per_source:
                    raise SpaceError(
                        f"methods: parameter {name!r} is per model in one method and shared "
                        "in another"
                    )
                out.setdefault(name, p)
        return out

    def _method_names(self) -> str:
        return "any of " + ", ".join(repr(m.name) for m in self.methods)

    @property
    def genes(self) -> list[Gene]:
        labels = [_group_label(g, self.gran, self.n_layers) for g in range(self.n_groups)]
        names = "|".join(m.name for m in self.methods)
        out = super().genes + [
            Gene(f"{la}.method[{names}]", choices=len(self.methods)) for la in labels
        ]
        if self.partners:
            who = "|".join(self.partners)
            out += [Gene(f"{la}.partner[{who}]", choices=len(self.partners)) for la in labels]
        return out

    def values(self, x: np.ndarray) -> Values:
        n, g = len(self.keys), self.n_groups
        chosen = [min(round(u), len(self.methods) - 1) for u in x[n : n + g]]
        partner = [round(u) for u in x[n + g : n + 2 * g]] if self.partners else []
        out: Values = {}
        for (name, owner, grp, kind), u in zip(self.keys, x[:n], strict=True):
            active = name in self.methods[chosen[grp]].param_index
            out.setdefault((name, owner, kind), []).append(
                self.bounds[name].value(u if active else 0.5)
            )
        out[("@method", None, None)] = [float(c) for c in chosen]
        out[("@partner", None, None)] = [float(p) for p in partner]
        return out

    def uniform(self, space: SearchSpace) -> Recipe:
        """Every group the first method, its parameters as :meth:`ParamGenes.uniform` sets them
        (the other methods' parameters are inactive genes: the middle)."""
        first = self.methods[0].param_index
        x = np.zeros(len(self.genes))
        for i, (name, _owner, _g, _kind) in enumerate(self.keys):
            b, d = self.bounds[name], getattr(first.get(name), "default", None)
            x[i] = b.unit(float(d)) if isinstance(d, int | float) and b.low <= d <= b.high else 0.5
        return self.recipe(space, self.values(x))

    def _group_method(self, values: Mapping[Any, list[float]], g: int) -> tuple[str, list[str]]:
        m = self.methods[int(values[("@method", None, None)][g])]
        partners = values[("@partner", None, None)]
        if m.max_models == 1 and self.partners:
            return m.name, [self.partners[int(partners[g])]]
        return m.name, []

    def _layout(self, values: Mapping[Any, list[float]]) -> tuple[str, set[str], list[LayerMethod]]:
        groups = [self._group_method(values, g) for g in range(self.n_groups)]
        used = {name for name, _ in groups}
        known = {p for m in self.methods if m.name in used for p in m.param_index}
        top = groups[0][0]
        entries: list[LayerMethod] = []
        for g, (name, models) in enumerate(groups):
            if (name, models) == (top, []):
                continue
            lo, hi = g * self.gran, min(self.n_layers, (g + 1) * self.gran)
            last = entries[-1] if entries else None
            if last and last.layers[1] == lo and (last.method, last.models) == (name, models):
                entries[-1] = last.model_copy(update={"layers": [last.layers[0], hi]})
            else:
                entries.append(LayerMethod(layers=[lo, hi], method=name, models=models or None))
        return top, known, entries

    def encode(self, recipe: Recipe) -> np.ndarray:
        chosen, partner = [], []
        for g in range(self.n_groups):
            lm = recipe.method_at(g * self.gran)
            name, models = (lm.method, lm.models or []) if lm else (recipe.method, [])
            if name not in self._names():
                raise SpaceError(
                    f"recipe merges layer {g * self.gran} by {name!r}, not one of "
                    f"the space's methods {self._names()}"
                )
            idx = self._names().index(name)
            chosen.append(float(idx))
            if self.partners:  # inactive outside one-model groups: its first choice
                one = self.methods[idx].max_models == 1 and len(models) == 1
                p = models[0] if one else self.partners[0]
                if p not in self.partners:
                    raise SpaceError(
                        f"recipe pairs layer {g * self.gran} with {p!r}, not a model of the space"
                    )
                partner.append(float(self.partners.index(p)))
        out = np.empty(len(self.keys))
        for i, (name, owner, g, kind) in enumerate(self.keys):
            if name not in self.methods[int(chosen[g])].param_index:
                out[i] = 0.5
                continue
            out[i] = self._encode_one(recipe, name, owner, g, kind)
        return np.concatenate([out, chosen, partner])

    def _names(self) -> list[str]:
        return [m.name for m in self.methods]


def curves_units(params: ParamGenes, x: np.ndarray) -> dict[Any, np.ndarray]:
    """(param, model, kind) → the unit value of each layer a curve's control points make."""
    ctrl: dict[Any, list[float]] = {}
    for (name, owner, _g, kind), u in zip(params.keys, x, strict=True):
        ctrl.setdefault((name, owner, kind), []).append(float(u))
    return {key: curves.expand(np.asarray(c), params.n_layers) for key, c in ctrl.items()}

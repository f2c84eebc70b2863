"""Search spaces: declarative YAML (``search_spaces/*.yaml``) that turns a genome into a Recipe
and back.

A genome is a float vector, one entry per :class:`~evomerge.optimize.base.Gene`: real genes live
in [0, 1] and map linearly onto their parameter's bounds; integer genes pick among choices.
Four kinds:

- ``parameters`` — per-layer merge coefficients (parameter space): one gene per searched
  parameter × source (for per-model parameters) × layer group × module kind.
- ``routing`` — Sakana's data-flow space: T = (routed layers of all models) × repeats slots in a
  fixed order, each included or not, each with an input scale that only exists when included.
- ``layers`` — GPTailor's operations: per output layer, remove it, take it from one model, or
  merge it with searched coefficients.
- ``combined`` — routing over the models *and* a parameter-space merge of them.

Decoding is canonical: genes that a candidate does not use (the scale of an excluded slot, the
coefficients of a layer that is copied) do not change the recipe, so the archive's hash cache
recognises candidates that differ only there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evomerge.errors import EvomergeError, RecipeError
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

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


class SpaceError(EvomergeError, ValueError):
    """A search space is malformed or does not fit the sources."""


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Bound(_Spec):
    """A searched parameter's range; ``[low, high]`` is accepted as shorthand."""

    low: float
    high: float

    @model_validator(mode="before")
    @classmethod
    def _pair(cls, v: Any) -> Any:
        if isinstance(v, list | tuple) and len(v) == 2:
            return {"low": v[0], "high": v[1]}
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> Bound:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"bounds are empty: low {self.low} is not below high {self.high}")
        return self

    def value(self, u: float) -> float:
        return self.low + float(u) * (self.high - self.low)

    def unit(self, v: float) -> float:
        return min(1.0, max(0.0, (float(v) - self.low) / (self.high - self.low)))


class ParametersSpec(_Spec):
    kind: Literal["parameters"] = "parameters"
    description: str = ""
    method: str
    models: list[str] | None = None  # default: every source but the base
    genes: dict[str, Bound]
    fixed: dict[str, GlobalValue] = Field(default_factory=dict)
    granularity: Annotated[int, Field(ge=1)] = 1  # layers per group
    split: list[Literal["attention", "mlp"]] = Field(default_factory=list)
    smoothing: bool = False  # interpolate across groups (a mergekit gradient) instead of steps


class RoutingSpec(_Spec):
    kind: Literal["routing"] = "routing"
    description: str = ""
    models: list[str] | None = None  # whose layers are routed; default: every source but the base
    repeats: Annotated[int, Field(ge=1)] = 1
    order: Literal["layer_major", "source_major"] = "layer_major"
    scale: Bound | None = None  # per-slot input scale; None: no scale genes
    encoding: Literal["structured", "flat"] = "structured"
    embeddings_from: str | None = None  # non-layer tensors; default the base, else first model


class LayersSpec(_Spec):
    kind: Literal["layers"] = "layers"
    description: str = ""
    method: str = "linear"
    models: list[str] | None = None
    genes: dict[str, Bound] = Field(default_factory=lambda: {"weight": Bound(low=0.0, high=1.0)})
    fixed: dict[str, GlobalValue] = Field(default_factory=dict)
    allow_remove: bool = True
    allow_merge: bool = True


class CombinedSpec(_Spec):
    kind: Literal["combined"] = "combined"
    description: str = ""
    parameters: ParametersSpec
    routing: RoutingSpec


SpaceSpec = Annotated[
    ParametersSpec | RoutingSpec | LayersSpec | CombinedSpec, Field(discriminator="kind")
]


class _SpaceFile(_Spec):
    space: SpaceSpec


def available_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(
    ref: str | Path | Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> SpaceSpec:
    """A space by preset name (``search_spaces/NAME.yaml``), path, or inline mapping; top-level
    ``overrides`` (e.g. ``granularity: 2``, ``models: [math]``) replace the preset's keys."""
    origin = "inline space"
    if isinstance(ref, Mapping):
        data: Any = dict(ref)
    else:
        path = Path(ref)
        if not path.suffix:
            path = SPACES_DIR / f"{ref}.yaml"
            if not path.exists():
                raise SpaceError(f"unknown search space {str(ref)!r}; known: {available_spaces()}")
        if not path.exists():
            raise SpaceError(f"search space file {path} does not exist")
        origin = str(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise SpaceError(f"{path}: malformed YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpaceError(f"{origin}: a search space is a mapping with a `kind:` key")
    data = {**data, **dict(overrides or {})}
    try:
        return _SpaceFile.model_validate({"space": data}).space
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"][2:]) or "<top>"
        raise SpaceError(f"{origin}: {loc}: {err['msg']}") from None


# ---------------------------------------------------------------------------------------------
# gene blocks


def _group_label(g: int, gran: int, n_layers: int) -> str:
    lo, hi = g * gran, min(n_layers, (g + 1) * gran) - 1
    return f"L{lo}" if lo == hi else f"L{lo}-{hi}"


class _ParamGenes:
    """Per-layer coefficients of one method: genes per parameter × model × group × kind."""

    def __init__(
        self,
        spec: ParametersSpec | LayersSpec,
        models: list[str],
        n_layers: int,
        granularity: int,
        split: Sequence[str],
        smoothing: bool,
    ) -> None:
        self.method = get_method(spec.method)
        self.models, self.n_layers, self.gran = models, n_layers, granularity
        self.kinds: list[str | None] = [*split, "default"] if split else [None]
        self.smoothing = smoothing
        self.n_groups = math.ceil(n_layers / granularity)
        self.bounds = dict(spec.genes)
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
            owners: list[str | None] = list(models) if params[name].per_source else [None]
            for owner in owners:
                for g in range(self.n_groups):
                    for kind in self.kinds:
                        self.keys.append((name, owner, g, kind))

    @property
    def genes(self) -> list[Gene]:
        out = []
        for name, owner, g, kind in self.keys:
            parts = [owner, name, _group_label(g, self.gran, self.n_layers), kind]
            out.append(Gene(".".join(p for p in parts if p)))
        return out

    def values(self, x: np.ndarray) -> dict[tuple[str, str | None, str | None], list[float]]:
        """(param, model, kind) → one value per group."""
        out: dict[tuple[str, str | None, str | None], list[float]] = {}
        for (name, owner, _g, kind), u in zip(self.keys, x, strict=True):
            out.setdefault((name, owner, kind), []).append(self.bounds[name].value(u))
        return out

    def specs(
        self, values: Mapping[tuple[str, str | None, str | None], list[float]]
    ) -> tuple[dict[str, dict[str, ParamSpec]], dict[str, ParamSpec]]:
        per_model: dict[str, dict[str, ParamSpec]] = {m: {} for m in self.models}
        shared: dict[str, ParamSpec] = {}
        for name in self.bounds:
            owners: list[str | None] = (
                list(self.models) if self.method.param_index[name].per_source else [None]
            )
            for owner in owners:
                by_kind = {k: self._layer_spec(values[(name, owner, k)]) for k in self.kinds}
                spec = by_kind[None] if self.kinds == [None] else ByModule(**by_kind)  # type: ignore[arg-type]
                if owner is None:
                    shared[name] = spec
                else:
                    per_model[owner][name] = spec
        return per_model, shared

    def _layer_spec(self, groups: list[float]) -> ParamSpec:
        if self.n_groups == 1:
            return groups[0]
        if self.smoothing:
            return Gradient(gradient=groups)
        return PerLayer(per_layer=[groups[layer // self.gran] for layer in range(self.n_layers)])

    def encode(self, recipe: Recipe) -> np.ndarray:
        out = np.empty(len(self.keys))
        for i, (name, owner, g, kind) in enumerate(self.keys):
            if owner is None:
                spec = recipe.parameters.get(name)
            else:
                src = recipe.sources.get(owner)
                if src is None:
                    raise SpaceError(f"recipe has no source {owner!r} that the space searches")
                spec = src.parameters.get(name, recipe.parameters.get(name))
            if spec is None or isinstance(spec, bool):
                raise SpaceError(f"recipe gives no value for {name!r} of {owner or 'the merge'}")
            out[i] = self.bounds[name].unit(self._read(spec, g, kind))
        return out

    def _read(self, spec: ParamSpec, g: int, kind: str | None) -> float:
        try:
            values = select(spec, tensor="", kind=kind or "default")
        except RecipeError as e:
            raise SpaceError(f"recipe: {e}") from None
        if isinstance(values, Gradient) and len(values.gradient) == self.n_groups:
            return float(values.gradient[g])
        layer = g * self.gran
        if self.smoothing and self.n_groups > 1:
            layer = round(g * (self.n_layers - 1) / (self.n_groups - 1))
        return at_layer(values, layer, self.n_layers)


class _RouteGenes:
    """Sakana's slots: a fixed order of (model, layer) repeated; include + conditional scale."""

    def __init__(
        self, spec: RoutingSpec, candidates: list[str | None], n_layers: int, names: list[str]
    ) -> None:
        self.spec = spec
        if spec.order == "layer_major":
            one = [(c, la) for la in range(n_layers) for c in candidates]
        else:
            one = [(c, la) for c in candidates for la in range(n_layers)]
        self.slots = one * spec.repeats
        self.names = names  # display name per candidate

    @property
    def genes(self) -> list[Gene]:
        out = []
        for t, (c, la) in enumerate(self.slots):
            stem = f"slot{t:03d}.{self.names[self._ci(c)]}.L{la}"
            if self.spec.encoding == "structured":
                out.append(Gene(stem) if self.spec.scale else Gene(stem, choices=2))
            else:
                out.append(Gene(f"{stem}.on", choices=2))
                if self.spec.scale:
                    out.append(Gene(f"{stem}.scale"))
        return out

    def _ci(self, c: str | None) -> int:
        cands = list(dict.fromkeys(s for s, _ in self.slots))
        return cands.index(c)

    def decode(self, x: np.ndarray) -> list[Slot]:
        scale = self.spec.scale
        route: list[Slot] = []
        i = 0
        for c, la in self.slots:
            if self.spec.encoding == "structured":
                u = float(x[i])
                i += 1
                if scale is None:
                    on, s = u >= 0.5, 1.0
                else:  # one gene: [0, ½) excluded; [½, 1] included, its scale in that half
                    on, s = u >= 0.5, scale.value(min(1.0, max(0.0, 2 * u - 1)))
            else:
                on = float(x[i]) >= 0.5
                i += 1
                s = 1.0
                if scale is not None:
                    s = scale.value(float(x[i]))
                    i += 1
            if on:
                route.append(Slot(layer=la, source=c, scale=s))
        if not route:
            raise SpaceError("the genome includes no routing slot: the model would have no layers")
        return route

    def encode(self, route: Sequence[Slot]) -> np.ndarray:
        scale = self.spec.scale
        out: list[float] = []
        k = 0
        for c, la in self.slots:
            hit = k < len(route) and route[k].source == c and route[k].layer == la
            s = route[k].scale if hit else 1.0
            k += hit
            if self.spec.encoding == "structured":
                if scale is None:
                    out.append(1.0 if hit else 0.0)
                else:
                    out.append(0.5 + scale.unit(s) / 2 if hit else 0.25)
            else:
                out.append(1.0 if hit else 0.0)
                if scale is not None:
                    out.append(scale.unit(s) if hit else scale.unit(1.0))
        if k != len(route):
            raise SpaceError(
                f"routing slot {k} ({route[k].source}, layer {route[k].layer}) does not fit the "
                "space's slot order"
            )
        return np.asarray(out)


# ---------------------------------------------------------------------------------------------
# the bound space


class SearchSpace:
    """A space spec bound to concrete sources: genes, ``decode`` and ``encode``."""

    def __init__(
        self,
        spec: SpaceSpec,
        *,
        sources: Mapping[str, str],
        base: str | None,
        num_layers: int,
        seed: int = 0,
        dtype: str | None = None,
    ) -> None:
        if base is not None and base not in sources:
            raise SpaceError(f"base {base!r} is not one of the sources {sorted(sources)}")
        self.spec, self.sources, self.base = spec, dict(sources), base
        self.num_layers, self.seed, self.dtype = num_layers, seed, dtype
        self._params: _ParamGenes | None = None
        self._route: _RouteGenes | None = None
        self._ops: list[str | None] = []  # layers space: None = merge, "-" = remove
        if isinstance(spec, ParametersSpec | CombinedSpec):
            ps = spec.parameters if isinstance(spec, CombinedSpec) else spec
            models = self._models(ps.models, needs_base=get_method(ps.method).needs_base)
            self._params = _ParamGenes(
                ps, models, num_layers, ps.granularity, ps.split, ps.smoothing
            )
        if isinstance(spec, RoutingSpec | CombinedSpec):
            rs = spec.routing if isinstance(spec, CombinedSpec) else spec
            models = self._models(rs.models, needs_base=True)
            cands: list[str | None] = list(models)
            names = list(models)
            if isinstance(spec, CombinedSpec):
                cands.append(None)
                names.append("merged")
            elif rs.embeddings_from is not None and rs.embeddings_from not in sources:
                raise SpaceError(f"embeddings_from: {rs.embeddings_from!r} is not a source")
            self._route = _RouteGenes(rs, cands, num_layers, names)
        if isinstance(spec, LayersSpec):
            method = get_method(spec.method)
            models = self._models(spec.models, needs_base=method.needs_base)
            self._params = _ParamGenes(spec, models, num_layers, 1, [], False)
            self._ops = (
                (["-"] if spec.allow_remove else [])
                + list(models)
                + ([None] if spec.allow_merge else [])
            )
            if len(self._ops) < 2:
                raise SpaceError("layers space: needs at least two operations per layer")
        self.genes: list[Gene] = self._all_genes()
        names = [g.name for g in self.genes]
        if len(set(names)) != len(names):
            raise SpaceError("two genes share a name; rename the sources")

    def _models(self, wanted: list[str] | None, *, needs_base: bool) -> list[str]:
        if wanted is None:
            out = sorted(n for n in self.sources if not (needs_base and n == self.base))
        else:
            out = list(wanted)
            for m in out:
                if m not in self.sources:
                    raise SpaceError(
                        f"models: {m!r} is not one of the sources {sorted(self.sources)}"
                    )
        if not out:
            raise SpaceError("the space has no models to search over")
        return out

    def _all_genes(self) -> list[Gene]:
        genes: list[Gene] = []
        if self._ops:
            labels = ["remove" if o == "-" else "merge" if o is None else o for o in self._ops]
            genes += [
                Gene(f"L{la}.op[{'|'.join(labels)}]", choices=len(self._ops))
                for la in range(self.num_layers)
            ]
        if self._params is not None:
            genes += self._params.genes
        if self._route is not None:
            genes += self._route.genes
        return genes

    # -- genome ↔ recipe ---------------------------------------------------------------------
    def _split(self, genome: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.asarray(genome, dtype=float).reshape(-1)
        if x.shape[0] != len(self.genes):
            raise SpaceError(f"genome has {x.shape[0]} genes; the space has {len(self.genes)}")
        n_ops = self.num_layers if self._ops else 0
        n_par = len(self._params.keys) if self._params else 0
        return x[:n_ops], x[n_ops : n_ops + n_par], x[n_ops + n_par :]

    def decode(self, genome: np.ndarray) -> Recipe:
        ops_x, par_x, route_x = self._split(genome)
        spec = self.spec
        if isinstance(spec, RoutingSpec):
            assert self._route is not None
            route = self._route.decode(route_x)
            emb = spec.embeddings_from or (
                self.base if self.base is not None else self._route.names[0]
            )
            used = sorted({s.source for s in route if s.source} | {emb})
            return self._recipe(
                method="linear",
                base=None,
                sources={
                    m: {"path": self.sources[m], "parameters": {"weight": 1.0 if m == emb else 0.0}}
                    for m in used
                },
                parameters={"normalize": True},
                routing=route,
            )
        assert self._params is not None
        ps = spec.parameters if isinstance(spec, CombinedSpec) else spec
        values = self._params.values(par_x)
        routing: list[Slot] | None = None
        if isinstance(spec, LayersSpec):
            routing = []
            for la, u in enumerate(ops_x):
                op = self._ops[min(int(u), len(self._ops) - 1)]
                if op != "-":
                    routing.append(Slot(layer=la, source=op))
            merged = {s.layer for s in routing if s.source is None} | {0}  # layer 0 also sets
            for key, vals in values.items():  # the embeddings, norm and head (mergekit: t=0)
                mid = self._params.bounds[key[0]].value(0.5)
                values[key] = [v if la in merged else mid for la, v in enumerate(vals)]
            if not routing:
                raise SpaceError("the genome removes every layer: the model would have no layers")
        if isinstance(spec, CombinedSpec):
            assert self._route is not None
            routing = self._route.decode(route_x)
        per_model, shared = self._params.specs(values)
        method = get_method(ps.method)
        base = self.base if method.needs_base else None
        names = set(self._params.models) | ({base} if base else set())
        if routing:
            names |= {s.source for s in routing if s.source}
        sources = {
            m: {"path": self.sources[m], "parameters": per_model.get(m, {})} for m in sorted(names)
        }
        return self._recipe(
            method=ps.method,
            base=base,
            sources=sources,
            parameters={**ps.fixed, **shared},
            routing=routing,
        )

    def _recipe(self, **fields: Any) -> Recipe:
        data = {**fields, "seed": self.seed}
        if self.dtype:
            data["dtype"] = self.dtype
        try:
            return Recipe.model_validate(data)
        except ValidationError as e:
            raise SpaceError(f"decoded recipe is invalid: {e.errors()[0]['msg']}") from None

    def encode(self, recipe: Recipe) -> np.ndarray:
        """The genome of a recipe this space can express (e.g. a known good merge to start from)."""
        parts: list[np.ndarray] = []
        if self._ops:
            route = recipe.routing or [Slot(layer=la, source=None) for la in range(self.num_layers)]
            by_layer = {s.layer: s.source for s in route}
            ops = []
            for la in range(self.num_layers):
                op = by_layer.get(la, "-")
                if op not in self._ops:
                    raise SpaceError(f"layer {la}: operation {op!r} is not in this space")
                ops.append(float(self._ops.index(op)))
            parts.append(np.asarray(ops))
        if self._params is not None:
            parts.append(self._params.encode(recipe))
        if self._route is not None:
            if not recipe.routing:
                raise SpaceError("the recipe has no routing; this space searches one")
            parts.append(self._route.encode(recipe.routing))
        return np.concatenate(parts) if parts else np.zeros(0)

    def middle(self) -> np.ndarray:
        """A valid starting genome: every real gene at ½, every integer gene at its last choice
        (routing: included; layers: merged)."""
        return np.asarray([0.5 if g.choices is None else g.choices - 1.0 for g in self.genes])

    def describe(self) -> list[tuple[str, str]]:
        """(gene, range) rows for ``evomerge space show``."""
        rows = []
        for g in self.genes:
            rows.append((g.name, "[0, 1]" if g.choices is None else f"{{0…{g.choices - 1}}}"))
        return rows

"""A merge recipe as plain data: what to merge, how, and with which per-layer parameters.

A parameter is a *spec* that resolves to one number per tensor:

- ``0.5`` — everywhere;
- ``[0.2, 0.8]`` or ``{gradient: [0.2, 0.8]}`` — interpolated across layers as mergekit does
  (layer i of n sits at t = i/(n-1)); tensors outside layers (embeddings, final norm, head)
  take the value at t = 0, as in mergekit;
- ``{per_layer: [...]}`` — one value per layer (exactly as many as the sources have layers);
- ``{attention: spec, mlp: spec, norm: spec, embedding: spec, head: spec, default: spec}`` — per
  module kind (missing kinds fall back to ``default``);
- ``[{filter: self_attn, value: spec}, {value: spec}]`` — mergekit's conditional form: the first
  entry whose filter is a substring of the tensor name wins.

``layer_methods: [{layers: [lo, hi], method: slerp, models: [NAME]}]`` merges source layers
``[lo, hi)`` by another method than ``method`` (a method per layer group); each tensor reads only
its method's parameters, and tensors outside layers follow layer 0's method, as they take the
values at t = 0. mergekit has one method per config, so only recipes without it export there.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from evomerge.errors import RecipeError
from evomerge.fileio import read_yaml
from evomerge.hub import is_hub_id

# in the order their rules are tried: norms first, as their names may contain "attention"
MODULE_KINDS = ("norm", "embedding", "head", "attention", "mlp", "other")
DTypeName = Literal["float32", "bfloat16", "float16", "float64"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Gradient(_Frozen):
    gradient: Annotated[list[float], Field(min_length=1)]


class PerLayer(_Frozen):
    per_layer: Annotated[list[float], Field(min_length=1)]


class ByModule(_Frozen):
    attention: ParamSpec | None = None
    mlp: ParamSpec | None = None
    norm: ParamSpec | None = None
    embedding: ParamSpec | None = None
    head: ParamSpec | None = None
    other: ParamSpec | None = None
    default: ParamSpec | None = None


class Conditional(_Frozen):
    filter: str | None = None
    value: ParamSpec


ParamSpec = float | list[float] | Gradient | PerLayer | ByModule | list[Conditional]
GlobalValue = bool | ParamSpec

ByModule.model_rebuild()
Conditional.model_rebuild()


Values = float | list[float] | Gradient | PerLayer  # what a spec holds once kind/filter chose


@dataclass(frozen=True)
class Rule:
    """One alternative of a spec: the tensors it applies to (a module kind, name substrings that
    must all occur) and the values it gives them."""

    kind: str | None
    filters: tuple[str, ...]
    values: Values

    def applies(self, tensor: str, kind: str) -> bool:
        return (self.kind is None or self.kind == kind) and all(f in tensor for f in self.filters)


def rules(spec: ParamSpec) -> list[Rule]:
    """The one walk over the spec union: its alternatives in the order they are tried, nested
    module kinds and filters combined. A tensor takes the values of the first rule that applies.
    Resolution, range checks, the space's encoding and the mergekit export all read specs here.
    """
    out: list[Rule] = []

    def walk(s: ParamSpec, kind: str | None, filters: tuple[str, ...]) -> None:
        if isinstance(s, bool):
            raise TypeError("booleans are flags, not numeric parameters")
        if isinstance(s, ByModule):
            for k in (*MODULE_KINDS, "default"):
                sub = getattr(s, k)
                inner = kind if k == "default" else k
                if sub is not None and (kind is None or inner == kind):  # else: never applies
                    walk(sub, inner, filters)
        elif _is_conditional(s):
            for c in s:  # type: ignore[union-attr]
                more = () if c.filter in (None, "*") else (c.filter,)
                walk(c.value, kind, filters + more)  # type: ignore[operator]
        elif isinstance(s, int | float | list | Gradient | PerLayer):
            out.append(Rule(kind, filters, s))
        else:
            raise TypeError(f"not a parameter spec: {s!r}")

    walk(spec, None, ())
    return out


def _is_conditional(spec: Any) -> bool:
    return isinstance(spec, list) and bool(spec) and isinstance(spec[0], Conditional)


def select(spec: ParamSpec, *, tensor: str, kind: str) -> Values:
    """The values a spec gives one tensor (before the layer picks among them)."""
    for rule in rules(spec):
        if rule.applies(tensor, kind):
            return rule.values
    if isinstance(spec, ByModule):
        raise RecipeError(f"no value for module kind {kind!r} (tensor {tensor!r}) and no default")
    raise RecipeError(f"no conditional entry matches tensor {tensor!r} and none is a default")


def at_layer(values: Values, layer: int | None, num_layers: int) -> float:
    """One number from selected values at a layer (None: outside transformer blocks)."""
    if isinstance(values, PerLayer):
        if len(values.per_layer) != num_layers:
            raise RecipeError(
                f"per_layer list has {len(values.per_layer)} values but the sources have "
                f"{num_layers} layers"
            )
        return float(values.per_layer[layer if layer is not None else 0])
    if isinstance(values, Gradient):
        return _interpolate(values.gradient, layer, num_layers)
    if isinstance(values, list):
        return _interpolate([float(v) for v in values], layer, num_layers)
    return float(values)


def numbers(values: Values) -> list[float]:
    """Every number written in selected values."""
    if isinstance(values, PerLayer):
        return [float(v) for v in values.per_layer]
    if isinstance(values, Gradient):
        return [float(v) for v in values.gradient]
    if isinstance(values, list):
        return [float(v) for v in values]
    return [float(values)]


def resolve(
    spec: ParamSpec, *, tensor: str, kind: str, layer: int | None, num_layers: int
) -> float:
    """The number a spec gives one tensor. ``layer`` is None outside transformer blocks."""
    return at_layer(select(spec, tensor=tensor, kind=kind), layer, num_layers)


def _interpolate(values: list[float], layer: int | None, num_layers: int) -> float:
    if layer is None or num_layers <= 1:
        t = 0.0 if layer is None else 1.0  # mergekit: a one-layer slice sits at t=1
    else:
        t = layer / (num_layers - 1)
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * values[i0] + frac * values[i1]


def spec_values(spec: GlobalValue) -> list[float]:
    """Every number written in a spec; range checks on these bound every resolved value, since
    interpolation never leaves the convex hull of its end points."""
    if isinstance(spec, bool):
        return []
    return [v for rule in rules(spec) for v in numbers(rule.values)]


class Source(_Frozen):
    path: str
    parameters: dict[str, ParamSpec] = Field(default_factory=dict)


class Slot(_Frozen):
    """One output layer of a routed model: ``layer`` of ``source``, or, with no source, that
    layer merged from all sources by the recipe's method. ``scale`` multiplies the residual
    stream entering the layer (Sakana's data-flow scaling); it is folded into the weights of this
    and every later layer's output projections, so the result is a standard checkpoint."""

    layer: Annotated[int, Field(ge=0)]
    source: str | None = None
    scale: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0


class LayerMethod(_Frozen):
    """Layers ``[lo, hi)`` (source layer indices, as mergekit's ``layer_range``) merged by
    another method than the recipe's. ``models`` narrows the models that take part (default: all
    but the base); slerp, which takes one model besides the base, names it here when there are
    several. Parameters stay where they are: each tensor reads only its method's parameters."""

    layers: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]
    method: str
    models: list[str] | None = None

    @model_validator(mode="after")
    def _range(self) -> LayerMethod:
        if self.layers[0] >= self.layers[1]:
            raise ValueError(f"layers: [{self.layers[0]}, {self.layers[1]}) is empty")
        return self


class Recipe(_Frozen):
    sources: dict[str, Source]
    method: str
    base: str | None = None
    parameters: dict[str, GlobalValue] = Field(default_factory=dict)
    layer_methods: list[LayerMethod] | None = None
    routing: list[Slot] | None = None
    dtype: DTypeName | None = None
    tokenizer_source: str | None = None
    seed: int = Field(0, ge=0, lt=2**63)

    @field_validator("sources", mode="before")
    @classmethod
    def _path_shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: {"path": s} if isinstance(s, str | Path) else s for k, s in v.items()}
        return v

    @model_validator(mode="after")
    def _names_exist(self) -> Recipe:
        check_names(self.sources, self.base, self.tokenizer_source)
        for i, slot in enumerate(self.routing or []):
            if slot.source is not None and slot.source not in self.sources:
                raise ValueError(f"routing.{i}.source: {slot.source!r} is not a source")
        if self.routing is not None and not self.routing:
            raise ValueError("routing: an empty route has no layers")
        _check_layer_methods(self)
        return self

    def method_at(self, layer: int | None) -> LayerMethod | None:
        """The override that merges source layer ``layer``; None: the recipe's ``method``
        (always so outside transformer blocks: embeddings, final norm and head)."""
        if layer is None:
            return None
        for lm in self.layer_methods or []:
            if lm.layers[0] <= layer < lm.layers[1]:
                return lm
        return None

    # -- identity ---------------------------------------------------------------------------
    def content_hash(self) -> str:
        """Same merge, same hash: keys are sorted, defaults and formatting don't matter."""
        canon = json.dumps(
            self.model_dump(mode="json", exclude_defaults=True),
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    @property
    def model_names(self) -> list[str]:
        """The sources that contribute task vectors / weights (all but the base), sorted so that
        the merge does not depend on the order keys were written in."""
        return sorted(n for n in self.sources if n != self.base)

    @property
    def tokenizer_name(self) -> str:
        """The source whose tokenizer a merge without vocabulary surgery copies."""
        tok = self.tokenizer_source
        if tok in (None, "base", "union"):
            return self.base or sorted(self.sources)[0]
        return tok  # type: ignore[return-value]

    def with_zoo(self, zoo_dir: str | Path) -> Recipe:
        """Resolve ``zoo:NAME`` source paths (e.g. ``zoo:experts/rev9``) against a built zoo."""
        fixed = {
            k: s.model_copy(update={"path": zoo_path(s.path, zoo_dir)})
            for k, s in self.sources.items()
        }
        return self.model_copy(update={"sources": fixed})

    # -- files ------------------------------------------------------------------------------
    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_defaults=True)
        data["sources"] = {
            k: (v["path"] if set(v) == {"path"} else v) for k, v in data["sources"].items()
        }
        return yaml.safe_dump(data, sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    @classmethod
    def from_dict(
        cls, data: Any, *, origin: str = "recipe", base_dir: Path | None = None
    ) -> Recipe:
        """Validate, naming the key path at fault; relative source paths resolve against
        ``base_dir`` (the recipe file's folder) so recipes can travel with their models."""
        try:
            recipe = cls.model_validate(data)
        except ValidationError as e:
            raise RecipeError(_explain(e, origin)) from None
        if base_dir is not None:
            fixed = {
                k: s.model_copy(update={"path": str(base_dir / s.path)})
                if not Path(s.path).is_absolute()
                and not s.path.startswith("zoo:")
                and not (is_hub_id(s.path) and not (base_dir / s.path).exists())
                else s
                for k, s in recipe.sources.items()
            }
            recipe = recipe.model_copy(update={"sources": fixed})
        return recipe

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        data = read_yaml(path, error=RecipeError)
        return cls.from_dict(data, origin=str(path), base_dir=path.parent)


def check_names(sources: Collection[str], base: str | None, tokenizer_source: str | None) -> None:
    """The names a recipe (or an experiment) gives its base and tokenizer are its sources';
    ``tokenizer_source`` takes mergekit's values: ``base``, ``union`` or a source's name."""
    names = sorted(sources)
    if not names:
        raise ValueError("sources: at least one source is needed")
    if base is not None and base not in sources:
        raise ValueError(f"base: {base!r} is not one of the sources {names}")
    tok = tokenizer_source
    if tok is None:
        return
    if tok == "union":
        if "union" in sources:
            raise ValueError("tokenizer_source: 'union' is also a source's name; rename it")
    elif tok == "base":
        if base is None:
            raise ValueError("tokenizer_source: 'base' needs `base:` set")
        if "base" in sources and base != "base":
            raise ValueError(
                f"tokenizer_source: 'base' is ambiguous: a source is named 'base' but the "
                f"base is {base!r}; name the source instead"
            )
    elif tok not in sources:
        raise ValueError(
            f"tokenizer_source: {tok!r} is neither 'base', 'union' nor one of the sources {names}"
        )


def _check_layer_methods(recipe: Recipe) -> None:
    if recipe.layer_methods is not None and not recipe.layer_methods:
        raise ValueError("layer_methods: give at least one entry or leave the key out")
    spans = sorted((lm.layers, i) for i, lm in enumerate(recipe.layer_methods or []))
    for (a, i), (b, j) in itertools.pairwise(spans):
        if b[0] < a[1]:
            raise ValueError(f"layer_methods.{j}: layers {list(b)} overlap layer_methods.{i}")
    for i, lm in enumerate(recipe.layer_methods or []):
        for m in lm.models or []:
            if m not in recipe.sources or m == recipe.base:
                raise ValueError(
                    f"layer_methods.{i}.models: {m!r} is not one of the non-base sources "
                    f"{sorted(n for n in recipe.sources if n != recipe.base)}"
                )


def zoo_path(path: str, zoo_dir: str | Path) -> str:
    """``zoo:NAME`` → the path of NAME in a built tiny zoo; any other path as it is."""
    return str(Path(zoo_dir) / path[4:]) if path.startswith("zoo:") else path


_SPEC_HELP = (
    "expected a number, a list of numbers (a gradient), {gradient: [...]}, "
    "{per_layer: [...]}, {attention: ..., mlp: ..., default: ...} or "
    "[{filter: ..., value: ...}]"
)
_UNION_MEMBERS = {"float", "bool", "int", "str", "Gradient", "PerLayer", "ByModule", "Conditional"}


def _explain(e: ValidationError, origin: str) -> str:
    """One line, a clause per key: pydantic reports each union member's failure, we report the
    key."""
    by_loc: dict[str, list[str]] = {}
    for err in e.errors():
        parts: list[str] = []
        for p in err["loc"]:
            if str(p) in _UNION_MEMBERS or str(p).startswith(("list[", "function-", "dict[")):
                break
            parts.append(str(p))
        by_loc.setdefault(".".join(parts) or "<top>", []).append(err["msg"])
    # unknown keys first (a misspelt key also makes the key it meant "missing"); one line
    items = sorted(by_loc.items(), key=lambda kv: "Extra inputs" not in kv[1][0])
    parts = [f"{loc}: {msgs[0] if len(msgs) == 1 else _SPEC_HELP}" for loc, msgs in items[:6]]
    return f"{origin}: invalid recipe: " + "; ".join(parts)

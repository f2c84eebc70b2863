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
"""

from __future__ import annotations

import hashlib
import json
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

MODULE_KINDS = ("attention", "mlp", "norm", "embedding", "head", "other")
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


def resolve(
    spec: ParamSpec, *, tensor: str, kind: str, layer: int | None, num_layers: int
) -> float:
    """The number a spec gives one tensor. ``layer`` is None outside transformer blocks."""
    if isinstance(spec, bool):
        raise TypeError("booleans are flags, not numeric parameters")
    if isinstance(spec, int | float):
        return float(spec)
    if isinstance(spec, ByModule):
        sub = getattr(spec, kind, None)
        if sub is None:
            sub = spec.default
        if sub is None:
            raise RecipeError(
                f"no value for module kind {kind!r} (tensor {tensor!r}) and no default"
            )
        return resolve(sub, tensor=tensor, kind=kind, layer=layer, num_layers=num_layers)
    if isinstance(spec, PerLayer):
        values = spec.per_layer
        if len(values) != num_layers:
            raise RecipeError(
                f"per_layer list has {len(values)} values but the sources have {num_layers} layers"
            )
        return float(values[layer if layer is not None else 0])
    if isinstance(spec, Gradient):
        return _interpolate(spec.gradient, layer, num_layers)
    if isinstance(spec, list) and spec and isinstance(spec[0], Conditional):
        for cond in spec:
            if cond.filter in (None, "*") or cond.filter in tensor:
                return resolve(
                    cond.value, tensor=tensor, kind=kind, layer=layer, num_layers=num_layers
                )
        raise RecipeError(f"no conditional entry matches tensor {tensor!r} and none is a default")
    if isinstance(spec, list):
        return _interpolate([float(v) for v in spec], layer, num_layers)  # type: ignore[arg-type]
    raise TypeError(f"not a parameter spec: {spec!r}")


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
    if isinstance(spec, int | float):
        return [float(spec)]
    if isinstance(spec, Gradient):
        return list(spec.gradient)
    if isinstance(spec, PerLayer):
        return list(spec.per_layer)
    if isinstance(spec, ByModule):
        return [
            v
            for k in (*MODULE_KINDS, "default")
            if (s := getattr(spec, k)) is not None
            for v in spec_values(s)
        ]
    if isinstance(spec, list):
        out: list[float] = []
        for e in spec:
            out.extend(spec_values(e.value) if isinstance(e, Conditional) else [float(e)])
        return out
    raise TypeError(f"not a parameter spec: {spec!r}")


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


class Recipe(_Frozen):
    sources: dict[str, Source]
    method: str
    base: str | None = None
    parameters: dict[str, GlobalValue] = Field(default_factory=dict)
    routing: list[Slot] | None = None
    dtype: DTypeName | None = None
    tokenizer_source: str | None = None
    seed: int = 0

    @field_validator("sources", mode="before")
    @classmethod
    def _path_shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: {"path": s} if isinstance(s, str | Path) else s for k, s in v.items()}
        return v

    @model_validator(mode="after")
    def _names_exist(self) -> Recipe:
        if not self.sources:
            raise ValueError("sources: at least one source is needed")
        for key in ("base", "tokenizer_source"):
            name = getattr(self, key)
            if name is not None and name not in self.sources:
                raise ValueError(
                    f"{key}: {name!r} is not one of the sources {sorted(self.sources)}"
                )
        for i, slot in enumerate(self.routing or []):
            if slot.source is not None and slot.source not in self.sources:
                raise ValueError(f"routing.{i}.source: {slot.source!r} is not a source")
        if self.routing is not None and not self.routing:
            raise ValueError("routing: an empty route has no layers")
        return self

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
        return self.tokenizer_source or self.base or sorted(self.sources)[0]

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
                if not Path(s.path).is_absolute() and not s.path.startswith("zoo:")
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
    """One line per key: pydantic reports each union member's failure, we report the key."""
    by_loc: dict[str, list[str]] = {}
    for err in e.errors():
        parts: list[str] = []
        for p in err["loc"]:
            if str(p) in _UNION_MEMBERS or str(p).startswith(("list[", "function-", "dict[")):
                break
            parts.append(str(p))
        by_loc.setdefault(".".join(parts) or "<top>", []).append(err["msg"])
    lines = [f"{origin}: invalid recipe"]
    for loc, msgs in list(by_loc.items())[:6]:
        lines.append(f"  {loc}: {msgs[0] if len(msgs) == 1 else _SPEC_HELP}")
    return "\n".join(lines)

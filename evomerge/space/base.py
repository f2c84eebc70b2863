"""What every search space kind shares: the spec base, bounds, the kind registry, loading, and
the :class:`SearchSpace` interface."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from evomerge.checkpoint import num_layers
from evomerge.errors import EvomergeError, IncompatibleSourcesError
from evomerge.fileio import preset_dir, read_yaml, resolve_named, validate
from evomerge.genes import Gene
from evomerge.recipe import Recipe

SPACES_DIR = preset_dir("search_spaces")


class SpaceError(EvomergeError, ValueError):
    """A search space is malformed or does not fit the sources."""


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SpaceSpec(_Spec):
    """A space as written in YAML; each kind's spec adds its keys."""

    kind: str
    description: str = ""


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
        """The unit value whose :meth:`value` is ``v`` (clamped to the range): the float that
        gives ``v`` back exactly where one does, so a recipe encoded and decoded again is the
        same recipe, hash included (0.55 in [0.1, 1] is not 0.5 to the last bit)."""
        v = float(v)
        u = min(1.0, max(0.0, (v - self.low) / (self.high - self.low)))
        return exact_inverse(self.value, v, u)


def exact_inverse(f: Callable[[float], float], v: float, u: float) -> float:
    """The float within a few ulps of ``u`` (a first guess in [0, 1], ``f`` increasing) whose
    image is exactly ``v`` where one is, else the nearest found: a genome decoded, encoded and
    decoded again is the same recipe to the last bit."""
    for _ in range(8):
        got = f(u)
        if got == v or not 0.0 < u < 1.0:
            break
        step = math.nextafter(u, math.inf if got < v else -math.inf)
        if abs(f(step) - v) >= abs(got - v):
            break
        u = step
    return u


# ---------------------------------------------------------------------------------------------
# kinds

_KINDS: dict[str, type[SearchSpace]] = {}


def register_kind(
    name: str, spec: type[SpaceSpec]
) -> Callable[[type[SearchSpace]], type[SearchSpace]]:
    """Class decorator: ``kind: NAME`` in a space file is parsed by ``spec`` and builds this
    class."""

    def deco(cls: type[SearchSpace]) -> type[SearchSpace]:
        if name in _KINDS:
            raise ValueError(f"search space kind {name!r} registered twice")
        cls.Spec = spec
        _KINDS[name] = cls
        return cls

    return deco


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
        path = resolve_named(ref, presets=SPACES_DIR, what="search space", error=SpaceError)
        origin = str(path)
        data = read_yaml(path, error=SpaceError)
    if not isinstance(data, dict):
        raise SpaceError(f"{origin}: a search space is a mapping with a `kind:` key")
    data = {**data, **dict(overrides or {})}
    kind = data.get("kind")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise SpaceError(
            f"{origin}: kind: {data.get('kind')!r} is not a search space kind "
            f"(known: {sorted(_KINDS)})"
        )
    return validate(cls.Spec.model_validate, data, origin=origin, error=SpaceError)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# the interface


def sources_depth(
    sources: Mapping[str, str], base: str | None, *, loose_vocab: bool = False
) -> int:
    """The layer count the sources share, read from their checkpoints; SpaceError when they
    cannot be merged tensor by tensor (a space over them would make no model)."""
    try:
        return num_layers(sources, base, loose_vocab=loose_vocab)
    except IncompatibleSourcesError as e:
        raise SpaceError(f"the sources do not fit one search space: {e}") from None


class SearchSpace(ABC):
    """A space spec bound to concrete sources: its genes, ``decode`` (genome → Recipe) and
    ``encode`` (Recipe → genome).

    ``SearchSpace(spec, sources=..., base=...)`` builds the class registered for
    ``spec.kind``. Decoding is canonical: genes a candidate does not use do not change its recipe.
    """

    Spec: ClassVar[type[SpaceSpec]]
    genes: list[Gene]

    def __new__(cls, spec: SpaceSpec, **_: Any) -> SearchSpace:
        if cls is SearchSpace:
            cls = _KINDS[spec.kind]
        return super().__new__(cls)

    def __init__(
        self,
        spec: SpaceSpec,
        *,
        sources: Mapping[str, str],
        base: str | None,
        num_layers: int | None = None,
        seed: int = 0,
        dtype: str | None = None,
        tokenizer_source: str | None = None,
    ) -> None:
        if base is not None and base not in sources:
            raise SpaceError(f"base {base!r} is not one of the sources {sorted(sources)}")
        if num_layers is None:
            num_layers = sources_depth(sources, base, loose_vocab=tokenizer_source is not None)
        self.spec, self.sources, self.base = spec, dict(sources), base
        self.num_layers, self.seed, self.dtype = num_layers, seed, dtype
        self.tokenizer_source = tokenizer_source  # every decoded recipe's (sources' vocabularies)

    @abstractmethod
    def decode(self, genome: np.ndarray) -> Recipe:
        """The recipe of a genome; SpaceError for a genome that makes no model."""

    @abstractmethod
    def encode(self, recipe: Recipe) -> np.ndarray:
        """The genome of a recipe this space can express (e.g. a known good merge to start
        from)."""

    def middle(self) -> np.ndarray:
        """A valid starting genome: every real gene at ½, every integer gene at its last choice
        (routing: included; layers: merged)."""
        return np.asarray([0.5 if g.choices is None else g.choices - 1.0 for g in self.genes])

    def describe(self) -> list[tuple[str, str]]:
        """(gene, range) rows for ``evomerge space show``."""
        return [
            (g.name, "[0, 1]" if g.choices is None else f"{{0…{g.choices - 1}}}")
            for g in self.genes
        ]

    # -- for the kinds ------------------------------------------------------------------------
    def _set_genes(self, genes: list[Gene]) -> None:
        names = [g.name for g in genes]
        if len(set(names)) != len(names):
            raise SpaceError("two genes share a name; rename the sources")
        self.genes = genes

    def _genome(self, genome: np.ndarray, *sizes: int) -> list[np.ndarray]:
        """The genome as floats, cut after parts of these sizes (the rest is the last part)."""
        try:
            x = np.asarray(genome, dtype=float).reshape(-1)
        except (TypeError, ValueError) as e:
            raise SpaceError(f"a genome is an array of numbers: {e}") from None
        if x.shape[0] != len(self.genes):
            raise SpaceError(f"genome has {x.shape[0]} genes; the space has {len(self.genes)}")
        for g, v in zip(self.genes, x, strict=True):  # optimizers clip; anything else is a bug
            top = 1.0 if g.choices is None else g.choices - 1.0
            if not (0.0 <= v <= top) or (g.choices is not None and v != round(v)):
                what = "in [0, 1]" if g.choices is None else f"an integer in 0…{g.choices - 1}"
                raise SpaceError(f"gene {g.name!r} is {v}; it must be {what}")
        return np.split(x, np.cumsum(sizes)) if sizes else [x]

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

    def uniform(self) -> Recipe | None:
        """The uniform merge this space holds: its method with every searched parameter alike
        for every model and layer (a reference point beside the search's front); None where the
        space merges nothing."""
        return None

    def _recipe(self, **fields: Any) -> Recipe:
        data = {**fields, "seed": self.seed}
        if self.dtype:
            data["dtype"] = self.dtype
        if self.tokenizer_source:
            data["tokenizer_source"] = self.tokenizer_source
        try:
            return Recipe.model_validate(data)
        except ValidationError as e:
            raise SpaceError(f"decoded recipe is invalid: {e.errors()[0]['msg']}") from None

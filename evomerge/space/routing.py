"""``kind: routing`` — Sakana's data-flow space: T = (routed layers of all models) × repeats slots
in a fixed order, each included or not, each with an input scale that only exists when
included."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from evomerge.genes import Gene
from evomerge.recipe import Recipe, Slot
from evomerge.space.base import (
    Bound,
    SearchSpace,
    SpaceError,
    SpaceSpec,
    exact_inverse,
    register_kind,
)


class RoutingSpec(SpaceSpec):
    kind: Literal["routing"] = "routing"
    models: list[str] | None = None  # whose layers are routed; default: every source but the base
    repeats: Annotated[int, Field(ge=1)] = 1
    order: Literal["layer_major", "source_major"] = "layer_major"
    scale: Bound | None = None  # per-slot input scale; None: no scale genes
    encoding: Literal["structured", "flat"] = "structured"
    embeddings_from: str | None = None  # non-layer tensors; default the base, else first model


@register_kind("routing", RoutingSpec)
class RoutingSpace(SearchSpace):
    spec: RoutingSpec

    def __init__(self, spec: RoutingSpec, **kw: Any) -> None:
        super().__init__(spec, **kw)
        models = self._models(spec.models, needs_base=True)
        if spec.embeddings_from is not None and spec.embeddings_from not in self.sources:
            raise SpaceError(f"embeddings_from: {spec.embeddings_from!r} is not a source")
        self.route = RouteGenes(spec, list(models), self.num_layers, list(models))
        self._set_genes(self.route.genes)

    def decode(self, genome: np.ndarray) -> Recipe:
        (x,) = self._genome(genome)
        route = self.route.decode(x)
        emb = self.spec.embeddings_from or (
            self.base if self.base is not None else self.route.names[0]
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

    def encode(self, recipe: Recipe) -> np.ndarray:
        return self.route.encode(recipe)

    def uniform(self) -> Recipe:
        """The routed models' linear average (no routing)."""
        models = [n for n in self.route.names if n in self.sources]
        return self._recipe(
            method="linear",
            sources={m: {"path": self.sources[m], "parameters": {"weight": 1.0}} for m in models},
            parameters={"normalize": True},
        )


class RouteGenes:
    """Sakana's slots: a fixed order of (model, layer) repeated; include + conditional scale.
    A candidate ``None`` is the layer merged by the recipe's method (the combined kind)."""

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
        self._index = {c: i for i, c in enumerate(candidates)}

    @property
    def genes(self) -> list[Gene]:
        out = []
        for t, (c, la) in enumerate(self.slots):
            stem = f"slot{t:03d}.{self.names[self._index[c]]}.L{la}"
            if self.spec.encoding == "structured":
                out.append(Gene(stem) if self.spec.scale else Gene(stem, choices=2))
            else:
                out.append(Gene(f"{stem}.on", choices=2))
                if self.spec.scale:
                    out.append(Gene(f"{stem}.scale"))
        return out

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

    def encode(self, recipe: Recipe) -> np.ndarray:
        if not recipe.routing:
            raise SpaceError("the recipe has no routing; this space searches one")
        route: Sequence[Slot] = recipe.routing
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
                    out.append(_included(scale, s) if hit else 0.25)
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


def _included(scale: Bound, s: float) -> float:
    """The structured gene of an included slot of scale ``s``: in [½, 1], exactly the one that
    decodes to ``s`` where one does (the decode's 2u − 1 loses the last bit of ``unit(s) / 2``)."""

    def decoded(u: float) -> float:
        return scale.value(min(1.0, max(0.0, 2 * u - 1)))

    return max(0.5, exact_inverse(decoded, s, 0.5 + scale.unit(s) / 2))

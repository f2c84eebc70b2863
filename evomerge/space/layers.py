"""``kind: layers`` — GPTailor's operations: per output layer, remove it, take it from one model,
or merge it with searched coefficients."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from evomerge.genes import Gene
from evomerge.recipe import GlobalValue, Recipe, Slot
from evomerge.space.base import Bound, SearchSpace, SpaceError, SpaceSpec, register_kind
from evomerge.space.parameters import ParamGenes

_REMOVE, _MERGE = "-", None  # operations besides "take this model's layer"


class LayersSpec(SpaceSpec):
    kind: Literal["layers"] = "layers"
    method: str = "linear"
    models: list[str] | None = None
    genes: dict[str, Bound] = Field(default_factory=lambda: {"weight": Bound(low=0.0, high=1.0)})
    fixed: dict[str, GlobalValue] = Field(default_factory=dict)
    allow_remove: bool = True
    allow_merge: bool = True


@register_kind("layers", LayersSpec)
class LayersSpace(SearchSpace):
    spec: LayersSpec

    def __init__(self, spec: LayersSpec, **kw: Any) -> None:
        super().__init__(spec, **kw)
        self.params = ParamGenes.of(self, spec, 1, [], False)
        self.ops: list[str | None] = (
            ([_REMOVE] if spec.allow_remove else [])
            + list(self.params.models)
            + ([_MERGE] if spec.allow_merge else [])
        )
        if len(self.ops) < 2:
            raise SpaceError("layers space: needs at least two operations per layer")
        labels = ["remove" if o == _REMOVE else "merge" if o is _MERGE else o for o in self.ops]
        op_genes = [
            Gene(f"L{la}.op[{'|'.join(labels)}]", choices=len(self.ops))  # type: ignore[arg-type]
            for la in range(self.num_layers)
        ]
        self._set_genes(op_genes + self.params.genes)

    def decode(self, genome: np.ndarray) -> Recipe:
        ops_x, par_x = self._genome(genome, self.num_layers)
        values = self.params.values(par_x)
        routing = []
        for la, u in enumerate(ops_x):
            op = self.ops[min(int(u), len(self.ops) - 1)]
            if op != _REMOVE:
                routing.append(Slot(layer=la, source=op))
        if not routing:
            raise SpaceError("the genome removes every layer: the model would have no layers")
        merged = {s.layer for s in routing if s.source is None} | {0}  # layer 0 also sets the
        for key, vals in values.items():  # embeddings, norm and head (mergekit: t=0)
            mid = self.params.bounds[key[0]].value(0.5)
            values[key] = [v if la in merged else mid for la, v in enumerate(vals)]
        return self.params.recipe(self, values, routing)

    def encode(self, recipe: Recipe) -> np.ndarray:
        route = recipe.routing or [Slot(layer=la, source=None) for la in range(self.num_layers)]
        by_layer = {s.layer: s.source for s in route}
        ops = []
        for la in range(self.num_layers):
            op = by_layer.get(la, _REMOVE)
            if op not in self.ops:
                raise SpaceError(f"layer {la}: operation {op!r} is not in this space")
            ops.append(float(self.ops.index(op)))
        return np.concatenate([np.asarray(ops), self.params.encode(recipe)])

    def uniform(self) -> Recipe:
        return self.params.uniform(self)  # every layer merged alike, none removed or taken

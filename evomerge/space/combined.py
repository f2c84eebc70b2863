"""``kind: combined`` — routing over the models *and* a parameter-space merge of them (the
``ps-dfs`` preset): each slot takes one model's layer or that layer merged."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from evomerge.recipe import Recipe
from evomerge.space.base import SearchSpace, SpaceSpec, register_kind
from evomerge.space.parameters import ParametersSpec, ParamGenes
from evomerge.space.routing import RouteGenes, RoutingSpec


class CombinedSpec(SpaceSpec):
    kind: Literal["combined"] = "combined"
    parameters: ParametersSpec
    routing: RoutingSpec


@register_kind("combined", CombinedSpec)
class CombinedSpace(SearchSpace):
    spec: CombinedSpec

    def __init__(self, spec: CombinedSpec, **kw: Any) -> None:
        super().__init__(spec, **kw)
        ps, rs = spec.parameters, spec.routing
        self.params = ParamGenes.of(self, ps, ps.granularity, ps.split, ps.smoothing)
        models = self._models(rs.models, needs_base=True)
        self.route = RouteGenes(rs, [*models, None], self.num_layers, [*models, "merged"])
        self._set_genes(self.params.genes + self.route.genes)

    def decode(self, genome: np.ndarray) -> Recipe:
        par_x, route_x = self._genome(genome, len(self.params.keys))
        return self.params.recipe(self, self.params.values(par_x), self.route.decode(route_x))

    def encode(self, recipe: Recipe) -> np.ndarray:
        return np.concatenate([self.params.encode(recipe), self.route.encode(recipe)])

    def uniform(self) -> Recipe:
        return self.params.uniform(self)  # every layer merged alike, no routing

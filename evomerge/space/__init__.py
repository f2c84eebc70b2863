"""Search spaces: declarative YAML (``search_spaces/*.yaml``) that turns a genome into a Recipe
and back.

A genome is a float vector, one entry per :class:`~evomerge.genes.Gene`: real genes live in
[0, 1] and map linearly onto their parameter's bounds; integer genes pick among choices. One
module per kind, each a :class:`SearchSpace` registered under its ``kind:`` name:

- ``parameters`` — per-layer merge coefficients (parameter space): one gene per searched
  parameter × source (for per-model parameters) × layer group × module kind.
- ``routing`` — Sakana's data-flow space: T = (routed layers of all models) × repeats slots in a
  fixed order, each included or not, each with an input scale that only exists when included.
- ``layers`` — GPTailor's operations: per output layer, remove it, take it from one model, or
  merge it with searched coefficients.
- ``combined`` — routing over the models *and* a parameter-space merge of them.

A new kind is one module with a ``SpaceSpec`` subclass and a ``@register_kind("name", Spec)``
``SearchSpace`` subclass, imported below (CONTRIBUTING.md has a worked example).

Decoding is canonical: genes that a candidate does not use (the scale of an excluded slot, the
coefficients of a layer that is copied) do not change the recipe, so the archive's hash cache
recognises candidates that differ only there.
"""

from __future__ import annotations

from evomerge.space.base import (
    SPACES_DIR,
    Bound,
    SearchSpace,
    SpaceError,
    SpaceSpec,
    available_spaces,
    load_space,
    register_kind,
)
from evomerge.space.combined import CombinedSpace, CombinedSpec
from evomerge.space.layers import LayersSpace, LayersSpec
from evomerge.space.parameters import ParametersSpace, ParametersSpec
from evomerge.space.routing import RoutingSpace, RoutingSpec

__all__ = [
    "SPACES_DIR",
    "Bound",
    "CombinedSpace",
    "CombinedSpec",
    "LayersSpace",
    "LayersSpec",
    "ParametersSpace",
    "ParametersSpec",
    "RoutingSpace",
    "RoutingSpec",
    "SearchSpace",
    "SpaceError",
    "SpaceSpec",
    "available_spaces",
    "load_space",
    "register_kind",
]

"""Black-box optimizers over genomes: one ask/tell/state interface for cma, pymoo and optuna.

The libraries are imported only when an optimizer of theirs is built, so importing this package
stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from evomerge.genes import Gene
from evomerge.optimize.base import Optimizer, OptimizerError
from evomerge.optimize.cmaes import CMAES
from evomerge.optimize.moo import NSGA2, NSGA3
from evomerge.optimize.optuna_ import (
    OptunaCmaEs,
    OptunaGP,
    OptunaNSGA2,
    OptunaNSGA3,
    OptunaTPE,
)
from evomerge.optimize.random import RandomSearch

OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls
    for cls in (
        RandomSearch,
        CMAES,
        NSGA2,
        NSGA3,
        OptunaTPE,
        OptunaCmaEs,
        OptunaNSGA2,
        OptunaNSGA3,
        OptunaGP,
    )
}
# Alternative spellings users reach for; not listed twice in OPTIMIZERS.
ALIASES: dict[str, str] = {"cmaes": "cma"}


def optimizer_class(name: str) -> type[Optimizer]:
    """The registered optimizer a config names (aliases accepted)."""
    cls = OPTIMIZERS.get(ALIASES.get(name, name))
    if cls is None:
        known = sorted([*OPTIMIZERS, *ALIASES])
        raise OptimizerError(f"unknown optimizer {name!r}; known: {', '.join(known)}")
    return cls


def make_optimizer(
    name: str,
    genes: Sequence[Gene],
    n_objectives: int,
    *,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
) -> Optimizer:
    """Build a registered optimizer by name, so configs can pick one with a string."""
    cls = OPTIMIZERS.get(ALIASES.get(name, name))
    if cls is None:
        known = sorted([*OPTIMIZERS, *ALIASES])
        raise OptimizerError(f"unknown optimizer {name!r}; known: {', '.join(known)}")
    options = dict(options or {})
    if "seed" in options:
        raise OptimizerError(
            f"optimizer {name!r}: 'seed' is an argument of make_optimizer, not an option"
        )
    return cls(genes, n_objectives, seed=seed, **options)


__all__ = [
    "ALIASES",
    "OPTIMIZERS",
    "Gene",
    "Optimizer",
    "OptimizerError",
    "make_optimizer",
    "optimizer_class",
]

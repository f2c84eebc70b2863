"""Black-box optimizers over genomes: one ask/tell/state interface for cma, pymoo and optuna.

An optimizer is chosen by name. The built-in ones are listed in ``_BUILTIN`` (a new one is a
module and one line there); other packages add theirs through the entry point group
``evomerge.optimizers`` (``name = "package.module:Class"``), loaded the first time a name is not
a built-in. The libraries are imported only when an optimizer of theirs is built, so importing
this package stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Mapping, Sequence
from typing import Any

from evomerge.genes import Gene
from evomerge.optimize.base import Optimizer, OptimizerError

ENTRY_POINT_GROUP = "evomerge.optimizers"
# "module:Class", as an entry point names it; importing these modules loads no library
_BUILTIN = (
    "evomerge.optimize.random:RandomSearch",
    "evomerge.optimize.cmaes:CMAES",
    "evomerge.optimize.moo:NSGA2",
    "evomerge.optimize.moo:NSGA3",
    "evomerge.optimize.optuna_:OptunaTPE",
    "evomerge.optimize.optuna_:OptunaCmaEs",
    "evomerge.optimize.optuna_:OptunaNSGA2",
    "evomerge.optimize.optuna_:OptunaNSGA3",
    "evomerge.optimize.optuna_:OptunaGP",
    "evomerge.optimize.botorch:OptunaBoTorch",
)


def _import(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.name: cls for cls in map(_import, _BUILTIN)}
# Alternative spellings users reach for; not listed twice in OPTIMIZERS.
ALIASES: dict[str, str] = {"cmaes": "cma"}


def register(cls: type[Optimizer], name: str | None = None) -> type[Optimizer]:
    """Make ``cls`` an optimizer configs can name (``name`` defaults to ``cls.name``)."""
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise OptimizerError(f"{cls!r} is not an Optimizer subclass")
    OPTIMIZERS[name or cls.name] = cls
    return cls


def _plugins() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load_plugin(ep: importlib.metadata.EntryPoint) -> type[Optimizer]:
    where = f"optimizer {ep.name!r} (entry point {ep.value!r} of group {ENTRY_POINT_GROUP!r})"
    try:
        cls = ep.load()
    except (ImportError, AttributeError) as e:
        raise OptimizerError(f"{where} cannot be loaded: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise OptimizerError(f"{where} is {cls!r}, not an evomerge Optimizer subclass")
    return register(cls, ep.name)


def optimizer_class(name: str) -> type[Optimizer]:
    """The optimizer a config names: a built-in, an alias, or an installed plugin."""
    name = ALIASES.get(name, name)
    cls = OPTIMIZERS.get(name)
    if cls is not None:
        return cls
    plugins = _plugins()
    if name in plugins:
        return _load_plugin(plugins[name])
    known = sorted({*OPTIMIZERS, *ALIASES, *plugins})
    raise OptimizerError(f"unknown optimizer {name!r}; known: {', '.join(known)}")


def make_optimizer(
    name: str,
    genes: Sequence[Gene],
    n_objectives: int,
    *,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
) -> Optimizer:
    """Build an optimizer by name, so configs can pick one with a string."""
    cls = optimizer_class(name)
    options = dict(options or {})
    if "seed" in options:
        raise OptimizerError(
            f"optimizer {name!r}: 'seed' is an argument of make_optimizer, not an option"
        )
    return cls(genes, n_objectives, seed=seed, **options)


__all__ = [
    "ALIASES",
    "ENTRY_POINT_GROUP",
    "OPTIMIZERS",
    "Gene",
    "Optimizer",
    "OptimizerError",
    "make_optimizer",
    "optimizer_class",
    "register",
]

"""Coarse to fine: a search that starts in a coarse space and refines it as evaluations accrue.

An experiment's ``schedule:`` lists stages; each is a set of overrides of the space's options
(``granularity``, ``curve``) and, for all but the last, ``until``: the number of evaluations
(of the whole run) after which the next stage starts. A stage may name its own ``optimizer``
(the experiment's otherwise): an evolutionary one spreads a few genes along the front, a
model-based one refines many::

    schedule:
      - {granularity: 4, until: 24, optimizer: {name: nsga2, pop_size: 12}}
      - {curve: 2, until: 48}         # then a straight line over depth per coefficient
      - {granularity: 1}              # then per layer, to the end

Every stage's genome maps exactly onto the last (finest) stage's genes: a group's unit value is
copied to each of its layers, a curve's control points are interpolated over the layers
(:mod:`evomerge.space.curves`). Candidates are decoded through the last stage's space, so a
coarse candidate and its fine image are the very same recipe (one archive, one hash, no
evaluation spent twice), and the archive records genomes in the last stage's genes throughout.
The next stage is seeded with the archive's candidates mapped back into its genes (exact when the
stages refine one another, as a granularity that divides the previous one's does).

Stages are counted in evaluations, not in fractions of the budget, so a budget raised on resume
does not move a boundary already passed, and a longer run's first evaluations are a shorter
run's. The one exception is a last stage of ``last: N``: the budget's last N evaluations,
whatever the budget; the stage before it has no ``until`` and every earlier stage is cut short
where it begins. Meant for ``target: knee``, which a user exporting the knee wants refined::

      - {granularity: 1}                                # per layer…
      - {granularity: 1, target: knee, last: 12}        # …then nearer the ideal point

A stage that targets the knee gives its optimizer one loss: how far a candidate falls short of
the front's ideal point (each objective's best value when the stage begins; beyond it costs
nothing), measured as the knee's rule measures (:func:`evomerge.objectives.ideal_distances`).
A budget raised once that stage has begun keeps it to the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evomerge.space import curves
from evomerge.space.base import SearchSpace, SpaceError, load_space
from evomerge.space.parameters import ParametersSpace, curves_units

_RESOLUTION = {"granularity", "curve"}
_NOT_SPACE = {"until", "last", "optimizer", "target"}  # a stage's keys that are not space options
Units = dict[Any, np.ndarray]  # (param, model, kind) → one unit value per layer


class StagedSpace:
    """The schedule's spaces over the same sources; the last one is the run's space."""

    def __init__(
        self,
        ref: str | Mapping[str, Any],
        options: Mapping[str, Any],
        stages: Sequence[Mapping[str, Any]],
        **space_kw: Any,
    ) -> None:
        # the stages are checked where the experiment is read (Experiment.check_stages)
        self.until: list[int | None] = [st.get("until") for st in stages]
        self.last: int | None = stages[-1].get("last")
        self.targets: list[str] = [st.get("target", "front") for st in stages]
        self.spaces: list[SearchSpace] = []
        for i, st in enumerate(stages):
            overrides = {k: v for k, v in st.items() if k not in _NOT_SPACE}
            base = dict(options)
            if overrides.keys() & _RESOLUTION:  # a stage's resolution replaces the space's
                base = {k: v for k, v in base.items() if k not in _RESOLUTION}
            try:
                space = SearchSpace(load_space(ref, {**base, **overrides}), **space_kw)
            except SpaceError as e:
                raise SpaceError(f"schedule[{i}]: {e}") from None
            if not isinstance(space, ParametersSpace) or space.params.smoothing:
                raise SpaceError(
                    f"schedule[{i}]: stages need a `kind: parameters` space without smoothing "
                    "(granularity or curve)"
                )
            self.spaces.append(space)
        self.final = self.spaces[-1]
        if any(_shape(s) != _shape(self.final) for s in self.spaces):
            raise SpaceError(
                "schedule: stages may change only granularity and curve (the same coefficients, "
                "models and module kinds in every stage)"
            )

    def stage_at(self, done: int, budget: int | None = None) -> int:
        """The stage in force once ``done`` evaluations are in the archive, of ``budget`` (the
        last stage's ``last: N`` starts at ``budget - N``; earlier stages end there)."""
        final = len(self.until) - 1
        if self.last is not None:
            if budget is not None and done >= budget - self.last:
                return final
            final -= 1  # before the budget's last N, the stage before the last is the latest
        for i, until in enumerate(self.until[: final + 1]):
            if until is None or done < until:
                return i
        return final

    def lift(self, stage: int, x: np.ndarray) -> np.ndarray:
        """A stage's genome as the last stage's genome (the same recipe)."""
        if stage == len(self.spaces) - 1:
            return np.asarray(x, dtype=np.float64)
        return from_layer_units(self.final, layer_units(self.spaces[stage], x))

    def project(self, stage: int, x_final: np.ndarray) -> np.ndarray:
        """A last-stage genome in a stage's genes (exact for genomes lifted from a stage that
        the target refines)."""
        return from_layer_units(self.spaces[stage], layer_units(self.final, x_final))


def _shape(space: ParametersSpace) -> list[tuple[Any, ...]]:
    p = space.params
    return sorted({(name, owner, kind) for name, owner, _g, kind in p.keys}, key=repr)


def layer_units(space: ParametersSpace, x: np.ndarray) -> Units:
    """Each coefficient's unit value at every layer."""
    p = space.params
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if p.curve:
        return curves_units(p, x)
    out: Units = {}
    for (name, owner, g, kind), u in zip(p.keys, x, strict=True):
        per = out.setdefault((name, owner, kind), np.empty(p.n_layers))
        per[g * p.gran : (g + 1) * p.gran] = u
    return out


def from_layer_units(space: ParametersSpace, units: Units) -> np.ndarray:
    """The genome closest to per-layer unit values: a group's first layer, or the curve read at
    its control points."""
    p = space.params
    out = np.empty(len(p.keys))
    for i, (name, owner, g, kind) in enumerate(p.keys):
        per = units[(name, owner, kind)]
        out[i] = curves.sample(per, p.curve)[g] if p.curve else per[g * p.gran]
    return np.clip(out, 0.0, 1.0)

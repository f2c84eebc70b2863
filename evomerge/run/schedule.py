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

A stage of ``radius: r`` is a trust region (TuRBO's idea, with a fixed size): its genes span
only ``±r`` (in unit genes, clipped to the bounds) around the knee when the stage begins, so a
model-based optimizer with few evaluations for many genes refines the best recipe so far instead
of sampling the whole cube. The box is kept with the optimizer's state (exact resume); the
archive's candidates inside it seed the stage::

      - {curve: 2, until: 48}                           # a line over depth per coefficient…
      - {granularity: 1, radius: 0.15}                  # …then per layer, near its knee

:class:`Schedule` is the policy: which stage is in force, its optimizer and what it is told, and
how the next one begins. An experiment without ``schedule:`` is a schedule of one stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from evomerge.experiment import Experiment, OptimizerSpec
from evomerge.optimize import make_optimizer, optimizer_class
from evomerge.optimize.base import Optimizer, OptimizerError
from evomerge.space import curves
from evomerge.space.base import SearchSpace, SpaceError, exact_inverse, load_space
from evomerge.space.parameters import ParametersSpace, curves_units

if TYPE_CHECKING:
    from evomerge.run.archive import Archive

_RESOLUTION = {"granularity", "curve"}
# a stage's keys that are not space options
_NOT_SPACE = {"until", "last", "optimizer", "target", "radius"}
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


class Schedule:
    """The stage policy of a run: the stage in force, its optimizer and genes, what a stage that
    targets the knee measures by, and how the next stage begins (seeded, boxed)."""

    def __init__(self, experiment: Experiment, **space_kw: Any) -> None:
        self.experiment = experiment
        self.stages: list[Mapping[str, Any]] = list(experiment.schedule or [])
        self.staged: StagedSpace | None = None
        if self.stages:
            self.staged = StagedSpace(
                experiment.space, experiment.space_options, self.stages, **space_kw
            )
            self.space: SearchSpace = self.staged.final
        else:
            spec = load_space(experiment.space, experiment.space_options)
            self.space = SearchSpace(spec, **space_kw)
        self.stage = 0

    def spec(self, stage: int) -> OptimizerSpec:
        """The optimizer of a stage: its own, or the experiment's."""
        own = self.stages[stage].get("optimizer") if self.stages else None
        return self.experiment.optimizer if own is None else OptimizerSpec.model_validate(own)

    def targets_knee(self, stage: int | None = None) -> bool:
        stage = self.stage if stage is None else stage
        return self.staged is not None and self.staged.targets[stage] == "knee"

    def new_optimizer(self, stage: int | None = None) -> Optimizer:
        """A fresh optimizer over a stage's genes (the stage in force by default)."""
        stage = self.stage if stage is None else stage
        space = self.staged.spaces[stage] if self.staged else self.space
        spec = self.spec(stage)
        multi = optimizer_class(spec.name).multi_objective and not self.targets_knee(stage)
        try:
            return make_optimizer(
                spec.name,
                space.genes,
                len(self.experiment.objectives) if multi else 1,
                seed=self.experiment.seed,
                options=spec.options,
            )
        except OptimizerError as e:
            if not self.stages or "optimizer" not in self.stages[stage]:
                raise
            raise OptimizerError(f"schedule[{stage}].optimizer: {e}") from None

    def lift(self, genome: np.ndarray, notes: Mapping[str, Any]) -> np.ndarray:
        """A genome of the stage in force (``notes``: its optimizer's annotations, which hold
        a trust region's box) in the space's genes."""
        x = np.asarray(genome, dtype=np.float64)
        if self.staged is None:
            return x
        if "box" in notes:
            x = from_box(notes["box"], x)
        return self.staged.lift(self.stage, x)

    def stage_ends(self, evaluations: int, budget: int) -> bool:
        """Whether the next stage begins at ``evaluations``."""
        return self.staged is not None and self.staged.stage_at(evaluations, budget) > self.stage

    def advance(
        self, archive: Archive, current: Optimizer, budget: int
    ) -> tuple[Optimizer, str] | None:
        """Between batches, once the archive reaches a stage's ``until`` (or the budget's
        ``last`` evaluations begin): the next stage's optimizer, seeded with every candidate so
        far that its genes hold (they decode to recipes in the archive, so re-asking them costs
        no evaluation), and what to log; None while the stage in force goes on."""
        if self.staged is None:
            return None
        stage = self.staged.stage_at(len(archive), budget)
        if stage <= self.stage:
            return None
        notes = {k: v for k, v in current.annotations.items() if k not in _PER_STAGE}
        self.stage = stage
        if self.targets_knee():  # the ideal point, fixed while the stage lasts
            notes.update(ideal_notes(archive))
        box = self._box(archive)
        if box is not None:
            notes["box"] = box
        optimizer = self.new_optimizer()
        seeds, seen = [], set()
        for ev in archive.evaluations:
            if not ev.ok:
                continue
            g: np.ndarray | None = self.staged.project(stage, np.asarray(ev.genome))
            if box is not None:
                g = to_box(box, g)
            if g is not None and g.tobytes() not in seen:
                seen.add(g.tobytes())
                seeds.append(g)
        n = optimizer.start_from(seeds)
        # re-asked seeds are archive hits by design: they do not count towards exhaustion
        notes["stale"] = notes.get("stale", 0) - n
        optimizer.annotations = {**notes, "stage": stage}
        where = f", within ±{self.stages[stage]['radius']} of the knee" if box else ""
        done = len(archive)
        return optimizer, f"schedule: stage {stage} after {done} evaluations ({n} seeds{where})"

    def _box(self, archive: Archive) -> list[list[float]] | None:
        """A trust-region stage's box around the knee (None: the stage's whole cube)."""
        assert self.staged is not None
        radius = self.stages[self.stage].get("radius")
        knee = archive.knee() if radius is not None else None
        if knee is None:
            return None
        centre = self.staged.project(self.stage, np.asarray(knee.genome))
        return [
            np.clip(centre - radius, 0.0, 1.0).tolist(),
            np.clip(centre + radius, 0.0, 1.0).tolist(),
        ]


_PER_STAGE = ("ideal", "scale", "box")  # annotations a stage sets for itself


def ideal_notes(archive: Archive) -> dict[str, list[float]]:
    """What a stage that targets the knee measures by: the front's ideal point, as losses, and
    each objective's unit (:meth:`Archive.ideal_point`); {} before any score."""
    point = archive.ideal_point()
    if point is None:
        return {}
    return {"ideal": point[0].tolist(), "scale": point[1].tolist()}


def from_box(box: Sequence[Sequence[float]], y: np.ndarray) -> np.ndarray:
    """A trust region's unit genome as the stage's genes."""
    lo, hi = np.asarray(box[0]), np.asarray(box[1])
    return lo + np.asarray(y, dtype=np.float64) * (hi - lo)


def to_box(box: Sequence[Sequence[float]], x: np.ndarray) -> np.ndarray | None:
    """The trust-region genome that :func:`from_box` maps to exactly ``x`` (to the last bit, so
    a seed re-asked is the archive's recipe, not a new one a rounding away), or None when ``x``
    lies outside the box or no float maps onto it."""
    lo, hi = np.asarray(box[0]), np.asarray(box[1])
    x = np.asarray(x, dtype=np.float64)
    if np.any(x < lo) or np.any(x > hi):
        return None
    width = hi - lo
    y = np.clip(np.divide(x - lo, width, out=np.zeros_like(x), where=width > 0), 0.0, 1.0)
    for i in np.flatnonzero(from_box(box, y) != x):  # the exact quotient is a few ulps away
        y[i] = exact_inverse(lambda u, i=i: lo[i] + u * width[i], x[i], y[i])
        if lo[i] + y[i] * width[i] != x[i]:
            return None
    return y

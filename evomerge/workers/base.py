"""What workers and the loop hand each other: a candidate to score (:class:`Job`) and its
outcome (:class:`Evaluation`), the unit the archive records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evomerge.checkpoint import ModelSource
    from evomerge.merge.materialize import MergePlan
    from evomerge.recipe import Recipe
    from evomerge.workers.halving import Rung


@dataclass
class Evaluation:
    """One candidate's outcome. ``values`` follow the experiment's objective order."""

    recipe_hash: str
    recipe: str  # YAML
    genome: list[float]
    values: list[float] | None
    status: str = "ok"  # ok | failed
    error: str | None = None
    fidelity: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float | None] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    worker: str = "local"
    number: int | None = None  # the Optuna trial number once recorded
    # item ids scored per objective (search-time only: the run keeps their union, note_scored)
    scored_items: dict[str, list[str]] = field(default_factory=dict)
    # when its work began (epoch seconds); unset: the commit time less ``timings["total"]``
    started: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.values is not None


@dataclass
class Job:
    """One candidate to score: ``slots`` are its places in a batch (or an asynchronous run's
    tickets; duplicates share a job), ``rung`` the successive-halving rung it is asked at, and
    ``then`` the recipe scored next, which a prefetching worker merges meanwhile."""

    recipe: Recipe
    genome: list[float]
    slots: list[int] = field(default_factory=list)
    attempts: int = 0
    rung: Rung | None = None
    then: Recipe | None = None


class WorkerBase:
    """What the loop asks of every worker besides scoring: the directions of its objectives, and
    a recipe's merge plan (which checks, before any work, that the space fits the sources)."""

    objectives: Sequence[Any]
    sources: Mapping[str, ModelSource]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def plan(self, recipe: Recipe) -> MergePlan:
        from evomerge.merge.materialize import plan

        return plan(recipe, self.sources)

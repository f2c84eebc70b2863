"""Promotion: when a cheaply estimated candidate is worth scoring on every item.

Search policy rather than estimation: it weighs a candidate's estimates (and their error bars)
against the current front, which only the search knows. The worker asks it after each cheap
evaluation and re-scores the candidate in full when the answer is yes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evomerge.evaluate.estimators import Estimate, EstimatorError


@dataclass(frozen=True)
class Promotion:
    """Re-score a cheaply estimated candidate at the next rung when its optimistic objective
    vector could still enter the current front (all objectives maximized).

    Optimism applies to objectives that are estimates below full fidelity: value + margin +
    z·stderr (stderr counts as 0 where absent). Plain floats and full-fidelity estimates count as
    they are; a candidate with nothing left to refine is never promoted. "Could enter" means no
    front point is at least as good on every objective (weak dominance: a tie adds nothing)."""

    margin: float = 0.0
    z: float = 1.0

    def optimistic(self, objective: Estimate | float) -> float:
        if not isinstance(objective, Estimate):
            return float(objective)
        if objective.fidelity >= 1.0:
            return objective.value
        return objective.value + self.margin + self.z * (objective.stderr or 0.0)

    def __call__(
        self,
        candidate: Estimate | float | Sequence[Estimate | float],
        front: Sequence[Sequence[float]] | None,
    ) -> bool:
        single = isinstance(candidate, Estimate | int | float | np.floating)
        objectives = [candidate] if single else list(candidate)  # type: ignore[arg-type]
        points = [list(f) for f in front or []]
        if any(len(f) != len(objectives) for f in points):
            n = len(objectives)
            raise EstimatorError(f"front points must have {n} objectives, like the candidate")
        if not any(isinstance(o, Estimate) and o.fidelity < 1.0 for o in objectives):
            return False  # nothing left to refine
        hope = np.array([self.optimistic(o) for o in objectives])
        dominators = np.asarray(points, dtype=float).reshape(-1, len(hope)) >= hope
        return not bool(np.any(np.all(dominators, axis=1)))


def should_promote(
    candidate: Estimate | float | Sequence[Estimate | float],
    front: Sequence[Sequence[float]] | None,
    margin: float = 0.0,
    z: float = 1.0,
) -> bool:
    """``Promotion(margin, z)(candidate, front)``: the candidate is its objective vector (one
    entry per objective, an Estimate where it was estimated), ``front`` the non-dominated
    objective vectors so far; True when more items could change the front."""
    return Promotion(margin, z)(candidate, front)

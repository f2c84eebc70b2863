"""Successive halving across fidelities: which items a rung scores, and who goes on.

Search policy, like :mod:`evomerge.workers.promotion`: the worker scores a candidate at the
rung it is asked for (:class:`Rung`), the search (:mod:`evomerge.run.fidelity`) ranks a
batch's candidates at each rung and keeps the best ``1/eta``. Rung ``r`` scores the first
``rungs[r]`` items of one seeded permutation of the task's items (a ``subsample:K`` selection,
so rungs are nested and a promoted candidate only scores the items it has not scored yet).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from evomerge.objectives import front_ranks


@dataclass
class Rung:
    """What the worker is asked for: rung ``index`` on (up to) ``items`` items per task, with
    the per-item scores the candidate already has (objective label → item id → score), which
    the worker extends in place."""

    index: int
    items: int
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


def keep(n: int, eta: int) -> int:
    """How many of ``n`` candidates scored at a rung go on to the next: ``n // eta``, at least
    one (so every batch has a candidate at its top rung)."""
    return max(1, n // eta) if n else 0


def ranking(values: Sequence[Sequence[float]], weights: Sequence[float]) -> list[int]:
    """Indices of ``values`` (objective vectors, maximized), best first: by non-dominated front
    (the first front, then the front once it is removed…), then by the weighted sum, then by
    position (the batch's order), so ties break the same way on every run."""
    if not values:
        return []
    gains = np.asarray(values, dtype=float)
    level = front_ranks(-gains)
    score = gains @ np.asarray(weights, dtype=float)
    return sorted(range(len(gains)), key=lambda i: (int(level[i]), -float(score[i]), i))


def rung_sizes(rungs: Sequence[int], n_items: int) -> list[int]:
    """Items per rung on a task of ``n_items``: capped at the task, ending at the first rung
    that reaches it (more rungs would score nothing new)."""
    out: list[int] = []
    for r in rungs:
        out.append(min(r, n_items))
        if r >= n_items:
            break
    return out

"""Objective vectors: directions, losses, front ranks, hypervolume and the knee.

The one place where a maximized objective changes sign. Optimizers minimize losses; the archive,
confirmation, reports, the search and export all read fronts, ranks and the knee from here, so
"better" means the same thing everywhere. Pure numpy (and pymoo for sorting and volume): no
run, storage or experiment in sight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

Direction = Literal["maximize", "minimize"]
DIRECTIONS: tuple[str, ...] = ("maximize", "minimize")


def maximized(direction: str) -> bool:
    """Whether higher is better; anything but the two directions is a caller's bug."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r}: expected one of {DIRECTIONS}")
    return direction == "maximize"


def direction_of(higher_is_better: bool) -> str:
    """The direction of a metric that is better when higher (or lower)."""
    return "maximize" if higher_is_better else "minimize"


def signs(directions: Sequence[str]) -> np.ndarray:
    """Per objective, what turns a value into a loss: -1 for maximized, +1 for minimized."""
    return np.array([-1.0 if maximized(d) else 1.0 for d in directions])


def losses(values: Sequence[Sequence[float]] | np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Rows of objective values as losses (every objective minimized), shape (n, objectives)."""
    s = signs(directions)
    return np.asarray(values, dtype=float).reshape(-1, len(s)) * s


def loss(values: Sequence[float], directions: Sequence[str]) -> list[float]:
    """One objective vector as losses."""
    return [float(v) for v in losses([values], directions)[0]]


def gains(values: Sequence[float], directions: Sequence[str]) -> list[float]:
    """One objective vector with every objective maximized (the negated losses)."""
    return [-v for v in loss(values, directions)]


def unbeatable(directions: Sequence[str]) -> list[float]:
    """A vector no evaluation can equal on any objective: +inf where maximized, -inf else."""
    return [math.inf if maximized(d) else -math.inf for d in directions]


def arrow(direction: str) -> str:
    """The sign a table or axis shows next to an objective's name."""
    return "↑" if maximized(direction) else "↓"


def front_ranks(loss_rows: np.ndarray) -> np.ndarray:
    """Each row's non-dominated front (0: no row dominates it; 1: none but rank-0 rows…).
    Equal rows share a front: neither dominates the other."""
    loss_rows = np.asarray(loss_rows, dtype=float)
    rank = np.zeros(len(loss_rows), dtype=int)
    if len(loss_rows) == 0:
        return rank
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    for r, members in enumerate(NonDominatedSorting().do(loss_rows)):
        rank[np.asarray(members, dtype=int)] = r
    return rank


def non_dominated(loss_rows: np.ndarray) -> list[int]:
    """Indices (ascending) of the rows on the first front."""
    return [int(i) for i in np.flatnonzero(front_ranks(loss_rows) == 0)]


def hypervolume(loss_rows: np.ndarray, reference: Sequence[float]) -> float:
    """Volume (in loss space) dominated by the rows and bounded by ``reference``; rows not
    strictly better than the reference everywhere add nothing."""
    from pymoo.indicators.hv import HV

    ref = np.asarray(reference, dtype=float)
    pts = np.asarray(loss_rows, dtype=float).reshape(-1, len(ref))
    pts = pts[np.all(pts < ref, axis=1)]
    return float(HV(ref_point=ref)(pts)) if len(pts) else 0.0


def reference_losses(
    reference: Sequence[float | None], directions: Sequence[str], loss_rows: np.ndarray
) -> np.ndarray:
    """A hypervolume reference (objective units) in loss space. A None entry (an unbounded
    metric such as perplexity, with no reference set) stands for the worst loss among
    ``loss_rows`` (0 without rows): the volume is finite, but may grow when a worse row widens
    the box."""
    if len(reference) != len(directions):
        raise ValueError(f"{len(reference)} reference values for {len(directions)} objectives")
    rows = np.asarray(loss_rows, dtype=float).reshape(-1, len(directions))
    worst = rows.max(axis=0) if len(rows) else np.zeros(len(directions))
    return np.array(
        [
            w if r is None else float(r) * s
            for r, s, w in zip(reference, signs(directions), worst, strict=True)
        ]
    )


def ideal_point(front: np.ndarray, *, common_unit: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ideal point of ``front`` (losses: each objective's best value on the front) and the
    unit each objective's distance from it is measured in.

    Scores on one common scale (``common_unit``: accuracies, exact match…, all in [0, 1]) are
    compared as they are, so a point of accuracy weighs the same on every task. Otherwise each
    objective is measured in its spread over the front, because their units differ (a cost, a
    perplexity). That scaling is not used for common units: an objective the front barely
    varies on (a skill every merge keeps, 0.85–1.0) would weigh as much as one it trades
    away (0.2–0.8), so its estimation noise would pick the knee, and finding a new extreme
    point would move the knee."""
    lo = front.min(axis=0)
    if common_unit:
        return lo, np.ones_like(lo)
    hi = front.max(axis=0)
    return lo, np.where(hi > lo, hi - lo, 1.0)


def ideal_distances(
    loss_rows: np.ndarray, *, common_unit: bool, front: np.ndarray | None = None
) -> np.ndarray:
    """Each row's distance to the ideal point of ``front`` (default: the rows are the front),
    in :func:`ideal_point`'s units."""
    lo, unit = ideal_point(loss_rows if front is None else front, common_unit=common_unit)
    return np.asarray(np.linalg.norm((loss_rows - lo) / unit, axis=1))


def shortfall(loss_rows: np.ndarray, ideal: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """How far each row falls short of ``ideal`` (:func:`ideal_point`), counting only the
    objectives where it does: for a front's members it is their distance to the front's ideal
    point, and a point past the ideal on some objective is not charged for passing it."""
    short = (np.asarray(loss_rows, dtype=float) - ideal) / unit
    return np.asarray(np.linalg.norm(np.maximum(short, 0.0), axis=-1))


def knee_index(front: np.ndarray, *, common_unit: bool) -> int:
    """Which row of ``front`` (losses) is the knee: the closest to the ideal point
    (:func:`ideal_distances`; ties: the first row)."""
    return int(np.argmin(ideal_distances(front, common_unit=common_unit)))


def utility(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Rows of values on a common scale per objective: 0 for the rows' worst value, 1 for their
    best, linear in between; an objective on which every row ties counts 1 for each."""
    values = np.asarray(values, dtype=float).reshape(-1, len(directions))
    lo, hi = values.min(axis=0), values.max(axis=0)
    up = (values - lo) / np.where(hi > lo, hi - lo, 1.0)
    out = np.where(signs(directions) < 0, up, 1.0 - up)
    return np.where(hi > lo, out, 1.0)

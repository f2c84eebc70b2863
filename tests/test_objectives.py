"""evomerge.objectives against definitions written out independently of it: dominance by its
definition, a 2-D hypervolume by a sweep, and directions by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evomerge.objectives import (
    front_ranks,
    gains,
    hypervolume,
    loss,
    losses,
    non_dominated,
    reference_losses,
    unbeatable,
    utility,
)

# small integer grids make ties and duplicate rows common
rows = st.integers(1, 3).flatmap(
    lambda m: st.lists(st.lists(st.integers(0, 4), min_size=m, max_size=m), max_size=12)
)


def _dominates(a, b) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


@settings(max_examples=200, deadline=None)
@given(rows)
def test_front_ranks_peel_fronts_by_the_definition_of_dominance(pts):
    rank = front_ranks(np.array(pts, dtype=float))
    assert len(rank) == len(pts)
    for i, p in enumerate(pts):
        dominators = [rank[j] for j, q in enumerate(pts) if _dominates(q, p)]
        # every row that dominates p sits on an earlier front, and p is not on a later front
        # than it must be: one past its deepest dominator's (0 when nothing dominates it)
        assert all(r < rank[i] for r in dominators)
        assert rank[i] == (max(dominators) + 1 if dominators else 0)
    assert non_dominated(np.array(pts, dtype=float)) == [i for i, r in enumerate(rank) if r == 0]


def _sweep_hv(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """2-D minimization hypervolume: sort by x, add the strips each new lower y opens."""
    pts = sorted(p for p in points if p[0] < ref[0] and p[1] < ref[1])
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y < best_y:  # levels [y, best_y) are first reached here, and stay reached to ref x
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10), st.integers(0, 10)), max_size=10))
def test_hypervolume_equals_a_2d_sweep(pts):
    ref = (8.0, 9.0)
    got = hypervolume(np.array(pts, dtype=float).reshape(-1, 2), ref)
    assert got == pytest.approx(_sweep_hv([(float(x), float(y)) for x, y in pts], ref))


def test_directions_turn_values_into_losses_and_back():
    d = ["maximize", "minimize", "maximize"]
    assert loss([0.7, 3.0, 0.1], d) == [-0.7, 3.0, -0.1]
    assert gains([0.7, 3.0, 0.1], d) == [0.7, -3.0, 0.1]
    assert losses([[1, 2, 3], [4, 5, 6]], d).tolist() == [[-1, 2, -3], [-4, 5, -6]]
    assert unbeatable(d) == [math.inf, -math.inf, math.inf]
    with pytest.raises(ValueError, match="upward"):
        loss([1.0], ["upward"])


def test_a_missing_reference_is_the_worst_loss_seen():
    d = ["maximize", "minimize"]
    rows = losses([[0.5, 10.0], [0.9, 30.0]], d)
    # accuracy: reference 0 → loss 0; perplexity: none → the worst (highest) seen, 30
    assert reference_losses([0.0, None], d, rows).tolist() == [0.0, 30.0]
    with pytest.raises(ValueError, match="1 reference values for 2 objectives"):
        reference_losses([0.0], d, rows)


def test_utility_scales_each_objective_from_worst_to_best():
    d = ["maximize", "minimize"]
    u = utility(np.array([[0.2, 5.0], [0.6, 1.0], [0.4, 3.0]]), d)
    np.testing.assert_allclose(u, [[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    # a tie across every row counts as the best for each
    assert utility(np.array([[0.3, 2.0], [0.5, 2.0]]), d)[:, 1].tolist() == [1.0, 1.0]

"""The knee: which front member the run calls its compromise.

Accuracies share one scale, so the knee is measured in plain units; objectives of other units
(a cost, a perplexity) are each scaled over the front first. The expected knees below are worked
out by hand from the points, not read from the code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from evomerge.genes import Gene
from evomerge.objectives import ideal_distances, ideal_point, knee_index, shortfall
from evomerge.run.archive import UNIT_OBJECTIVES, Archive, Evaluation
from evomerge.run.confirm import choose

# maximized accuracies. Ideal point (0.80, 1.00).
#   plain units:  A (0, 0.14) → 0.140   C (0.20, 0.03) → 0.202   B (0.30, 0) → 0.300   → A
#   front-scaled (spans 0.30, 0.14):  A (0, 1) → 1   C (0.667, 0.214) → 0.700   B (1, 0) → 1   → C
A, C, B = [0.80, 0.86], [0.60, 0.97], [0.50, 1.00]
DOMINATED = [0.55, 0.85]


def _open(path: Path, units: list[bool] | None = None) -> Archive:
    return Archive(
        f"sqlite:///{path}",
        objectives=["rev9", "shift3"],
        directions=["maximize", "maximize"],
        genes=[Gene("g")],
        experiment_hash="h",
        unit_objectives=units,
    )


def _archive(path: Path, units: list[bool] | None) -> Archive:
    archive = _open(path, units)
    for i, v in enumerate([B, DOMINATED, C, A]):
        archive.record(Evaluation(f"r{i}", "method: linear\n", [0.1 * i], v))
    return archive


@pytest.mark.parametrize(
    ("units", "knee"),
    [
        ([True, True], A),  # two accuracies: plain units
        ([True, False], C),  # an objective of another unit: each scaled over the front
        (None, C),  # a run from before the attribute: the rule it was run with
    ],
)
def test_the_knee_rule_follows_the_objectives_units(
    tmp_path: Path, units: list[bool] | None, knee: list[float]
) -> None:
    archive = _archive(tmp_path / "a.db", units)
    got = archive.knee()
    assert got is not None and got.values == knee
    assert archive.study.user_attrs.get(UNIT_OBJECTIVES) == units
    again = _open(tmp_path / "a.db").knee()  # as Archive.open: the units come from the study
    assert again is not None and again.number == got.number


@pytest.mark.parametrize(
    ("units", "order"),
    [([True, True], [A, C, B, DOMINATED]), ([True, False], [C, B, A, DOMINATED])],
)
def test_confirm_top_k_ranks_front_by_front_by_the_knee_rule_knee_first(
    tmp_path: Path, units: list[bool], order: list[list[float]]
) -> None:
    # the front-scaled rule puts A and B at distance 1 each: the earlier trial (B) first
    archive = _archive(tmp_path / "a.db", units)
    ranked = [e.values for e in choose(archive, top=4)]
    assert ranked == order and ranked[0] == archive.knee().values  # type: ignore[union-attr]


def _front(points: np.ndarray) -> np.ndarray:
    return points[sorted(NonDominatedSorting().do(points, only_non_dominated_front=True))]


def _points(objectives: int, most: int) -> st.SearchStrategy[list[list[float]]]:
    point = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=objectives, max_size=objectives)
    return st.lists(point, min_size=1, max_size=most)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(_points(3, 12), _points(3, 1))
def test_in_plain_units_a_new_point_below_the_ideal_moves_the_knee_only_onto_itself(
    points: list[list[float]], new: list[list[float]]
) -> None:
    # Losses (minimized). A new candidate that does not improve the ideal point on any
    # objective, however far it stretches the front, either becomes the knee or leaves it
    # where it was: front-range scaling does not have this property (a new extreme point
    # rescales every other member's distance).
    old = _front(np.asarray(points))
    ideal = old.min(axis=0)
    p = np.maximum(np.asarray(new[0]), ideal)  # no better than the ideal on any objective
    before = old[knee_index(old, common_unit=True)]
    both = _front(np.vstack([old, p]))
    after = both[knee_index(both, common_unit=True)]
    dist = np.linalg.norm(after - ideal)
    assert (
        np.array_equal(after, before)
        or np.array_equal(after, p)
        or (
            # a tie in distance resolves to the earlier row: still as close as either
            np.isclose(dist, min(np.linalg.norm(before - ideal), np.linalg.norm(p - ideal)))
        )
    )


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    _points(2, 10),
    st.floats(1e-3, 1e3),
    st.floats(-1e3, 1e3),
)
def test_across_units_the_knee_does_not_depend_on_an_objectives_unit(
    points: list[list[float]], scale: float, shift: float
) -> None:
    # A cost counted in other units (×scale, +shift) must not change which member is the knee.
    front = _front(np.asarray(points))
    other = front * [1.0, scale] + [0.0, shift]
    k, k_other = knee_index(front, common_unit=False), knee_index(other, common_unit=False)
    dist = ideal_distances(front, common_unit=False)  # checked by hand in the tests above
    assert k == k_other or np.isclose(dist[k], dist[k_other])  # rounding may break a tie


# -- how far short of the ideal point (what a schedule's `target: knee` stage minimizes) --------


@pytest.mark.parametrize(
    ("units", "want"),
    [
        # ideal (0.80, 1.00); the new point (0.90, 0.90) passes it on rev9, falls 0.10 short on
        # shift3, which the front spans 0.14 of
        ([True, True], 0.10),
        ([True, False], 0.10 / 0.14),
    ],
)
def test_a_point_past_the_ideal_is_charged_only_where_it_falls_short(
    tmp_path: Path, units: list[bool], want: float
) -> None:
    archive = _archive(tmp_path / "a.db", units)
    point = archive.ideal_point()
    assert point is not None
    ideal, unit = point
    assert -ideal == pytest.approx([0.80, 1.00])  # losses: maximized scores change sign
    assert shortfall(np.array([-0.90, -0.90]), ideal, unit) == pytest.approx(want)
    # and a member of the front is charged its distance by the knee's rule
    assert shortfall(-np.array(C), ideal, unit) == pytest.approx(
        np.hypot(0.20, 0.03) if units[1] else np.hypot(0.20 / 0.30, 0.03 / 0.14)
    )


def test_an_empty_archive_has_no_ideal_point(tmp_path: Path) -> None:
    assert _open(tmp_path / "a.db", [True, True]).ideal_point() is None


@settings(max_examples=200, deadline=None, derandomize=True)
@given(_points(3, 12), _points(3, 4), st.booleans())
def test_shortfall_is_the_ideal_distance_on_the_front_and_never_more_off_it(
    points: list[list[float]], others: list[list[float]], common_unit: bool
) -> None:
    front = _front(np.asarray(points))
    ideal, unit = ideal_point(front, common_unit=common_unit)
    assert shortfall(front, ideal, unit) == pytest.approx(
        ideal_distances(front, common_unit=common_unit)
    )
    off = np.asarray(others)
    short = shortfall(off, ideal, unit)
    assert np.all(short <= ideal_distances(off, common_unit=common_unit, front=front) + 1e-12)
    # a point at least as good as the ideal everywhere falls short of nothing
    assert np.all(shortfall(np.minimum(off, ideal), ideal, unit) == 0.0)

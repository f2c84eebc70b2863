"""The question a user brings to a finished run: how does the merge to take (the knee) compare
with what they already had (the base, each source, the uniform merge)? One table, per objective:
each reference's score and the knee's difference from it, with its error."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.table import Table

from evomerge.objectives import arrow
from evomerge.report.data import Point, RunView


@dataclass
class Comparison:
    """A reference model against the knee: its scores, and knee − reference per objective with
    the difference's standard error (the two estimates' errors combined; None where either has
    none)."""

    label: str
    kind: str
    values: list[float]
    differences: list[float]
    errors: list[float | None]


def headline(view: RunView) -> tuple[Point, list[Comparison]] | None:
    """The knee and each reference point beside it, on the scores the search saw (the
    reference points are scored by the run's own estimators as it starts); None before a
    knee or without reference points."""
    knee = next((p for p in view.points(front_only=True) if p.knee), None)
    refs = view.reference_points()
    if knee is None or not refs:
        return None
    rows = []
    for r in refs:
        errors = [
            None if a is None or b is None else math.hypot(a, b)
            for a, b in zip(knee.stderr, r.stderr, strict=True)
        ]
        diffs = [k - v for k, v in zip(knee.values, r.values, strict=True)]
        rows.append(Comparison(r.label, r.kind, list(r.values), diffs, errors))
    return knee, rows


def headline_table(view: RunView) -> Table | None:
    """:func:`headline` as a terminal table in 80 columns: a row per reference, a column per
    objective, each cell the reference's score and the knee's difference (Δ = knee − it)."""
    found = headline(view)
    if found is None:
        return None
    knee, rows = found
    t = Table(title=f"The knee (trial {knee.trial}) against the references")
    t.add_column("", justify="right")
    for o in view.objectives:
        t.add_column(f"{o.name} {arrow(o.direction)}", justify="right")
    t.add_row(
        f"knee {knee.trial}",
        *[_value(v, s) for v, s in zip(knee.values, knee.stderr, strict=True)],
        style="bold",
    )
    for c in rows:
        t.add_row(
            c.label,
            *[
                f"{v:.3f} Δ {d:+.3f}" + ("" if e is None else f"±{e:.3f}")
                for v, d, e in zip(c.values, c.differences, c.errors, strict=True)
            ],
        )
    t.caption = (
        "Δ: the knee's score minus the reference's (± its standard error); ↑: higher is better. "
        "Search-time scores: the references on the run's own items; `evomerge confirm` scores "
        "the knee on held-out items."
    )
    return t


def _value(v: float, se: float | None) -> str:
    return f"{v:.3f}" if se is None else f"{v:.3f} ±{se:.3f}"

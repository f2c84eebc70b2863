"""The question a user brings to a finished run: how does the merge to take (the knee) compare
with what they already had (the base, each source, the uniform merge)? One table, per objective:
each reference's score and the knee's difference from it, with its error
(:mod:`evomerge.run.standing` computes it; this draws it for a terminal)."""

from __future__ import annotations

from rich.table import Table

from evomerge.objectives import arrow
from evomerge.report.data import RunView
from evomerge.run.standing import Comparison, Standing, standing


def headline(view: RunView, trial: int | None = None) -> Standing | None:
    """``trial`` (default: the knee) against the run's reference points."""
    return standing(view.archive, view.references, trial)


def headline_table(view: RunView) -> Table | None:
    """:func:`headline` as a terminal table in 80 columns: a row per reference, a column per
    objective, each cell the reference's score and the knee's difference (Δ = knee − it)."""
    found = headline(view)
    if found is None:
        return None
    knee = found.trial
    t = Table(title=f"The knee (trial {knee.trial}) against the references, {found.basis}")
    t.add_column("", justify="right")
    for o in view.objectives:
        t.add_column(f"{o.name} {arrow(o.direction)}", justify="right")
    t.add_row(
        f"knee {knee.trial}",
        *[_value(v, s) for v, s in zip(knee.values, knee.stderr, strict=True)],
        style="bold",
    )
    for c in found.rows:
        t.add_row(c.label, *cells(c))
    t.caption = found.caption + " ↑: higher is better."
    return t


def cells(c: Comparison) -> list[str]:
    """Per objective: the reference's score and the difference, '0.812 Δ +0.041±0.020'."""
    return [
        f"{v:.3f} Δ {d:+.3f}" + ("" if e is None else f"±{e:.3f}")
        for v, d, e in zip(c.values, c.differences, c.errors, strict=True)
    ]


def _value(v: float, se: float | None) -> str:
    return f"{v:.3f}" if se is None else f"{v:.3f} ±{se:.3f}"

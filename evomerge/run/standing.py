"""Where a chosen trial stands against what the user already had: the base, each source and the
uniform merge (the run's reference points), per objective, with the difference and its error;
and which member of the run the trial is (the knee, the best on an objective, a front member).

Held-out scores where both sides have them (``evomerge confirm`` scores the chosen trials and
the reference points on the same items the search never saw), else the scores the search saw:
a comparison never mixes the two. ``status``, the report and the model card all read this."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from evomerge.run.archive import Archive, Evaluation
from evomerge.run.reference_points import ReferencePoint

HELD_OUT, SEARCH = "held-out", "search"


@dataclass
class Scores:
    """One model's score per objective (the archive's order) and their standard errors."""

    label: str
    trial: int | None
    values: list[float]
    stderr: list[float | None]


@dataclass
class Comparison:
    """A reference model against the chosen trial: its scores, and trial − reference per
    objective with the difference's standard error (the two scores' errors combined; None where
    either has none)."""

    label: str
    kind: str
    values: list[float]
    differences: list[float]
    errors: list[float | None]


@dataclass
class Standing:
    """The chosen trial and each reference beside it. ``basis``: ``held-out`` (every score on
    the run's held-out items) or ``search`` (the scores the search saw, the references on the
    run's own item subsets)."""

    trial: Scores
    rows: list[Comparison]
    basis: str

    @property
    def caption(self) -> str:
        on = (
            "every score on held-out items the search never saw (`evomerge confirm`)"
            if self.basis == HELD_OUT
            else "as the search saw them (the references on its own item subsets); "
            "`evomerge confirm` scores both on held-out items"
        )
        return f"Δ: the trial's score minus the reference's (± its standard error), {on}."


def standing(
    archive: Archive, references: Sequence[ReferencePoint], trial: int | None = None
) -> Standing | None:
    """``trial`` (default: the knee) against each reference scored on every objective, on
    held-out scores when the trial and every reference were confirmed on them; None before a
    knee or without reference points."""
    names = archive.objectives
    refs = [r for r in references if r.values is not None and len(r.values) == len(names)]
    ev = archive.knee() if trial is None else archive.trial(trial)
    if ev is None or not ev.ok or ev.values is None or not refs:
        return None
    chosen = Scores(f"trial {ev.number}", ev.number, list(ev.values), _se(ev.stderr, names))
    others = [Scores(r.label, None, list(r.values or []), _se(r.stderr, names)) for r in refs]
    basis = SEARCH
    confirmed = archive.confirmations("holdout").get(int(ev.number or 0))
    held = [r.confirmed.get("holdout") for r in refs]
    sets = [confirmed, *held]
    if all(s is not None and set(names) <= set(s.get("scores") or {}) for s in sets):
        basis = HELD_OUT
        chosen = _held_out(chosen, confirmed, names)  # type: ignore[arg-type]
        others = [_held_out(o, h, names) for o, h in zip(others, held, strict=True)]  # type: ignore[arg-type]
    rows = []
    for r, o in zip(refs, others, strict=True):
        errors = [
            None if a is None or b is None else math.hypot(a, b)
            for a, b in zip(chosen.stderr, o.stderr, strict=True)
        ]
        diffs = [k - v for k, v in zip(chosen.values, o.values, strict=True)]
        rows.append(Comparison(r.label, r.kind, o.values, diffs, errors))
    return Standing(chosen, rows, basis)


def role(archive: Archive, ev: Evaluation) -> str:
    """Which member of the run ``ev`` is, and why one would take it."""
    knee = archive.knee()
    if knee is not None and knee.number == ev.number:
        return (
            "the knee: of the Pareto front of the search, the member nearest the ideal point "
            "(the best score on every objective at once)"
        )
    best = [o for o in archive.objectives if archive.best(o).number == ev.number]
    if best:
        return f"the best on {', '.join(best)} of the search"
    if ev.number in {e.number for e in archive.front()}:
        return "a member of the Pareto front (no other trial beats it on every objective)"
    return "a trial of the search, not on its Pareto front"


def _se(stderr: dict[str, float | None], names: list[str]) -> list[float | None]:
    out: list[float | None] = []
    for n in names:
        v = stderr.get(n)
        out.append(float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None)
    return out


def _held_out(s: Scores, confirmed: dict[str, dict[str, float | None]], names: list[str]) -> Scores:
    return Scores(
        s.label,
        s.trial,
        [float(confirmed["scores"][n]) for n in names],  # type: ignore[arg-type]
        _se(confirmed.get("stderr") or {}, names),
    )

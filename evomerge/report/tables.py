"""The front (or every evaluated recipe) as a terminal table, JSON and an HTML table."""

from __future__ import annotations

import html
import json
from typing import Any

from rich.table import Table

from evomerge.objectives import arrow
from evomerge.report.data import Point, RunView
from evomerge.run.archive import Archive


def front_rows(source: RunView | Archive, *, all_: bool = False) -> list[dict[str, Any]]:
    """One row per front member (``all_``: per evaluated recipe, with its front rank)."""
    view = RunView.of(source)
    by_number = {e.number: e for e in view.archive.evaluations}
    rows = []
    for p in view.points(front_only=not all_):
        e = by_number[p.trial]
        rows.append(
            {
                "trial": p.trial,
                "hash": e.recipe_hash,
                **dict(zip(view.names, p.values, strict=True)),
                "fidelity": dict(e.fidelity),
                "stderr": {n: s for n, s in zip(view.names, p.stderr, strict=True)},
                "rank": p.rank,
                "knee": p.knee,
                "recipe": p.summary,
            }
        )
    return rows


def _items(fid: dict[str, float]) -> str:
    shares = sorted(set(fid.values()))
    if not shares:
        return "-"
    if shares == [1.0]:
        return "full"
    if len(shares) == 1:  # the same share of every task's items
        return f"{shares[0]:.0%}"
    return ", ".join(f"{k} {v:.0%}" for k, v in fid.items())


def _fmt(v: float, decimals: int = 4) -> str:
    return f"{v:.4g}" if abs(v) >= 1e4 else f"{v:.{decimals}f}"


def _with_error(v: float, se: float | None) -> str:
    return _fmt(v) if se is None else f"{_fmt(v)} ± {_fmt(se)}"


def front_table(
    source: RunView | Archive,
    title: str = "Pareto front",
    *,
    all_: bool = False,
    limit: int | None = None,
) -> Table:
    """The front as a terminal table. ``limit``: the ``limit`` members nearest the ideal point,
    knee first, in 80 columns (shares of items scored that every row shares and the hashes'
    tails go to the caption), with a line saying how many members the front has."""
    view = RunView.of(source)
    rows = front_rows(view, all_=all_)
    compact = limit is not None
    if compact:
        by_number = {e.number: e for e in view.archive.evaluations}
        distance = view.archive.ideal_distances([by_number[r["trial"]] for r in rows])
        order = sorted(range(len(rows)), key=lambda i: (not rows[i]["knee"], distance[i]))
        rows = [rows[i] for i in order[:limit]]
    items = {_items(r["fidelity"]) for r in rows}
    shared_items = compact and len(items) == 1
    t = Table(title=title)
    t.add_column("trial", justify="right")
    if all_:
        t.add_column("rank", justify="right")
    for o in view.objectives:
        t.add_column(f"{o.name} {arrow(o.direction)}", justify="right")
    if not shared_items:
        t.add_column("items scored")
    t.add_column("hash")
    cell = _compact if compact else _with_error
    for row in rows:
        t.add_row(
            f"{row['trial']}{(' knee' if compact else ' (knee)') if row['knee'] else ''}",
            *([str(row["rank"])] if all_ else []),
            *[cell(row[n], row["stderr"].get(n)) for n in view.names],
            *([] if shared_items else [_items(row["fidelity"])]),
            row["hash"][:8] if compact else row["hash"],
        )
    for p in view.reference_points() if not all_ else []:
        t.add_row(
            f"[dim]{p.label}[/]",
            *[f"[dim]{cell(v, s)}[/]" for v, s in zip(p.values, p.stderr, strict=True)],
            *([] if shared_items else ["[dim]reference[/]"]),
            "",
        )
    if compact:
        members = len(view.archive.front())
        shown = (
            f"the {len(rows)} nearest the ideal point, knee first" if members > len(rows) else "all"
        )
        scored = f"; items scored: {items.pop()}" if shared_items else ""
        t.caption = f"{members} members on the front, {shown}{scored}; dim: reference points"
    return t


def _compact(v: float, se: float | None) -> str:
    return _fmt(v, 3) if se is None else f"{_fmt(v, 3)} ±{_fmt(se, 3)}"


def front_json(source: RunView | Archive, *, all_: bool = False) -> str:
    """Names, directions, metrics and estimators of the objectives; the front's (or every
    recipe's) values with fidelity (share of items scored) and error bars (the estimator's
    standard error, null where it has none); the reference points."""
    view = RunView.of(source)
    return json.dumps(
        {
            "run": view.run_name,
            "objectives": view.names,
            "directions": view.archive.directions,
            "objective_info": [
                {
                    "name": o.name,
                    "direction": o.direction,
                    "metric": o.metric,
                    "estimator": o.estimator,
                    "hypervolume_reference": o.reference,
                }
                for o in view.objectives
            ],
            "front" if not all_ else "evaluated": front_rows(view, all_=all_),
            "reference_points": [
                {
                    "label": p.label,
                    "kind": p.kind,
                    **dict(zip(view.names, p.values, strict=True)),
                    "stderr": dict(zip(view.names, p.stderr, strict=True)),
                    "fidelity": dict(zip(view.names, p.fidelity, strict=True)),
                }
                for p in view.reference_points()
            ],
        },
        indent=2,
    )


def html_table(view: RunView, points: list[Point], *, rank: bool = False) -> str:
    """Rows with value ± error and fidelity per objective; the knee's row marked."""
    head = ["trial" if points and points[0].trial is not None else "model"]
    head += ["rank"] if rank else []
    for o in view.objectives:
        head += [f"{o.name} {arrow(o.direction)}", "± error", "fidelity"]
    head.append("recipe")
    rows = []
    for p in points:
        cells = [p.label.removeprefix("trial ") + (" (knee)" if p.knee else "")]
        cells += [str(p.rank or "-")] if rank else []
        for v, se, fid in zip(p.values, p.stderr, p.fidelity, strict=True):
            cells += [
                _fmt(v),
                "-" if se is None else _fmt(se),
                "-" if fid is None else f"{fid:.0%}",
            ]
        cells.append(p.summary)
        attrs = " class=knee" if p.knee else ""
        if p.trial is not None:
            attrs += f" data-trial={p.trial}"
        rows.append(f"<tr{attrs}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"

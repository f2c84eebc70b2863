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


SORTS = ("knee", "trial")  # or an objective's name: best first


def front_table(
    source: RunView | Archive,
    title: str = "Pareto front",
    *,
    all_: bool = False,
    limit: int | None = None,
    sort: str = "knee",
) -> Table:
    """The front (``all_``: every recipe, with its front rank) as a terminal table in 80
    columns: the knee first and in bold, then by distance to the ideal point (``sort``: by
    trial, or by an objective, best first); a share of items scored that every row shares and
    the hashes' tails go to the caption. ``limit``: only the first ``limit`` rows."""
    view = RunView.of(source)
    rows = _sorted(view, front_rows(view, all_=all_), sort)
    shown = rows if limit is None else rows[:limit]
    items = {_items(r["fidelity"]) for r in shown}
    shared_items = len(items) == 1
    t = Table(title=title)
    t.add_column("trial", justify="right")
    if all_:
        t.add_column("rank", justify="right")
    for o in view.objectives:
        t.add_column(f"{o.name} {arrow(o.direction)}", justify="right")
    if not shared_items:
        t.add_column("items scored")
    t.add_column("hash")
    for row in shown:
        t.add_row(
            f"{row['trial']}{' knee' if row['knee'] else ''}",
            *([str(row["rank"])] if all_ else []),
            *[_compact(row[n], row["stderr"].get(n)) for n in view.names],
            *([] if shared_items else [_items(row["fidelity"])]),
            row["hash"][:8],
            style="bold" if row["knee"] else None,
        )
    for p in view.reference_points() if not all_ else []:
        t.add_row(
            f"[dim]{p.label}[/]",
            *[f"[dim]{_compact(v, s)}[/]" for v, s in zip(p.values, p.stderr, strict=True)],
            *([] if shared_items else ["[dim]reference[/]"]),
            "",
        )
    what = "recipes" if all_ else "members on the front"
    order = {"knee": "knee first, then nearest the ideal point", "trial": "by trial"}.get(
        sort, f"best {sort} first"
    )
    count = f"the first {len(shown)} of {len(rows)}" if len(shown) < len(rows) else len(rows)
    scored = f"; items scored: {items.pop()}" if shared_items else ""
    dim = "" if all_ else "; dim: reference points"
    t.caption = f"{count} {what}, {order}{scored}; hash: its first 8 digits{dim}"
    return t


def _sorted(view: RunView, rows: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """Rows in the order ``sort`` asks (see :func:`front_table`)."""
    if sort == "trial":
        return sorted(rows, key=lambda r: r["trial"])
    if sort in view.names:
        sign = 1.0 if view.archive.directions[view.names.index(sort)] == "minimize" else -1.0
        return sorted(rows, key=lambda r: (sign * r[sort], r["trial"]))
    if sort != "knee":
        known = ", ".join([*SORTS, *view.names])
        raise ValueError(f"sort: one of {known}, got {sort!r}")
    by_number = {e.number: e for e in view.archive.evaluations}
    distance = view.archive.ideal_distances([by_number[r["trial"]] for r in rows])
    order = sorted(range(len(rows)), key=lambda i: (not rows[i]["knee"], distance[i]))
    return [rows[i] for i in order]


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

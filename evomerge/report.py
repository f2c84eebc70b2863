"""Fronts and run summaries for people: rich tables, JSON, plots (PNG, or HTML embedding it)."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from evomerge.archive import Archive, Evaluation


def front_rows(archive: Archive) -> list[dict[str, Any]]:
    knee = archive.knee()
    rows = []
    for e in sorted(archive.front(), key=lambda e: e.number or 0):
        assert e.values is not None
        rows.append(
            {
                "trial": e.number,
                "hash": e.recipe_hash,
                **dict(zip(archive.objectives, e.values, strict=True)),
                "fidelity": e.fidelity,
                "knee": knee is not None and e.number == knee.number,
            }
        )
    return rows


def front_table(archive: Archive, title: str = "Pareto front") -> Table:
    t = Table(title=title)
    t.add_column("trial", justify="right")
    for name, d in zip(archive.objectives, archive.directions, strict=True):
        t.add_column(f"{name} {'↑' if d == 'maximize' else '↓'}", justify="right")
    t.add_column("items scored")
    t.add_column("recipe")
    for row in front_rows(archive):
        fid = row["fidelity"]
        shares = sorted(set(fid.values()))
        if not shares:
            items = "-"
        elif shares == [1.0]:
            items = "full"
        elif len(shares) == 1:  # the same share of every task's items
            items = f"{shares[0]:.0%}"
        else:
            items = ", ".join(f"{k} {v:.0%}" for k, v in fid.items())
        t.add_row(
            f"{row['trial']}{' (knee)' if row['knee'] else ''}",
            *[_fmt(row[o]) for o in archive.objectives],
            items or "-",
            row["hash"],
        )
    return t


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) >= 1e4 else f"{v:.4f}"


def front_json(archive: Archive) -> str:
    return json.dumps(
        {
            "objectives": archive.objectives,
            "directions": archive.directions,
            "front": front_rows(archive),
        },
        indent=2,
    )


def plot_front(archive: Archive, path: Path) -> Path:
    """Every evaluation in grey, the front in colour, the knee marked; one panel per pair of
    objectives. ``.png`` writes the image; ``.html`` a page embedding it with the front table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = archive.objectives
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))] or [(0, 0)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4), squeeze=False)
    ok = [e for e in archive.evaluations if e.ok]
    front, knee = archive.front(), archive.knee()
    for ax, (i, j) in zip(axes[0], pairs, strict=True):
        _scatter(ax, ok, i, j, color="0.75", label="evaluated")
        _scatter(ax, front, i, j, color="C0", label="front")
        if knee is not None:
            _scatter(ax, [knee], i, j, color="C3", label="knee", marker="*", s=160)
        ax.set_xlabel(_axis_label(archive, i))
        ax.set_ylabel(_axis_label(archive, j) if j != i else "trial")
        _scale(ax.set_xscale, ok, i)
        if j != i:
            _scale(ax.set_yscale, ok, j)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path = Path(path)
    if path.suffix == ".html":
        img = base64.b64encode(buf.getvalue()).decode()
        rows = front_rows(archive)
        cells = "".join(
            "<tr>"
            + "".join(f"<td>{html.escape(_cell(r[k]))}</td>" for k in ("trial", *names, "hash"))
            + "</tr>"
            for r in rows
        )
        head = "".join(f"<th>{html.escape(k)}</th>" for k in ("trial", *names, "hash"))
        path.write_text(
            f"<!doctype html><meta charset=utf-8><title>evomerge front</title>"
            f"<img src='data:image/png;base64,{img}'><table border=1><tr>{head}</tr>{cells}"
            "</table>"
        )
    else:
        path.write_bytes(buf.getvalue())
    return path


def _axis_label(archive: Archive, i: int) -> str:
    """The objective and which way is better: perplexity is minimized, log-prob maximized."""
    better = "higher" if archive.directions[i] == "maximize" else "lower"
    return f"{archive.objectives[i]} ({better} is better)"


def _scale(set_scale: Any, evs: Sequence[Evaluation], i: int) -> None:
    """A log axis for positive values spanning more than two decades (perplexities do)."""
    vals = [e.values[i] for e in evs if e.values]
    if vals and min(vals) > 0 and max(vals) / min(vals) > 100:
        set_scale("log")


def _cell(v: Any) -> str:
    return _fmt(v) if isinstance(v, float) else str(v)


def _scatter(ax: Any, evs: Sequence[Evaluation], i: int, j: int, **kw: Any) -> None:
    if not evs:
        return
    xs = [e.values[i] for e in evs if e.values]
    ys = [e.values[j] if i != j else e.number for e in evs if e.values]
    ax.scatter(xs, ys, **kw)

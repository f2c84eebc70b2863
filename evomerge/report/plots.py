"""Interactive figures (plotly): the front with its reference points, the run's progress and a
recipe's per-layer coefficients. Each trace carries the trial numbers in ``customdata`` (None
for reference points), so what is drawn can be read back from the page."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from evomerge.objectives import arrow, maximized
from evomerge.recipe import Recipe
from evomerge.report.data import Point, RunView, reference_styles
from evomerge.report.recipes import layer_panels, panel_bounds, routing_slots

_GREY, _FRONT, _KNEE, _REF = "#b0b0b0", "#1f77b4", "#d62728", "#2ca02c"
_MEAN = "#ff7f0e"


def hover(view: RunView, p: Point) -> str:
    """Trial (or reference model), each objective with its error bar and fidelity, the recipe."""
    head = p.label + (" (knee)" if p.knee else "") + (f" · front rank {p.rank}" if p.rank else "")
    lines = [f"<b>{head}</b>"]
    for name, v, se, fid in zip(view.names, p.values, p.stderr, p.fidelity, strict=True):
        err = f" ± {se:.4f}" if se is not None else ""
        items = f" ({fid:.0%} of items)" if fid is not None else ""
        lines.append(f"{name} = {v:.4f}{err}{items}")
    lines.append(p.summary)
    if p.profile:
        lines.append(p.profile)
    return "<br>".join(lines)


def front_figure(view: RunView) -> go.Figure:
    """2 objectives: a scatter, the front as a staircase; 3: a scatter matrix; more: parallel
    coordinates. Every evaluated recipe in grey, the front in colour, the knee as a star, the
    reference points as labelled markers."""
    evaluated = view.points()
    front = [p for p in evaluated if p.rank == 1]
    refs = view.reference_points()
    k = len(view.names)
    if k <= 2:
        fig = _front_2d(view, evaluated, front, refs)
    elif k == 3:
        fig = _front_splom(view, evaluated, front, refs)
    else:
        fig = _front_parcoords(view, evaluated, refs)
    fig.update_layout(  # the page's heading names the run: no title here to say it twice
        template="plotly_white",
        height=560,
        legend={"orientation": "h", "y": -0.15},
    )
    return fig


def _xy(view: RunView, pts: list[Point]) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    if len(view.names) == 1:  # one objective: its value over trials
        return (
            [p.trial for p in pts],
            [p.values[0] for p in pts],
            [None] * len(pts),
            [p.stderr[0] or 0 for p in pts],
        )
    return (
        [p.values[0] for p in pts],
        [p.values[1] for p in pts],
        [p.stderr[0] or 0 for p in pts],
        [p.stderr[1] or 0 for p in pts],
    )


def _front_2d(
    view: RunView, evaluated: list[Point], front: list[Point], refs: list[Point]
) -> go.Figure:
    fig = go.Figure()

    def add(pts: list[Point], name: str, marker: dict[str, Any], **kw: Any) -> None:
        if not pts:
            return
        x, y, ex, ey = _xy(view, pts)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=name,
                customdata=[p.trial for p in pts],
                hovertext=[hover(view, p) for p in pts],
                hoverinfo="text",
                marker=marker,
                error_x={
                    "type": "data",
                    "array": ex,
                    "visible": len(view.names) > 1,
                    "thickness": 1,
                    "color": marker.get("color"),
                },
                error_y={
                    "type": "data",
                    "array": ey,
                    "visible": True,
                    "thickness": 1,
                    "color": marker.get("color"),
                },
                **{"mode": "markers", **kw},
            )
        )

    add([p for p in evaluated if p.rank != 1], "evaluated", {"color": _GREY, "size": 7})
    if len(view.names) == 2 and front:
        stair = sorted(front, key=lambda p: p.values[0])
        fig.add_trace(
            go.Scatter(
                x=[p.values[0] for p in stair],
                y=[p.values[1] for p in stair],
                name="front (staircase)",
                mode="lines",
                line={
                    "shape": "vh" if maximized(view.objectives[0].direction) else "hv",
                    "color": _FRONT,
                },
                hoverinfo="skip",
            )
        )
    add(front, "front", {"color": _FRONT, "size": 10})
    add([p for p in front if p.knee], "knee", {"color": _KNEE, "size": 18, "symbol": "star"})
    styles = reference_styles(refs)
    for p in refs:
        add(
            [p],
            p.label,
            {
                "color": styles[p.label].colour,
                "size": 12,
                "symbol": styles[p.label].symbol,
                "line": {"width": 1, "color": "black"},
            },
            mode="markers+text",
            text=[p.label],
            textposition="top center",
            legendgroup="reference points",
            legendgrouptitle_text="reference points",
        )
    fig.update_xaxes(title=view.axis_label(0) if len(view.names) == 2 else "trial")
    fig.update_yaxes(title=view.axis_label(1 if len(view.names) == 2 else 0))
    return fig


def _front_splom(
    view: RunView, evaluated: list[Point], front: list[Point], refs: list[Point]
) -> go.Figure:
    fig = go.Figure()

    def add(pts: list[Point], name: str, marker: dict[str, Any]) -> None:
        if not pts:
            return
        fig.add_trace(
            go.Splom(
                dimensions=[
                    {"label": _short(view, i), "values": [p.values[i] for p in pts]}
                    for i in range(len(view.names))
                ],
                name=name,
                customdata=[p.trial for p in pts],
                hovertext=[hover(view, p) for p in pts],
                hoverinfo="text",
                marker=marker,
                diagonal_visible=False,
                showupperhalf=False,
            )
        )

    add([p for p in evaluated if p.rank != 1], "evaluated", {"color": _GREY, "size": 6})
    add(front, "front", {"color": _FRONT, "size": 9})
    add([p for p in front if p.knee], "knee", {"color": _KNEE, "size": 16, "symbol": "star"})
    styles = reference_styles(refs)
    for p in refs:  # one trace each, its own marker: the legend names them
        add(
            [p],
            f"reference: {p.label}",
            {
                "color": styles[p.label].colour,
                "size": 11,
                "symbol": styles[p.label].symbol,
                "line": {"width": 1, "color": "black"},
            },
        )
    return fig


def _short(view: RunView, i: int) -> str:
    """A matrix cell's axis: the objective and which way is better."""
    o = view.objectives[i]
    return f"{o.name} {arrow(o.direction)}"


def _front_parcoords(view: RunView, evaluated: list[Point], refs: list[Point]) -> go.Figure:
    pts = evaluated + refs
    colour = [2 if p.knee else 1 if p.rank == 1 else 3 if p.trial is None else 0 for p in pts]
    dims = [
        {
            "label": "trial (-1: reference)",
            "values": [p.trial if p.trial is not None else -1 for p in pts],
        }
    ]
    dims += [
        {"label": view.axis_label(i), "values": [p.values[i] for p in pts]}
        for i in range(len(view.names))
    ]
    fig = go.Figure(
        go.Parcoords(
            dimensions=dims,
            line={
                "color": colour,
                "colorscale": [[0, _GREY], [0.33, _FRONT], [0.67, _KNEE], [1, _REF]],
                "cmin": 0,
                "cmax": 3,
            },
            customdata=[p.trial for p in pts],
        )
    )
    names = ", ".join(p.label for p in refs)
    fig.add_annotation(
        text=f"grey: evaluated · blue: front · red: knee · green: reference points ({names})",
        showarrow=False,
        xref="paper",
        yref="paper",
        x=0,
        y=-0.12,
    )
    return fig


def progress_figure(view: RunView) -> go.Figure:
    """Over evaluations: the hypervolume (its reference point stated), the best mean score and
    the mean of the knee so far beside the reference models' means, the best of each objective;
    failures and the coarse-to-fine stage boundaries marked."""
    prog = view.progress()
    means = "mean_best" in prog
    k = len(view.names)
    rows = 1 + int(means) + k
    fig = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.05,
        subplot_titles=[
            f"hypervolume (reference point: {view.hv_reference_text(prog['reference'])})",
            *(["mean over the objectives: the best so far and the knee's"] if means else []),
            *[f"best {n}" for n in view.names],
        ],
    )
    x = prog["trial"]
    fig.add_trace(
        go.Scatter(
            x=x,
            y=prog["hypervolume"],
            name="hypervolume",
            customdata=x,
            mode="lines",
            line={"shape": "hv", "color": _FRONT},
        ),
        row=1,
        col=1,
    )
    failed = set(prog["failed"])
    if failed:
        fig.add_trace(
            go.Scatter(
                x=[t for t in x if t in failed],
                y=[h for t, h in zip(x, prog["hypervolume"], strict=True) if t in failed],
                name="failed",
                customdata=[t for t in x if t in failed],
                mode="markers",
                marker={"symbol": "x", "color": _KNEE, "size": 9},
            ),
            row=1,
            col=1,
        )
    refs = view.reference_points()
    styles = reference_styles(refs)
    if means:
        for key, name, colour, width in (
            ("mean_best", "best mean", _MEAN, 5),  # wide: the knee's often runs along it
            ("knee_mean", "knee's mean", _KNEE, 2),
        ):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=prog[key],
                    name=name,
                    customdata=x,
                    mode="lines",
                    line={"shape": "hv", "color": colour, "width": width},
                ),
                row=2,
                col=1,
            )
        for r in refs:  # a legend entry each: labels on the lines would overlap
            m = sum(r.values) / len(r.values)
            fig.add_trace(
                go.Scatter(
                    x=[x[0], x[-1]] if x else [],
                    y=[m, m],
                    name=f"{r.label} (mean)",
                    mode="lines",
                    line={"dash": "dot", "color": styles[r.label].colour, "width": 1},
                    hovertemplate=f"{r.label}: mean {m:.4f}<extra></extra>",
                ),
                row=2,
                col=1,
            )
    for i, name in enumerate(view.names):
        row = 2 + int(means) + i
        fig.add_trace(
            go.Scatter(
                x=x,
                y=prog["best"][name],
                name=f"best {name}",
                customdata=x,
                mode="lines",
                line={"shape": "hv"},
                showlegend=False,
            ),
            row=row,
            col=1,
        )
        for r in refs:
            fig.add_trace(
                go.Scatter(
                    x=[x[0], x[-1]] if x else [],
                    y=[r.values[i], r.values[i]],
                    name=r.label,
                    legendgroup=r.label,
                    showlegend=False,
                    mode="lines",
                    line={"dash": "dot", "color": styles[r.label].colour, "width": 1},
                    hovertemplate=f"{r.label}: {r.values[i]:.4f}<extra></extra>",
                ),
                row=row,
                col=1,
            )
    for start, label in view.stage_starts():
        fig.add_vline(x=start - 0.5, line={"dash": "dash", "color": "#555", "width": 1})
        fig.add_annotation(
            x=start - 0.5,
            y=1.0,
            xref="x",
            yref="paper",
            text=label,
            showarrow=False,
            textangle=-90,
            xanchor="right",
            yanchor="top",
            font={"size": 9, "color": "#555"},
        )
    fig.update_xaxes(title="evaluation (trial)", row=rows, col=1)
    fig.update_layout(
        template="plotly_white",
        height=230 * rows,
        legend={"orientation": "h", "y": -0.06},
    )
    return fig


def recipe_figure(recipe: Recipe, num_layers: int, title: str | None) -> go.Figure:
    """A heatmap of per-layer coefficients (layers × sources, one panel per parameter); a
    routed recipe adds its slot diagram (output position × source, colour: input scale)."""
    panels = layer_panels(recipe, num_layers)
    slots = routing_slots(recipe)
    n = len(panels) + (1 if slots else 0)
    titles = [p.title for p in panels] + (["routing (colour: input scale)"] if slots else [])
    fig = make_subplots(
        rows=1,
        cols=max(n, 1),
        subplot_titles=titles or ["(no parameters)"],
        horizontal_spacing=0.06,
    )
    for c, p in enumerate(panels, start=1):
        lo, hi = panel_bounds(recipe, p)
        domain = fig.get_subplot(1, c).xaxis.domain
        fig.add_trace(
            go.Heatmap(
                z=p.values,
                x=p.sources,
                y=[f"L{la}" for la in range(len(p.values))],
                name=p.title,
                colorscale="Viridis",
                zmin=lo,
                zmax=hi,
                colorbar={"x": domain[1] + 0.003, "thickness": 8, "len": 0.9, "xpad": 0},
                texttemplate="%{z:.2f}",
                hovertemplate=f"{p.title}<br>%{{x}} · %{{y}}: %{{z:.4f}}<extra></extra>",
            ),
            row=1,
            col=c,
        )
        fig.update_yaxes(autorange="reversed", row=1, col=c)
    if slots:
        fig.add_trace(
            go.Scatter(
                x=[s[0] for s in slots],
                y=[s[1] for s in slots],
                text=[f"L{s[2]}" for s in slots],
                mode="markers+text",
                name="routing",
                marker={
                    "size": 16,
                    "symbol": "square",
                    "color": [s[3] for s in slots],
                    "colorscale": "RdBu",
                    "cmid": 1.0,
                    "showscale": True,
                },
                hovertemplate="slot %{x}: %{y} %{text}, scale %{marker.color:.3f}<extra></extra>",
            ),
            row=1,
            col=n,
        )
        fig.update_xaxes(title="output layer", row=1, col=n)
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=max(360, 28 * num_layers + 160),
        width=max(520, 260 * n),
    )
    return fig

"""Static images (matplotlib) for ``.png`` outputs: the front, the progress, a recipe."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evomerge.recipe import Recipe
from evomerge.report.data import Point, RunView, reference_styles
from evomerge.report.recipes import layer_panels, panel_bounds, routing_slots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    Path(path).write_bytes(buf.getvalue())
    return Path(path)


def front_png(view: RunView, path: Path) -> Path:
    """Every evaluation in grey, the front in colour, the knee starred, the reference points
    labelled; one panel per pair of objectives."""
    plt = _plt()
    k = len(view.names)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)] or [(0, 0)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.4 * len(pairs), 4.2), squeeze=False)
    pts = view.points()
    front = [p for p in pts if p.rank == 1]
    refs = view.reference_points()
    styles = reference_styles(refs)
    for ax, (i, j) in zip(axes[0], pairs, strict=True):
        _scatter(ax, [p for p in pts if p.rank != 1], i, j, color="0.75", label="evaluated")
        _scatter(ax, front, i, j, color="C0", label="front")
        _scatter(
            ax, [p for p in front if p.knee], i, j, color="C3", label="knee", marker="*", s=160
        )
        for r in refs:
            _scatter(
                ax,
                [r],
                i,
                j,
                color=styles[r.label].colour,
                marker=styles[r.label].marker,
                label=r.label,
                s=45,
                edgecolors="black",
                linewidths=0.6,
            )
            x, y = r.values[i], (r.values[j] if j != i else -1)
            ax.annotate(r.label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(view.axis_label(i))
        ax.set_ylabel(view.axis_label(j) if j != i else "trial")
        _scale(ax.set_xscale, pts + refs, i)
        if j != i:
            _scale(ax.set_yscale, pts + refs, j)
        ax.legend(fontsize=7)
    fig.suptitle(f"Pareto front of {view.run_name}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _scatter(ax: Any, pts: Sequence[Point], i: int, j: int, **kw: Any) -> None:
    if not pts:
        return
    xs = [p.values[i] for p in pts]
    ys = [p.values[j] if i != j else (p.trial if p.trial is not None else -1) for p in pts]
    ax.scatter(xs, ys, **kw)


def _scale(set_scale: Any, pts: Sequence[Point], i: int) -> None:
    """A log axis for positive values spanning more than two decades (perplexities do)."""
    vals = [p.values[i] for p in pts]
    if vals and min(vals) > 0 and max(vals) / min(vals) > 100:
        set_scale("log")


def progress_png(view: RunView, path: Path) -> Path:
    """The progress page's panels as an image: hypervolume (its reference point in the
    label), best mean and the knee's mean beside the references' means, the best of each
    objective; stage boundaries dashed."""
    plt = _plt()
    prog = view.progress()
    means = "mean_best" in prog
    k = len(view.names)
    n = 1 + int(means) + k
    fig, axes = plt.subplots(n, 1, figsize=(7.5, 2.1 * n), sharex=True, squeeze=False)
    x = prog["trial"]
    ax = axes[0][0]
    ax.step(x, prog["hypervolume"], where="post", color="C0")
    failed = set(prog["failed"])
    ax.scatter(
        [t for t in x if t in failed],
        [h for t, h in zip(x, prog["hypervolume"], strict=True) if t in failed],
        marker="x",
        color="C3",
        label="failed",
    )
    ax.set_ylabel("hypervolume", fontsize=8)
    ax.set_title(f"reference point: {view.hv_reference_text(prog['reference'])}", fontsize=8)
    refs = view.reference_points()
    styles = reference_styles(refs)
    if means:
        a = axes[1][0]
        for key, name, colour, lw in (
            ("mean_best", "best mean", "C1", 4.0),  # wide: the knee's often runs along it
            ("knee_mean", "knee", "C3", 1.5),
        ):
            ys = [float("nan") if v is None else v for v in prog[key]]
            a.step(x, ys, where="post", color=colour, label=name, lw=lw)
        for r in refs:
            a.axhline(
                sum(r.values) / len(r.values),
                ls=":",
                lw=1,
                color=styles[r.label].colour,
                label=r.label,
            )
        a.set_ylabel("mean score", fontsize=8)
        a.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    for i, name in enumerate(view.names):
        a = axes[1 + int(means) + i][0]
        ys = [float("nan") if v is None else v for v in prog["best"][name]]
        a.step(x, ys, where="post", color=f"C{1 + i}")
        for r in refs:
            a.axhline(r.values[i], ls=":", lw=0.8, color=styles[r.label].colour)
        a.set_ylabel(f"best {name}", fontsize=8)
    for start, label in view.stage_starts():
        for row in axes:
            row[0].axvline(start - 0.5, ls="--", lw=0.8, color="0.35")
        axes[0][0].annotate(
            label,
            (start - 0.5, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=6,
            rotation=90,
            ha="right",
            va="top",
            color="0.35",
        )
    axes[-1][0].set_xlabel("evaluation (trial)")
    fig.suptitle(f"Progress of {view.run_name}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def recipe_png(recipe: Recipe, num_layers: int, title: str, path: Path) -> Path:
    plt = _plt()
    panels = layer_panels(recipe, num_layers)
    slots = routing_slots(recipe)
    n = max(1, len(panels) + (1 if slots else 0))
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n + 1, 0.3 * num_layers + 2), squeeze=False)
    for ax, p in zip(axes[0], panels, strict=False):
        z = [[float("nan") if v is None else v for v in row] for row in p.values]
        lo, hi = panel_bounds(recipe, p)
        im = ax.imshow(z, aspect="auto", cmap="viridis", vmin=lo, vmax=hi)
        ax.set_xticks(range(len(p.sources)), p.sources, rotation=45, fontsize=7)
        ax.set_yticks(range(len(z)), [f"L{la}" for la in range(len(z))], fontsize=7)
        ax.set_title(p.title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05)
    if slots:
        ax = axes[0][len(panels)]
        names = sorted({s[1] for s in slots})
        sc = ax.scatter(
            [s[0] for s in slots],
            [names.index(s[1]) for s in slots],
            c=[s[3] for s in slots],
            cmap="RdBu",
            marker="s",
            s=80,
        )
        for s in slots:
            ax.annotate(f"L{s[2]}", (s[0], names.index(s[1])), fontsize=6, ha="center", va="center")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("output layer")
        ax.set_title("routing (colour: scale)", fontsize=9)
        fig.colorbar(sc, ax=ax, fraction=0.05)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)

"""HTML pages that open offline: plotly's JavaScript (4.6 MB, 98 % of a page that inlines it)
written once as ``plotly.min.js`` beside the pages, which load it by a relative path, so a
report's pages share one copy; tables under the figures; written atomically."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import yaml

from evomerge.fileio import atomic_write_text
from evomerge.recipe import Recipe
from evomerge.report.data import RunView
from evomerge.report.plots import front_figure, progress_figure, recipe_figure
from evomerge.report.recipes import recipe_depth
from evomerge.report.tables import html_table

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:last-child{text-align:left}th{background:#f4f4f4}
tr.knee{background:#ffe9e9;font-weight:600}.note{color:#666;font-size:.85em}
"""


PLOTLY_JS = "plotly.min.js"


class _Page:
    """Sections of one page; its figures load plotly.js from the file beside it."""

    def __init__(self, title: str) -> None:
        self.title, self.parts, self._js = title, [f"<h1>{html.escape(title)}</h1>"], False

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str, cls: str = "note") -> None:
        self.parts.append(f"<p class={cls}>{html.escape(text)}</p>")

    def raw(self, markup: str) -> None:
        self.parts.append(markup)

    def figure(self, fig: go.Figure, div_id: str) -> None:
        self.parts.append(
            fig.to_html(
                full_html=False,
                include_plotlyjs="directory" if not self._js else False,  # never a CDN
                div_id=div_id,
                config={"displaylogo": False, "responsive": True},
            )
        )
        self._js = True

    def write(self, path: Path) -> Path:
        if self._js:
            write_plotly_js(Path(path).parent)
        body = "\n".join(self.parts)
        atomic_write_text(
            path,
            "<!doctype html><html><head><meta charset=utf-8>"
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>"
            f"<body>{body}</body></html>\n",
        )
        return Path(path)


def write_plotly_js(directory: Path) -> Path:
    """``directory/plotly.min.js``, the bundle of the installed plotly, unless it is there."""
    from plotly.offline import get_plotlyjs

    path = Path(directory) / PLOTLY_JS
    js = get_plotlyjs()
    if not path.is_file() or path.stat().st_size != len(js.encode()) or path.read_text() != js:
        Path(directory).mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, js)
    return path


def _front_section(page: _Page, view: RunView) -> None:
    page.figure(front_figure(view), "front")
    page.text(
        "The front's members (± the estimator's standard error; fidelity: the share of a task's "
        "items scored). The knee — the compromise closest to the ideal point — is highlighted."
    )
    page.raw(html_table(view, view.points(front_only=True)))
    refs = view.reference_points()
    if refs:
        page.text("Reference points: scored once as the run started, with its own estimators.")
        page.raw(html_table(view, refs))


def front_page(view: RunView, path: Path) -> Path:
    page = _Page(f"Pareto front of {view.run_name}")
    page.text(f"Objectives (metric, estimator): {view.scoring()}")
    _front_section(page, view)
    return page.write(path)


def progress_page(view: RunView, path: Path) -> Path:
    page = _Page(f"Progress of {view.run_name}")
    page.figure(progress_figure(view), "progress")
    return page.write(path)


def trial_recipe(view: RunView, trial: int) -> Recipe:
    ev = view.archive.trial(trial)
    return Recipe.from_dict(yaml.safe_load(ev.recipe), origin=f"trial {trial}'s recipe")


def recipe_page(view: RunView, trial: int, path: Path) -> Path:
    recipe = trial_recipe(view, trial)
    page = _Page(f"Recipe of trial {trial} of {view.run_name}")
    page.figure(recipe_figure(recipe, recipe_depth(recipe), None), "recipe")  # h1 names it
    page.raw(f"<pre>{html.escape(recipe.to_yaml())}</pre>")
    return page.write(path)


def _confirmations(view: RunView) -> list[dict[str, Any]] | None:
    """The held-out (and full) confirmation rows of :mod:`evomerge.run.confirm`; None before any."""
    from evomerge.run.confirm import confirmation_rows

    return confirmation_rows(view.archive) or None


def summary_rows(view: RunView) -> list[tuple[str, str]]:
    from evomerge.run.lifecycle import failures_by_reason

    info, exp = view.info, view.experiment
    evs = view.archive.evaluations
    rows = [
        ("experiment", str(exp.get("name", "?"))),
        ("description", str(exp.get("description", ""))),
        ("run directory", str(view.run_dir)),
        (
            "status",
            str(info.get("status", "?")) + (f": {info['reason']}" if info.get("reason") else ""),
        ),
        ("budget", str(info.get("budget", exp.get("budget", "?")))),
        ("evaluations", f"{len(evs)} ({sum(not e.ok for e in evs)} failed)"),
    ]
    if info.get("created") and info.get("updated"):
        start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(info["created"]))
        rows.append(("wall time", f"{info['updated'] - info['created']:.0f}s (started {start})"))
    secs = sum(e.timings.get("total", 0.0) for e in evs)
    rows.append(("evaluation time", f"{secs:.0f}s ({secs / max(1, len(evs)):.2f}s each)"))
    for kind, (n, example) in failures_by_reason(evs).items():
        rows.append((f"failures: {kind}", f"{n} (first: {example[:160]})"))
    optimizer = exp.get("optimizer", {})
    if isinstance(optimizer, dict):
        rows.append(("optimizer", str(optimizer.get("name", "nsga2"))))
    front = view.points(front_only=True)
    for i, o in enumerate(view.objectives):
        errs = [p.stderr[i] for p in front if p.stderr[i] is not None]
        err = f"mean ± {sum(errs) / len(errs):.4f} on the front" if errs else "no error bar"
        rows.append(
            (
                f"objective {o.name}",
                f"{o.direction} {o.metric or ''} · estimator {o.estimator or '-'} · {err}",
            )
        )
    from evomerge.run.confirm import estimator_error

    for o, err in estimator_error(view.archive).items():
        rows.append(
            (
                f"estimator error {o}",
                f"mean |estimate − held-out| {err['mae']:.4f}, optimism "
                f"{err['optimism']:+.4f} (the mean estimate − held-out score), "
                f"max {err['max']:.4f} over {err['n']:.0f} confirmed trial(s)",
            )
        )
    rows.append(("front size", str(len(front))))
    return rows


def _headline_section(page: _Page, view: RunView) -> None:
    """The knee against the base, each source and the uniform merge, and what to do next."""
    from evomerge.report.headline import cells, headline
    from evomerge.run.standing import HELD_OUT

    found = headline(view)
    if found is None:
        page.text("No knee yet, or no reference points: nothing to compare.")
        return
    k = found.trial
    head = "".join(f"<th>{html.escape(view.axis_label(i))}</th>" for i in range(len(view.names)))
    knee = "".join(
        f"<td>{v:.4f}" + ("" if se is None else f" ±{se:.4f}") + "</td>"
        for v, se in zip(k.values, k.stderr, strict=True)
    )
    rows = "".join(
        f"<tr><th>{html.escape(c.label)}</th>"
        + "".join(f"<td>{html.escape(x)}</td>" for x in cells(c))
        + "</tr>"
        for c in found.rows
    )
    page.raw(
        f"<table class=headline><tr><th></th>{head}</tr>"
        f"<tr class=knee><th>knee (trial {k.trial})</th>{knee}</tr>{rows}</table>"
    )
    page.text(found.caption)
    run = view.run_dir if view.run_dir is not None else "RUN_DIR"
    page.raw(
        "<p>To take it: <code>"
        + html.escape(f"evomerge export {run} --knee --format hf --out merged")
        + "</code> (a checkpoint with its model card)"
        + (
            ""
            if found.basis == HELD_OUT
            else "; first, <code>"
            + html.escape(f"evomerge confirm {run}")
            + "</code> scores it and the references on held-out items"
        )
        + ".</p>"
    )


def report_page(view: RunView, out_dir: Path) -> Path:
    """``out_dir/index.html``: the knee against the references, summary, front with reference
    points, progress, the knee's coefficients, the held-out confirmation."""
    page = _Page(f"evomerge run report: {view.run_name}")
    knee = view.archive.knee()
    page.heading(
        "The knee against what you had" + (f": trial {knee.number}" if knee is not None else "")
    )
    _headline_section(page, view)
    page.heading("Summary")
    cells = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
        for k, v in summary_rows(view)
    )
    page.raw(f"<table class=summary>{cells}</table>")
    confirmed = _confirmations(view)
    page.heading("Pareto front")
    _front_section(page, view)
    page.heading("Progress")
    page.figure(progress_figure(view), "progress")
    page.heading("The knee's recipe" + (f" (trial {knee.number})" if knee else ""))
    if knee is not None and knee.recipe:
        recipe = trial_recipe(view, int(knee.number or 0))
        page.figure(
            recipe_figure(recipe, recipe_depth(recipe), f"Trial {knee.number}: per-layer values"),
            "knee-recipe",
        )
    else:
        page.text("No successful trial yet.")
    page.heading("Held-out confirmation")
    if confirmed:
        keys = list(dict.fromkeys(k for r in confirmed for k in r))
        head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(k)))}</td>" for k in keys) + "</tr>"
            for r in confirmed
        )
        page.raw(f"<table class=confirm><tr>{head}</tr>{body}</table>")
        page.text(
            "optimism: the search-time estimate − the confirmed score (positive: the search "
            "saw the trial better than it is, on a maximized objective)."
        )
    else:
        page.text(
            f"Not confirmed: `evomerge confirm {view.run_dir}` scores the front on held-out items."
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return page.write(out / "index.html")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)

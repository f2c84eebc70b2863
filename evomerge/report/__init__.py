"""Fronts and runs for people: tables and JSON (:mod:`.tables`), interactive figures
(:mod:`.plots`, plotly), static images (:mod:`.png`, matplotlib) and self-contained HTML pages
(:mod:`.page`), all read from a :class:`~evomerge.report.data.RunView`."""

from __future__ import annotations

from pathlib import Path

from evomerge.report.data import Point, RunView, recipe_summary
from evomerge.report.tables import front_json, front_rows, front_table
from evomerge.run.archive import Archive


def plot_front(source: RunView | Archive, path: Path) -> Path:
    """``.png``: an image (matplotlib); ``.html``: an interactive self-contained page."""
    view = RunView.of(source)
    path = Path(path)
    if path.suffix == ".html":
        from evomerge.report.page import front_page

        return front_page(view, path)
    from evomerge.report.png import front_png

    return front_png(view, path)


def plot_progress(source: RunView | Archive, path: Path) -> Path:
    view = RunView.of(source)
    if Path(path).suffix == ".html":
        from evomerge.report.page import progress_page

        return progress_page(view, Path(path))
    from evomerge.report.png import progress_png

    return progress_png(view, Path(path))


def plot_recipe(source: RunView | Archive, trial: int, path: Path) -> Path:
    view = RunView.of(source)
    if Path(path).suffix == ".html":
        from evomerge.report.page import recipe_page

        return recipe_page(view, trial, Path(path))
    from evomerge.report.page import trial_recipe
    from evomerge.report.png import recipe_png
    from evomerge.report.recipes import recipe_depth

    recipe = trial_recipe(view, trial)
    return recipe_png(recipe, recipe_depth(recipe), f"trial {trial}", Path(path))


def write_report(run_dir: Path, out_dir: Path) -> Path:
    """``out_dir/index.html``, one self-contained page for the run."""
    from evomerge.report.page import report_page

    return report_page(RunView.open(run_dir), out_dir)


__all__ = [
    "Point",
    "RunView",
    "front_json",
    "front_rows",
    "front_table",
    "plot_front",
    "plot_progress",
    "plot_recipe",
    "recipe_summary",
    "write_report",
]

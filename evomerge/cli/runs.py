"""Commands on runs: the demo, run, resume, status, front, plot, report, export, confirm."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from evomerge.cli.app import OptionError, app, console, err, friendly
from evomerge.cli.options import DEFAULT_ZOO, RunDirArg, ZooOption, flag
from evomerge.errors import naming
from evomerge.fileio import preset_dir


@app.command()
@friendly
def demo(
    zoo: Annotated[Path, typer.Option(help="Zoo directory (built if missing)")] = DEFAULT_ZOO,
    run_dir: Annotated[Path, typer.Option(help="The search's run directory")] = Path("runs/demo"),
    out: Annotated[Path, typer.Option(help="Where to export the knee recipe")] = Path("out/demo"),
    preset: str = "default",
    budget: Annotated[
        int | None, typer.Option(help="Evaluations (default: the experiment's)")
    ] = None,
    fresh: Annotated[bool, flag(help="Discard a previous demo run first")] = True,
) -> None:
    """The main job: build the tiny zoo (cached), run a multi-objective search over per-layer
    DARE-TIES merges of its experts, print the Pareto front and export the knee recipe."""
    import shutil

    from evomerge.run import lifecycle as search
    from evomerge.run.export import export
    from evomerge.zoo import build_zoo

    t0 = time.perf_counter()
    report = build_zoo(zoo, preset=preset, seed=0, log=console.print)
    console.print(report.table())
    experiment = preset_dir("experiments") / "zoo-demo.yaml"
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    s, total = search.start(experiment, run_dir, zoo=zoo, budget=budget, log=console.print)
    console.print(f"\nsearch: {experiment.name} → {run_dir} ({len(s.space.genes)} genes)")
    try:
        outcome = _run_with_progress(s, total)
    finally:
        s.close()
    _print_front(run_dir, limit=10)
    knee = s.archive.knee()
    if knee is not None and knee.recipe:
        from evomerge.run.confirm import confirm

        export(knee, out / "recipe.yaml", force=True)  # the demo rewrites its own output
        confirmed = confirm(run_dir, trials=[knee.number or 0], zoo=zoo, log=console.print)
        console.print(_confirmation_table(confirmed, "The knee on items the search never saw"))
        console.print(f"knee: trial {knee.number}, recipe → {out / 'recipe.yaml'}", soft_wrap=True)
    steps = [
        (f"evomerge front {run_dir} --plot front.html", "the whole front, interactive"),
        (f"evomerge report {run_dir} --out report", "a page: front, progress, knee"),
        (f"evomerge export {run_dir} --knee --format hf --out merged", "the knee, a model"),
    ]
    width = max(len(cmd) for cmd, _ in steps)
    lines = "\n".join(f"  {cmd:<{width}}  {why}" for cmd, why in steps)
    console.print(f"\nnext:\n{lines}", highlight=False, soft_wrap=True)
    console.print(f"demo {outcome.status} in {time.perf_counter() - t0:.0f}s")


def _run_with_progress(s: Any, total: int, hours: float | None = None) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]evaluations"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    ) as bar:
        task = bar.add_task("search", total=total, completed=len(s.archive), info="")

        def show(p: Any) -> None:
            best = "/".join(f"{v:.2f}" for v in p.best.values())  # in the objectives' order
            failed = f" · failed {p.failed}" if p.failed else ""
            bar.update(task, completed=p.done, info=f"HV {p.hypervolume:.4f} · best {best}{failed}")

        return s.run(total, hours=hours, on_progress=show)


def _search_and_report(s: Any, total: int, hours: float | None, run_dir: Path) -> None:
    try:
        outcome = _run_with_progress(s, total, hours)
    finally:
        s.close()  # Ray actors, engines
    _print_front(run_dir)
    console.print(f"{outcome.status}: {outcome.evaluations} evaluations in {run_dir}")
    if outcome.status == "exhausted":
        console.print(f"the search is exhausted: {outcome.reason}")
    elif outcome.reason:
        console.print(f"stopped because {outcome.reason}; `evomerge resume {run_dir}` goes on")


def _print_front(run_dir: Path, limit: int | None = None) -> None:
    from evomerge.report import RunView, front_table

    view = RunView.open(run_dir)
    console.print(front_table(view, title=f"Pareto front of {view.run_name}", limit=limit))


@app.command()
@friendly
def run(
    experiment: Annotated[
        Path, typer.Argument(help="An experiment YAML, or a shipped one by name (zoo-demo)")
    ],
    run_dir: Annotated[Path | None, typer.Option(help="Default: runs/<experiment name>")] = None,
    budget: Annotated[int | None, typer.Option(help="Evaluations (default: the file's)")] = None,
    hours: Annotated[float | None, typer.Option(help="Stop after this long (resumable)")] = None,
    zoo: ZooOption = DEFAULT_ZOO,
) -> None:
    """Launch a search. Ctrl-C stops it cleanly; `evomerge resume RUN_DIR` continues it."""
    from evomerge.experiment import Experiment, ExperimentError
    from evomerge.fileio import resolve_named
    from evomerge.run import lifecycle as search

    if not experiment.suffix and not experiment.exists():  # shipped in the package
        experiment = resolve_named(
            experiment, presets=preset_dir("experiments"), what="experiment", error=ExperimentError
        )

    with naming(experiment):
        exp = Experiment.load(experiment)
        run_dir = run_dir or Path("runs") / exp.name
        s, total = search.start(experiment, run_dir, zoo=zoo, budget=budget, log=console.print)
    _search_and_report(s, total, hours, run_dir)


@app.command()
@friendly
def resume(
    run_dir: RunDirArg,
    budget: Annotated[int | None, typer.Option(help="A new total budget")] = None,
    hours: Annotated[float | None, typer.Option(help="Stop after this long (resumable)")] = None,
    experiment: Annotated[
        Path | None, typer.Option(help="Check this experiment file is the run's")
    ] = None,
) -> None:
    """Continue a run after Ctrl-C, a crash or a spent budget (with a larger --budget)."""
    from evomerge.run import lifecycle as search

    try:
        s, total = search.reopen(
            run_dir, budget=budget, experiment_file=experiment, log=console.print
        )
    except search.NothingToDo as e:  # exit 0: `until evomerge resume RUN; do …; done` ends
        console.print(str(e), highlight=False, soft_wrap=True)
        return
    console.print(f"resuming {run_dir}: {len(s.archive)} of {total} evaluations done")
    _search_and_report(s, total, hours, run_dir)


@app.command()
@friendly
def status(run_dir: RunDirArg) -> None:
    """Summarize a run (also while it runs): the knee against the base, each source and the
    uniform merge first, then the run's state."""
    from evomerge.run.lifecycle import summary

    info = summary(run_dir)
    t = Table(title=f"run {run_dir}", show_header=False)
    t.add_row("experiment", str(info.get("experiment_file")))
    stale = "stopped unexpectedly — `evomerge resume` continues it"
    shown = str(info.get("status"))
    if shown == "stopped" and info.get("reason"):
        shown = f"stopped: {info['reason']}"
    t.add_row("status", stale if info["stale"] else shown)
    t.add_row("evaluations", f"{info['trials']} of {info.get('budget')}")
    t.add_row("failed", str(info["failed"]))
    for kind, (count, example) in info["failures"].items():
        t.add_row(f"  {kind}", f"{count} (first: {example[:100]})")
    t.add_row("front size", str(info["front_size"]))
    for name, (value, number) in info["best"].items():
        t.add_row(f"best {name}", f"{value:.4f} (trial {number})")
    split = info.get("time_split")
    if split:
        wall = f"{split['wall']:.2f}s: " if "wall" in split else ""
        parts = ", ".join(f"{k} {v:.2f}s" for k, v in split.items() if k != "wall")
        t.add_row("time per evaluation", f"{wall}{parts}")
    if info.get("reason") and info.get("status") != "stopped":
        t.add_row("stopped because", str(info["reason"]))
    w = info.get("workers")
    if w:
        actors = w["actors"]
        t.add_row("ray actors alive", f"{sum(a['alive'] for a in actors)} of {len(actors)}")
        t.add_row(
            "utilization",
            ", ".join(f"{a['name']} {a['utilization']:.0%} ({a['evaluations']})" for a in actors),
        )
        t.add_row("in flight", f"{w['in_flight']} (dispatch: {w.get('dispatch', 'batch')})")
        faults = f"{w['retries']} · {w['timeouts']} · {w['deaths']}"
        t.add_row("retries · timeouts · actor deaths", faults)
        if w.get("evaluations_per_hour"):
            t.add_row("throughput", f"{w['evaluations_per_hour']:,.0f} evaluations/hour")
        t.add_row("pool updated", f"{time.time() - w['updated']:.0f}s ago")
    t.add_row("engine rebuilds", f"{info['rebuilds']} (recipes of a new depth)")
    from evomerge.run.confirm import estimator_error
    from evomerge.run.run_dir import open_archive

    archive = open_archive(run_dir)
    for kind, items in (("holdout", "held-out"), ("full", "all")):
        for name, e in estimator_error(archive, kind).items():
            t.add_row(
                f"estimator error {name}",
                f"{e['mae']:.4f} mean |estimate − score on {items} items| over {e['n']:.0f} "
                f"confirmed (optimism {e['optimism']:+.4f}: the mean estimate − score; "
                f"max {e['max']:.4f})",
            )
    from evomerge.report import RunView
    from evomerge.report.headline import headline_table

    first = headline_table(RunView.open(run_dir))  # the question users bring: what to take
    if first is not None:
        console.print(first)
    console.print(t)


_BY_HELP = "estimate (search-time scores) or confirmed (`evomerge confirm`'s, confirmed only)"


def _by(archive: Any, by: str) -> Any:
    """The run's archive, or its view through the confirmed scores (``--by confirmed``)."""
    if by not in ("estimate", "confirmed"):
        raise OptionError(f"--by {by!r}: choose estimate or confirmed")
    return archive.confirmed() if by == "confirmed" else archive


@app.command()
@friendly
def front(
    run_dir: RunDirArg,
    plot: Annotated[
        Path | None,
        typer.Option(help="Write a plot: FILE.png (image) or FILE.html (interactive, offline)"),
    ] = None,
    json_: Annotated[bool, flag("--json", help="Print the front as JSON")] = False,
    by: Annotated[str, typer.Option(help=_BY_HELP)] = "estimate",
    all_: Annotated[
        bool, flag("--all", help="Every evaluated recipe, with its front rank")
    ] = False,
    sort: Annotated[
        str,
        typer.Option(help="knee (first, then nearest the ideal point), trial, or an objective"),
    ] = "knee",
) -> None:
    """The Pareto front of a run (every recipe once, at the fidelity it was scored at), the
    knee first, with the reference points (base, sources, uniform merge) scored as the run
    started."""
    from evomerge.report import RunView, front_json, front_table, plot_front

    view = RunView.open(run_dir)
    if by != "estimate":
        view = replace(view, archive=_by(view.archive, by))
    if json_:
        typer.echo(front_json(view, all_=all_))  # plain: rich would wrap long lines
    else:
        scores = " by confirmed scores" if by == "confirmed" else ""
        title = f"{'Evaluated recipes' if all_ else 'Pareto front'} of {view.run_name}{scores}"
        try:
            table = front_table(view, title=title, all_=all_, sort=sort)
        except ValueError as e:
            raise OptionError(f"--sort {sort}: {str(e).removeprefix('sort: ')}") from None
        console.print(table)
    if plot is not None:
        _check_suffix(plot, "--plot")
        console.print(f"plot → {plot_front(view, plot)}")


def _check_suffix(path: Path, option: str) -> None:
    if path.suffix not in (".png", ".html"):
        raise OptionError(f"{option} {path}: write FILE.png (an image) or FILE.html (interactive)")


@app.command()
@friendly
def plot(
    run_dir: RunDirArg,
    what: Annotated[str, typer.Option(help="progress or recipe")],
    out: Annotated[Path, typer.Option(help="FILE.html (interactive, offline) or FILE.png")],
    trial: Annotated[
        int | None, typer.Option(help="--what recipe: which trial (default: the knee)")
    ] = None,
) -> None:
    """Plot a run's progress (hypervolume and best per objective over evaluations, failures
    marked) or one trial's recipe (per-layer coefficients; routing as a slot diagram)."""
    from evomerge.report import RunView, plot_progress, plot_recipe

    _check_suffix(out, "--out")
    if what not in ("progress", "recipe"):
        raise OptionError(f"--what {what!r}: choose progress or recipe")
    view = RunView.open(run_dir)
    if what == "recipe" and trial is None:  # the recipe a user exports by default: the knee's
        knee = view.archive.knee()
        if knee is None:
            raise OptionError("--what recipe: the run has no knee yet; name one with --trial N")
        trial = knee.number
    path = plot_progress(view, out) if what == "progress" else plot_recipe(view, trial, out)  # type: ignore[arg-type]
    console.print(f"{what} → {path}")


@app.command()
@friendly
def report(
    run_dir: RunDirArg,
    out: Annotated[Path, typer.Option(help="Output directory (DIR/index.html)")],
) -> None:
    """One self-contained HTML page for a run: summary, front with reference points, progress,
    the knee's coefficients and the held-out confirmation. Opens with no network."""
    from evomerge.report import write_report

    console.print(f"report → {write_report(run_dir, out)}")


@app.command()
@friendly
def export(
    run_dir: RunDirArg,
    out: Annotated[Path, typer.Option(help="Output: a file (recipe, mergekit) or a dir (hf)")],
    trial: Annotated[int | None, typer.Option(help="Trial number")] = None,
    best: Annotated[str | None, typer.Option(help="Best trial on this objective")] = None,
    knee: Annotated[bool, flag(help="The front's knee point")] = False,
    prefer: Annotated[
        str | None,
        typer.Option(
            help="W1,W2,…: the front member with the largest weighted sum of its objectives, "
            "each scaled to 0 (the front's worst) … 1 (the front's best)"
        ),
    ] = None,
    format: Annotated[str, typer.Option(help="recipe, mergekit or hf")] = "recipe",
    force: Annotated[bool, flag(help="Replace an existing --out")] = False,
    by: Annotated[str, typer.Option(help=f"--best/--knee ranked by: {_BY_HELP}")] = "estimate",
) -> None:
    """Export one evaluated recipe: our YAML, mergekit YAML, or a materialized HF checkpoint
    (with a model card and recipe.yaml): the model the search scored."""
    from evomerge.run.export import export as write
    from evomerge.run.export import parse_weights, pick
    from evomerge.run.run_dir import open_archive

    archive = open_archive(run_dir)
    weights = parse_weights(prefer, archive.objectives) if prefer is not None else None
    ev = pick(archive, trial=trial, best=best, knee=knee, prefer=weights, where=str(run_dir), by=by)
    write(
        ev,
        out,
        format,
        force=force,
        run_dir=run_dir,
        warn=lambda m: err.print(f"[bold yellow]warning:[/] {m}", highlight=False, soft_wrap=True),
    )
    console.print(f"trial {ev.number} ({ev.recipe_hash}) → {out} [{format}]")


@app.command()
@friendly
def dashboard(
    run_dir: RunDirArg,
    host: Annotated[str, typer.Option(help="Address to serve on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on")] = 8080,
    notes_only: Annotated[bool, flag(help="Write the notes and exit")] = False,
) -> None:
    """Open the run in optuna-dashboard (`pip install 'evomerge[dashboard]'`), with notes:
    the knee against the references on the study's page, each front member's recipe on its
    trial's page."""
    from evomerge.run.dashboard import serve, write_notes

    if notes_only:
        notes = write_notes(run_dir)
        console.print(f"{run_dir}: notes on the study and {len(notes)} trials")
        return
    console.print(f"optuna-dashboard on http://{host}:{port} (Ctrl-C stops it)")
    serve(run_dir, host=host, port=port)


@app.command("confirm")
@friendly
def confirm_(
    run_dir: RunDirArg,
    trial: Annotated[list[int] | None, typer.Option(help="Trial number; repeat for more")] = None,
    top: Annotated[int | None, typer.Option(help="The K best: front by front, knee first")] = None,
    front: Annotated[bool, flag(help="The Pareto front (the default)")] = False,
    full: Annotated[bool, flag(help="Score every item, not the held-out ones")] = False,
    again: Annotated[bool, flag(help="Score trials already confirmed again")] = False,
    zoo: Annotated[Path | None, typer.Option(help="Where zoo: paths point (the run's)")] = None,
) -> None:
    """Score chosen recipes on the items the search never saw (experiment `holdout:`) and store
    the scores in the run's archive next to the search-time estimates; resumable."""
    from evomerge.run.confirm import confirm

    if sum((bool(trial), top is not None, front)) > 1:
        raise OptionError("choose one of --trial N…, --top K, --front")
    results = confirm(
        run_dir, trials=trial, top=top, full=full, again=again, zoo=zoo, log=console.print
    )
    console.print(_confirmation_table(results, f"{run_dir}: confirmed"))


def _confirmation_table(results: list[Any], title: str) -> Table:
    t = Table(title=title)
    for col in ("trial", "objective", "estimate", "on items", "score ± stderr", "optimism"):
        t.add_column(col, justify="left" if col == "objective" else "right")
    for c in results:
        for o in c.scores:
            se = c.stderr[o]
            t.add_row(
                str(c.trial),
                o,
                f"{c.estimate[o]:.4f} ({c.estimate_fidelity[o]:.0%})",
                f"{c.items[o]} {'held-out' if c.kind == 'holdout' else 'all'}",
                f"{c.scores[o]:.4f}" + ("" if se is None else f" ±{se:.4f}"),
                f"{c.optimism[o]:+.4f}",
            )
    t.caption = "optimism: the search-time estimate − the score on these items"
    return t

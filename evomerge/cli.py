"""`evomerge …` — the command line. Errors evomerge raises on purpose print as one clear line."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from evomerge.errors import EvomergeError, naming
from evomerge.fileio import preset_dir

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Evolutionary and black-box optimization of LLM merge recipes.",
)
zoo_app = typer.Typer(no_args_is_help=True, help="The tiny synthetic model zoo.")
app.add_typer(zoo_app, name="zoo")
space_app = typer.Typer(no_args_is_help=True, help="Search spaces (search_spaces/*.yaml).")
app.add_typer(space_app, name="space")
console = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_ZOO = Path(os.environ.get("EVOMERGE_ZOO", Path.home() / ".cache" / "evomerge" / "zoo"))
_DEBUG = {"on": False}  # --debug: errors raise with their traceback


class OptionError(EvomergeError):
    """A command-line option's value cannot be used; the message names the option."""


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option(help="Show tracebacks instead of one-line errors")] = False,
) -> None:
    _DEBUG["on"] = debug
    _quiet_libraries()


def _quiet_libraries() -> None:
    """Other libraries' progress bars (transformers' "Loading weights") and warnings stay off
    our terminal: a search loads weights hundreds of times. Ours stay; a user's own settings
    of these variables win."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if "transformers" in sys.modules:  # imported before the environment said so
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    if not sys.warnoptions:  # `python -W …` asks for them
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(?!evomerge)")


def _friendly(fn: F) -> F:
    """Errors users can cause print as one line (exit 2); anything else is a bug of ours: one
    line too (exit 1), with the traceback under ``evomerge --debug``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except EvomergeError as e:
            if _DEBUG["on"]:
                raise
            err.print(f"[bold red]error:[/] {_one_line(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as e:
            if _DEBUG["on"]:
                raise
            msg = _one_line(f"{type(e).__name__}: {e}")
            err.print(
                f"[bold red]internal error:[/] {msg} (evomerge --debug … shows the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _one_line(text: str) -> str:
    from rich.markup import escape

    return escape(" ".join(text.split()))


@zoo_app.command("build")
@_friendly
def zoo_build(
    out_dir: Annotated[Path, typer.Argument(help="Where to build: DIR/base, DIR/experts/<skill>")],
    preset: Annotated[
        str,
        typer.Option(
            help="default (≈3 min), unit (seconds, for tests) or smollm2 (SmolLM2-135M, 30 "
            "layers, ≈45 min; needs the real-zoo extra)"
        ),
    ] = "default",
    seed: int = 0,
    arch: Annotated[str, typer.Option(help="Model family: llama or qwen2")] = "llama",
    force: Annotated[bool, typer.Option(help="Rebuild even if a matching zoo is there")] = False,
) -> None:
    """Build a zoo: a base model and one expert per skill, as HF checkpoints, with a report."""
    from evomerge.zoo import build_zoo

    if preset == "smollm2":
        from evomerge.zoo.real import build_real_zoo

        if arch != "llama":
            raise typer.BadParameter("the smollm2 zoo is a Llama model; leave --arch out")
        report = build_real_zoo(out_dir, seed=seed, force=force, log=console.print)
    else:
        report = build_zoo(
            out_dir, preset=preset, seed=seed, arch=arch, force=force, log=console.print
        )
    console.print(report.table())


@app.command()
@_friendly
def merge(
    config: Annotated[Path, typer.Argument(help="An evomerge recipe or a mergekit YAML")],
    out_dir: Annotated[Path, typer.Argument(help="New checkpoint directory (must not exist)")],
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    overwrite: bool = False,
    zoo: Annotated[Path, typer.Option(help="Where zoo: paths point")] = DEFAULT_ZOO,
    allow_pickle: Annotated[bool, typer.Option(help="Read .bin pickle weights (unsafe)")] = False,
    max_shard_size: Annotated[str, typer.Option(help="e.g. 5GB, 500MB")] = "5GB",
) -> None:
    """Materialize a recipe into a Hugging Face checkpoint."""
    from evomerge.merge.materialize import merge_to_dir
    from evomerge.mergekit_yaml import load_any

    shard_size = _parse_size(max_shard_size)  # before any work
    t0 = time.perf_counter()
    with naming(config):
        recipe = load_any(config).with_zoo(zoo)
        out = merge_to_dir(
            recipe,
            out_dir,
            device=device,
            overwrite=overwrite,
            allow_pickle=allow_pickle,
            max_shard_size=shard_size,
        )
    console.print(
        f"merged {config} → {out} in {time.perf_counter() - t0:.1f}s "
        f"(recipe {recipe.content_hash()})"
    )


@app.command()
@_friendly
def convert(
    config: Annotated[Path, typer.Argument(help="An evomerge recipe or a mergekit YAML")],
    to: Annotated[str, typer.Option(help="recipe or mergekit")] = "mergekit",
    zoo: Annotated[Path, typer.Option(help="Where zoo: paths point")] = DEFAULT_ZOO,
) -> None:
    """Print a recipe as a mergekit YAML, or a mergekit YAML as an evomerge recipe."""
    from evomerge import mergekit_yaml

    if to not in ("recipe", "mergekit"):
        raise OptionError(f"--to {to!r}: choose recipe or mergekit")
    with naming(config):
        recipe = mergekit_yaml.load_any(config)
        if to == "recipe":
            text = recipe.to_yaml()
        else:
            caveat = mergekit_yaml.random_mask_caveat(recipe)
            data = mergekit_yaml.to_mergekit(recipe.with_zoo(zoo))
            text = mergekit_yaml.dump(data, comments=[f"WARNING: {caveat}"] if caveat else [])
            if caveat:
                err.print(f"[bold yellow]warning:[/] {caveat}", highlight=False, soft_wrap=True)
    console.print(text, end="", highlight=False, markup=False)


@app.command()
@_friendly
def demo(
    zoo: Annotated[Path, typer.Option(help="Zoo directory (built if missing)")] = DEFAULT_ZOO,
    run_dir: Annotated[Path, typer.Option(help="The search's run directory")] = Path("runs/demo"),
    out: Annotated[Path, typer.Option(help="Where to export the knee recipe")] = Path("out/demo"),
    preset: str = "default",
    budget: Annotated[
        int | None, typer.Option(help="Evaluations (default: the experiment's)")
    ] = None,
    fresh: Annotated[bool, typer.Option(help="Discard a previous demo run first")] = True,
) -> None:
    """The main job: build the tiny zoo (cached), run a multi-objective search over per-layer
    DARE-TIES merges of its experts, print the Pareto front and export the knee recipe."""
    import shutil

    from evomerge.run import loop as search
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
@_friendly
def run(
    experiment: Annotated[
        Path, typer.Argument(help="An experiment YAML, or a shipped one by name (zoo-demo)")
    ],
    run_dir: Annotated[Path | None, typer.Option(help="Default: runs/<experiment name>")] = None,
    budget: Annotated[int | None, typer.Option(help="Evaluations (default: the file's)")] = None,
    hours: Annotated[float | None, typer.Option(help="Stop after this long (resumable)")] = None,
    zoo: Annotated[Path, typer.Option(help="Where zoo: paths point")] = DEFAULT_ZOO,
) -> None:
    """Launch a search. Ctrl-C stops it cleanly; `evomerge resume RUN_DIR` continues it."""
    from evomerge.experiment import Experiment, ExperimentError
    from evomerge.fileio import resolve_named
    from evomerge.run import loop as search

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
@_friendly
def resume(
    run_dir: Annotated[Path, typer.Argument(help="A run directory")],
    budget: Annotated[int | None, typer.Option(help="A new total budget")] = None,
    hours: Annotated[float | None, typer.Option(help="Stop after this long (resumable)")] = None,
    experiment: Annotated[
        Path | None, typer.Option(help="Check this experiment file is the run's")
    ] = None,
) -> None:
    """Continue a run after Ctrl-C, a crash or a spent budget (with a larger --budget)."""
    from evomerge.run import loop as search

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
@_friendly
def status(run_dir: Annotated[Path, typer.Argument(help="A run directory")]) -> None:
    """Summarize a run (also while it runs)."""
    from evomerge.run.loop import summary

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
    if info["seconds_per_evaluation"] is not None:
        t.add_row("time per evaluation", f"{info['seconds_per_evaluation']:.2f}s")
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
                f"confirmed (bias {e['bias']:+.4f}, max {e['max']:.4f})",
            )
    console.print(t)


_BY_HELP = "estimate (search-time scores) or confirmed (`evomerge confirm`'s, confirmed only)"


def _by(archive: Any, by: str) -> Any:
    """The run's archive, or its view through the confirmed scores (``--by confirmed``)."""
    if by not in ("estimate", "confirmed"):
        raise OptionError(f"--by {by!r}: choose estimate or confirmed")
    return archive.confirmed() if by == "confirmed" else archive


@app.command()
@_friendly
def front(
    run_dir: Annotated[Path, typer.Argument(help="A run directory")],
    plot: Annotated[
        Path | None,
        typer.Option(help="Write a plot: FILE.png (image) or FILE.html (interactive, offline)"),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the front as JSON")] = False,
    by: Annotated[str, typer.Option(help=_BY_HELP)] = "estimate",
    all_: Annotated[
        bool, typer.Option("--all", help="Every evaluated recipe, with its front rank")
    ] = False,
) -> None:
    """The Pareto front of a run (every recipe once, at the fidelity it was scored at), with
    the reference points (base, sources, uniform merge) scored as the run started."""
    from evomerge.report import RunView, front_json, front_table, plot_front

    view = RunView.open(run_dir)
    if by != "estimate":
        view = replace(view, archive=_by(view.archive, by))
    if json_:
        typer.echo(front_json(view, all_=all_))  # plain: rich would wrap long lines
    else:
        scores = " by confirmed scores" if by == "confirmed" else ""
        title = f"{'Evaluated recipes' if all_ else 'Pareto front'} of {view.run_name}{scores}"
        console.print(front_table(view, title=title, all_=all_))
    if plot is not None:
        _check_suffix(plot, "--plot")
        console.print(f"plot → {plot_front(view, plot)}")


def _check_suffix(path: Path, option: str) -> None:
    if path.suffix not in (".png", ".html"):
        raise OptionError(f"{option} {path}: write FILE.png (an image) or FILE.html (interactive)")


@app.command()
@_friendly
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run directory")],
    what: Annotated[str, typer.Option(help="progress or recipe")],
    out: Annotated[Path, typer.Option(help="FILE.html (interactive, offline) or FILE.png")],
    trial: Annotated[int | None, typer.Option(help="--what recipe: which trial")] = None,
) -> None:
    """Plot a run's progress (hypervolume and best per objective over evaluations, failures
    marked) or one trial's recipe (per-layer coefficients; routing as a slot diagram)."""
    from evomerge.report import RunView, plot_progress, plot_recipe

    _check_suffix(out, "--out")
    if what not in ("progress", "recipe"):
        raise OptionError(f"--what {what!r}: choose progress or recipe")
    if what == "recipe" and trial is None:
        raise OptionError("--what recipe needs --trial N")
    view = RunView.open(run_dir)
    path = plot_progress(view, out) if what == "progress" else plot_recipe(view, trial, out)  # type: ignore[arg-type]
    console.print(f"{what} → {path}")


@app.command()
@_friendly
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory")],
    out: Annotated[Path, typer.Option(help="Output directory (DIR/index.html)")],
) -> None:
    """One self-contained HTML page for a run: summary, front with reference points, progress,
    the knee's coefficients and the held-out confirmation. Opens with no network."""
    from evomerge.report import write_report

    console.print(f"report → {write_report(run_dir, out)}")


@app.command()
@_friendly
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory")],
    out: Annotated[Path, typer.Option(help="Output: a file (recipe, mergekit) or a dir (hf)")],
    trial: Annotated[int | None, typer.Option(help="Trial number")] = None,
    best: Annotated[str | None, typer.Option(help="Best trial on this objective")] = None,
    knee: Annotated[bool, typer.Option(help="The front's knee point")] = False,
    prefer: Annotated[
        str | None,
        typer.Option(
            help="W1,W2,…: the front member with the largest weighted sum of its objectives, "
            "each scaled to 0 (the front's worst) … 1 (the front's best)"
        ),
    ] = None,
    format: Annotated[str, typer.Option(help="recipe, mergekit or hf")] = "recipe",
    force: Annotated[bool, typer.Option(help="Replace an existing --out")] = False,
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


@app.command("confirm")
@_friendly
def confirm_(
    run_dir: Annotated[Path, typer.Argument(help="A run directory")],
    trial: Annotated[list[int] | None, typer.Option(help="Trial number; repeat for more")] = None,
    top: Annotated[int | None, typer.Option(help="The K best: front by front, knee first")] = None,
    front: Annotated[bool, typer.Option(help="The Pareto front (the default)")] = False,
    full: Annotated[bool, typer.Option(help="Score every item, not the held-out ones")] = False,
    again: Annotated[bool, typer.Option(help="Score trials already confirmed again")] = False,
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
    for col in ("trial", "objective", "estimate", "on items", "score ± stderr", "gap"):
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
                f"{c.gap[o]:+.4f}",
            )
    return t


@space_app.command("show")
@_friendly
def space_show(
    name: Annotated[str, typer.Argument(help="A preset (search_spaces/NAME.yaml) or a path")],
    source: Annotated[list[str], typer.Option(help="NAME=PATH (or zoo:…); repeat for every model")],
    base: Annotated[str | None, typer.Option(help="The base model's NAME")] = None,
    zoo: Annotated[Path, typer.Option(help="Where zoo: paths point")] = DEFAULT_ZOO,
    option: Annotated[
        list[str] | None, typer.Option(help="KEY=YAML override, e.g. granularity=2")
    ] = None,
    genes: Annotated[bool, typer.Option(help="List every gene")] = True,
) -> None:
    """Print a search space's genome size and genes for these sources."""

    from evomerge.recipe import zoo_path
    from evomerge.space import SearchSpace, SpaceError, load_space

    sources = {}
    for item in source:
        key, eq, path = item.partition("=")
        if not eq:
            raise SpaceError(f"--source {item!r}: write NAME=PATH")
        sources[key] = zoo_path(path, zoo)
    with naming(Path(name)):
        spec = load_space(name, _key_values(option, "--option"))
        sp = SearchSpace(spec, sources=sources, base=base)
    n_int = sum(g.choices is not None for g in sp.genes)
    console.print(
        f"{name}: {spec.kind} space, {len(sp.genes)} genes "
        f"({len(sp.genes) - n_int} real, {n_int} integer) over {sp.num_layers} layers"
    )
    if spec.description:
        console.print(spec.description)
    if genes:
        t = Table()
        t.add_column("gene")
        t.add_column("values")
        for g, rng in sp.describe():
            t.add_row(g, rng)
        console.print(t)


@app.command("eval")
@_friendly
def eval_(
    model_dir: Annotated[Path, typer.Argument(help="A Hugging Face checkpoint directory")],
    task: Annotated[list[str], typer.Option(help="Task name (fitness/NAME.yaml) or path")],
    estimator: Annotated[str, typer.Option(help="full, subsample:K, anchor:K, irt:K")] = "full",
    zoo: Annotated[Path, typer.Option(help="Where zoo: items live")] = DEFAULT_ZOO,
    calibrate_with: Annotated[
        list[Path] | None,
        typer.Option(help="Models for anchor/irt calibration, base first (default: the zoo's)"),
    ] = None,
    calibration_merges: int = 8,
    engine: Annotated[str, typer.Option(help="hf (transformers) or vllm")] = "hf",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto")] = "float32",
    engine_option: Annotated[
        list[str] | None,
        typer.Option(help="KEY=YAML engine option, e.g. gpu_memory_utilization=0.8 (vllm)"),
    ] = None,
    device: str = "cpu",
    seed: int = 0,
) -> None:
    """Score one checkpoint on tasks, in full or with a cheap estimator."""
    from evomerge.evaluate.checkpoint_scores import score_checkpoint

    rows = score_checkpoint(
        model_dir,
        task,
        estimator=estimator,
        zoo=zoo,
        calibrate_with=calibrate_with,
        calibration_merges=calibration_merges,
        engine=engine,
        dtype=dtype,
        engine_options=_key_values(engine_option, "--engine-option"),
        device=device,
        seed=seed,
        log=console.print,
    )
    table = Table(title=f"{model_dir} · estimator {estimator} · engine {engine} ({dtype})")
    for col in ("task", "metric", "score", "± stderr", "items used", "time (s)"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.task,
            r.metric,
            f"{r.value:.4f}",
            f"{r.stderr:.4f}" if r.stderr is not None else "-",
            f"{r.items_used}/{r.n_items}",
            f"{r.seconds:.1f}",
        )
    console.print(table)


def _key_values(items: list[str] | None, option: str) -> dict[str, Any]:
    """``KEY=VALUE`` options, each value read as YAML."""
    import yaml

    out = {}
    for item in items or []:
        key, eq, val = item.partition("=")
        if not eq or not key:
            raise typer.BadParameter(f"{option} {item!r}: write KEY=VALUE")
        out[key] = yaml.safe_load(val)
    return out


def _parse_size(text: str, option: str = "--max-shard-size") -> int:
    """A size as Hugging Face writes it: 5GB = 5·10⁹ bytes, 5GiB = 5·2³⁰, a plain integer is
    bytes (``transformers``' own parser, so our shards match what ``save_pretrained`` makes)."""
    from transformers.utils.hub import convert_file_size_to_int

    t = text.strip()
    try:
        size = int(t) if t.isdigit() else convert_file_size_to_int(t)
    except ValueError:
        raise OptionError(
            f"{option} {text!r}: not a size; write an integer and a unit, e.g. 5GB, 500MB, 2GiB"
        ) from None
    if size <= 0:
        raise OptionError(f"{option} {text!r}: the size must be positive")
    return size


if __name__ == "__main__":
    app()

"""`evomerge …` — the command line. Errors evomerge raises on purpose print as one clear line."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from evomerge.errors import EvomergeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Evolutionary and black-box optimization of LLM merge recipes.",
)
zoo_app = typer.Typer(no_args_is_help=True, help="The tiny synthetic model zoo.")
app.add_typer(zoo_app, name="zoo")
console = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ZOO = Path(os.environ.get("EVOMERGE_ZOO", Path.home() / ".cache" / "evomerge" / "zoo"))


def _friendly(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EvomergeError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@zoo_app.command("build")
@_friendly
def zoo_build(
    out_dir: Annotated[Path, typer.Argument(help="Where to build: DIR/base, DIR/experts/<skill>")],
    preset: Annotated[
        str, typer.Option(help="default (≈3 min) or unit (seconds, for tests)")
    ] = "default",
    seed: int = 0,
    force: Annotated[bool, typer.Option(help="Rebuild even if a matching zoo is there")] = False,
) -> None:
    """Build the tiny zoo: a base model and one expert per synthetic skill, as HF checkpoints."""
    from evomerge.zoo import build_zoo

    report = build_zoo(out_dir, preset=preset, seed=seed, force=force, log=console.print)
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

    recipe = load_any(config).with_zoo(zoo)
    t0 = time.perf_counter()
    out = merge_to_dir(
        recipe,
        out_dir,
        device=device,
        overwrite=overwrite,
        allow_pickle=allow_pickle,
        max_shard_size=_parse_size(max_shard_size),
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

    recipe = mergekit_yaml.load_any(config)
    if to == "recipe":
        console.print(recipe.to_yaml(), end="", highlight=False, markup=False)
    elif to == "mergekit":
        data = mergekit_yaml.to_mergekit(recipe.with_zoo(zoo))
        console.print(mergekit_yaml.dump(data), end="", highlight=False, markup=False)
    else:
        raise typer.BadParameter("--to must be recipe or mergekit")


@app.command()
@_friendly
def demo(
    zoo: Annotated[Path, typer.Option(help="Zoo directory (built if missing)")] = DEFAULT_ZOO,
    out: Annotated[Path, typer.Option(help="Where to write the merged model")] = Path("out/demo"),
    preset: str = "default",
) -> None:
    """The main job: build the tiny zoo (cached), merge its experts, score the merge."""
    from evomerge.evaluate.engines import score_task
    from evomerge.evaluate.hf import HFEngine
    from evomerge.evaluate.tasks import load_task
    from evomerge.merge.materialize import materialize, merge_to_dir, plan
    from evomerge.mergekit_yaml import load_any
    from evomerge.zoo import build_zoo

    t0 = time.perf_counter()
    report = build_zoo(zoo, preset=preset, seed=0, log=console.print)
    console.print(report.table())
    recipe_file = REPO_ROOT / "experiments" / "zoo-dare-ties.yaml"
    recipe = load_any(recipe_file).with_zoo(zoo)
    merged = merge_to_dir(recipe, out, overwrite=True)
    console.print(f"\nmerged {recipe_file.name} → {merged}")
    engine = HFEngine(zoo / "base")  # resident engine: the merge is swapped in, not reloaded
    engine.load_weights(materialize(plan(recipe)))
    table = Table(title=f"merge {recipe.content_hash()} on 200 held-out items per skill")
    for col in ("skill", "token accuracy", "exact match"):
        table.add_column(col)
    for skill in report.skills:
        soft, exact = load_task(skill, zoo=zoo), load_task(f"{skill}-exact", zoo=zoo)
        ids = soft.item_ids[:200]
        table.add_row(
            skill,
            f"{score_task(engine, soft, ids).value:.3f}",
            f"{score_task(engine, exact, ids).value:.3f}",
        )
    console.print(table)
    console.print(f"demo finished in {time.perf_counter() - t0:.0f}s")


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
    device: str = "cpu",
    seed: int = 0,
) -> None:
    """Score one checkpoint on tasks, in full or with a cheap estimator."""
    from evomerge.calibrate import build_calibration
    from evomerge.evaluate.engines import score_task
    from evomerge.evaluate.estimators import make_estimator
    from evomerge.evaluate.hf import HFEngine
    from evomerge.evaluate.tasks import load_task

    tasks = [load_task(t, zoo=zoo) for t in task]  # every task checked before any scoring
    est = make_estimator(estimator, seed)
    engine = HFEngine(model_dir, device=device)
    table = Table(title=f"{model_dir} · estimator {estimator}")
    for col in ("task", "metric", "score", "± stderr", "items used", "time (s)"):
        table.add_column(col)
    for t in tasks:
        if est.needs_calibration:
            models = calibrate_with or [zoo / "base", *sorted((zoo / "experts").iterdir())]
            calib_engine = HFEngine(models[0], device=device)
            est.calibrate(build_calibration(calib_engine, t, models,
                                            n_merges=calibration_merges, seed=seed,
                                            log=console.print))
        t0 = time.perf_counter()
        ids = est.select(t.item_ids)
        res = score_task(engine, t, ids)
        e = est.estimate(res.scores, t.item_ids)
        se = f"{e.stderr:.4f}" if e.stderr is not None else "-"
        table.add_row(t.name, t.metric, f"{e.value:.4f}", se, f"{e.items_used}/{e.n_items}",
                      f"{time.perf_counter() - t0:.1f}")
    console.print(table)


def _parse_size(text: str) -> int:
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "B": 1}
    t = text.strip().upper()
    for u, mult in units.items():
        if t.endswith(u):
            return int(float(t[: -len(u)]) * mult)
    return int(t)


if __name__ == "__main__":
    app()

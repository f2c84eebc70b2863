"""Commands on models: build a zoo, merge a recipe, convert mergekit YAML, show a space, score a
checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from evomerge.cli.app import (
    OptionError,
    app,
    console,
    err,
    friendly,
    key_values,
    parse_size,
    space_app,
    zoo_app,
)
from evomerge.cli.options import DEFAULT_ZOO, ZooOption, flag
from evomerge.errors import naming


@zoo_app.command("build")
@friendly
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
    force: Annotated[bool, flag(help="Rebuild even if a matching zoo is there")] = False,
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
@friendly
def merge(
    config: Annotated[Path, typer.Argument(help="An evomerge recipe or a mergekit YAML")],
    out_dir: Annotated[Path, typer.Argument(help="New checkpoint directory (must not exist)")],
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    overwrite: Annotated[bool, flag(help="Replace an existing output directory")] = False,
    zoo: ZooOption = DEFAULT_ZOO,
    allow_pickle: Annotated[bool, flag(help="Read .bin pickle weights (unsafe)")] = False,
    max_shard_size: Annotated[str, typer.Option(help="e.g. 5GB, 500MB")] = "5GB",
) -> None:
    """Materialize a recipe into a Hugging Face checkpoint."""
    from evomerge.merge.materialize import merge_to_dir
    from evomerge.mergekit_yaml import load_any

    shard_size = parse_size(max_shard_size)  # before any work
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
@friendly
def convert(
    config: Annotated[Path, typer.Argument(help="An evomerge recipe or a mergekit YAML")],
    to: Annotated[str, typer.Option(help="recipe or mergekit")] = "mergekit",
    zoo: ZooOption = DEFAULT_ZOO,
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


@space_app.command("show")
@friendly
def space_show(
    name: Annotated[str, typer.Argument(help="A preset (search_spaces/NAME.yaml) or a path")],
    source: Annotated[list[str], typer.Option(help="NAME=PATH (or zoo:…); repeat for every model")],
    base: Annotated[str | None, typer.Option(help="The base model's NAME")] = None,
    zoo: ZooOption = DEFAULT_ZOO,
    option: Annotated[
        list[str] | None, typer.Option(help="KEY=YAML override, e.g. granularity=2")
    ] = None,
    genes: Annotated[bool, flag(help="List every gene")] = True,
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
        spec = load_space(name, key_values(option, "--option"))
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
@friendly
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
        engine_options=key_values(engine_option, "--engine-option"),
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

"""Taking a recipe out of a run: choosing one evaluated recipe and writing it as our YAML, as
mergekit YAML, or as a materialized checkpoint with its model card.

An export is the model the search scored, or it says why not: ``hf`` runs the same merge the
workers ran (same plan, same masks); mergekit YAML of a random-mask method (DARE, DELLA) warns
that mergekit draws other masks. Exports are atomic and never replace an existing file or
directory unless ``force``; what they write gets the modes the user's umask gives new files.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from evomerge.errors import OutputExistsError
from evomerge.fileio import atomic_write_text
from evomerge.objectives import utility
from evomerge.recipe import Recipe
from evomerge.run.archive import Archive, Evaluation
from evomerge.run.run_dir import RunError, open_archive

EXPORT_FORMATS = ("recipe", "mergekit", "hf")
RECIPE_FILE = "recipe.yaml"  # beside an hf export's weights: `evomerge merge recipe.yaml OUT`


# -- choosing ----------------------------------------------------------------------------------
def pick(
    archive: Archive,
    *,
    trial: int | None = None,
    best: str | None = None,
    knee: bool = False,
    prefer: Sequence[float] | None = None,
    where: str = "the run",
    by: str = "estimate",
) -> Evaluation:
    """One evaluated recipe of a run (``where``, in errors): a trial by number, the best on an
    objective, the knee, or the front member ``prefer``'s weights favour (:func:`preferred`).
    ``by="confirmed"`` ranks best, knee and prefer by the scores ``evomerge confirm`` measured
    (held-out, else full), among the confirmed trials only; the trial comes back as the search
    recorded it."""
    chosen = (trial is not None, best is not None, bool(knee), prefer is not None)
    if sum(chosen) != 1:
        raise RunError("choose exactly one of --trial N, --best OBJECTIVE, --knee, --prefer W,…")
    if by not in ("estimate", "confirmed"):
        raise RunError(f"--by {by!r}: choose estimate or confirmed")
    if trial is not None:
        ev: Evaluation | None = archive.trial(trial)
    else:
        ranked = archive.confirmed() if by == "confirmed" else archive  # refuses none confirmed
        if best is not None:
            ev = ranked.best(best)
        elif knee:
            ev = ranked.knee()
        else:
            ev = preferred(ranked, prefer)  # type: ignore[arg-type]
        if by == "confirmed":
            if ev is None or ev.number is None:
                raise RunError(f"{where}: no confirmed trial to export")
            ev = archive.trial(ev.number)
    if ev is None or not ev.recipe:
        raise RunError(f"{where}: no evaluated recipe to export yet")
    return ev


def parse_weights(text: str, objectives: Sequence[str]) -> list[float]:
    """``--prefer`` as given: one weight per objective, in the run's objective order."""
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise RunError(f"--prefer {text!r}: expected numbers separated by commas") from None
    if len(weights) != len(objectives):
        raise RunError(
            f"--prefer {text!r}: {len(weights)} weight(s) for {len(objectives)} objectives "
            f"({', '.join(objectives)})"
        )
    return weights


def front_utility(archive: Archive, front: Sequence[Evaluation]) -> np.ndarray:
    """Each front member's objectives on a common scale: 0 for the front's worst value of an
    objective, 1 for its best (directions taken into account), linear in between; an objective
    on which the whole front ties counts 1 for every member."""
    return utility(np.array([e.values for e in front], dtype=float), archive.directions)


def preferred(archive: Archive, weights: Sequence[float]) -> Evaluation | None:
    """The front member with the largest weighted sum of :func:`front_utility` (ties: the
    earliest trial). Weights are relative: (2, 1) and (4, 2) choose the same member."""
    w = np.array([float(x) for x in weights])
    if len(w) != len(archive.objectives):
        raise RunError(
            f"--prefer: {len(w)} weight(s) for {len(archive.objectives)} objectives "
            f"({', '.join(archive.objectives)})"
        )
    if not all(math.isfinite(x) and x >= 0 for x in w) or w.sum() <= 0:
        raise RunError(f"--prefer: weights must be finite, >= 0 and not all 0, got {list(w)}")
    front = archive.front()
    if not front:
        return None
    score = front_utility(archive, front) @ w
    return front[int(np.argmax(score))]  # the front is in trial order: the first best wins


# -- writing -----------------------------------------------------------------------------------
def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def export(
    ev: Evaluation,
    out: Path,
    format: str = "recipe",
    *,
    force: bool = False,
    run_dir: Path | None = None,
    warn: Callable[[str], None] = _stderr,
) -> Path:
    """Write ``ev``'s recipe as our YAML, as mergekit YAML, or materialized (``hf``: a dir with
    a model card and ``recipe.yaml``; ``run_dir`` gives the card the run's facts). An existing
    ``out`` is replaced only with ``force`` (and then atomically)."""
    if format not in EXPORT_FORMATS:
        raise RunError(f"--format must be recipe, mergekit or hf, not {format!r}")
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not force:
        raise OutputExistsError(f"{out} exists; choose another --out or pass --force to replace it")
    recipe = Recipe.from_dict(yaml.safe_load(ev.recipe))
    try:  # whole or not at all: a checkpoint by directory renames, a file by atomic write
        if format == "hf":
            return _export_hf(ev, recipe, out, run_dir=run_dir, force=force)
        text = ev.recipe if format == "recipe" else _mergekit_text(ev, recipe, warn)
        atomic_write_text(out, text)
    except OSError as e:  # a full disk, a read-only directory: nothing left under `out`
        raise RunError(f"cannot write {out}: {e.strerror or e}") from None
    return out


def _mergekit_text(ev: Evaluation, recipe: Recipe, warn: Callable[[str], None]) -> str:
    from evomerge import mergekit_yaml

    comments = [
        f"mergekit config exported by evomerge from trial {ev.number} (recipe {ev.recipe_hash})"
    ]
    data = mergekit_yaml.to_mergekit(recipe)
    for caveat in (
        mergekit_yaml.random_mask_caveat(recipe),
        mergekit_yaml.depth_caveat(recipe),
    ):
        if caveat is not None:
            warn(caveat)
            comments.append(f"WARNING: {caveat}")
    if recipe.routing is not None:
        comments.append(
            "routed layers as passthrough slices; a slot's input scale is folded into its "
            "output projections as mergekit's `scale` parameter (1 / the cumulative scale)"
        )
    return mergekit_yaml.dump(data, comments=comments)


def _export_hf(
    ev: Evaluation, recipe: Recipe, out: Path, *, run_dir: Path | None, force: bool
) -> Path:
    """The merge the workers ran (same plan and masks), written shard by shard into a temporary
    sibling directory that is renamed onto ``out`` once complete."""
    from evomerge.checkpoint import CheckpointWriter
    from evomerge.merge.materialize import materialize, plan

    portable, card = model_card(ev, recipe, out=out, run_dir=run_dir)
    mp = plan(recipe)
    with CheckpointWriter(out, config=mp.config, overwrite=force) as writer:
        for name, tensor in materialize(mp):
            writer.add(name, tensor)
        return writer.finish(
            num_layers=mp.num_layers if recipe.routing else None,
            tokenizer_from=mp.sources[recipe.tokenizer_name].path,
            model_card=card,
            extra_files={RECIPE_FILE: portable},
        )


# -- the model card ----------------------------------------------------------------------------
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("evomerge")
    except PackageNotFoundError:
        return "unknown"


def _heldout(archive: Archive, ev: Evaluation) -> dict[str, float]:
    """``ev``'s scores on the items the search never saw, where ``evomerge confirm`` measured
    them (else nothing: the card says the trial was not confirmed)."""
    found = archive.confirmations("holdout").get(int(ev.number)) if ev.number is not None else None
    return {str(k): float(v) for k, v in found["scores"].items()} if found else {}


def model_card(
    ev: Evaluation, recipe: Recipe, *, out: Path, run_dir: Path | None = None
) -> tuple[str, str]:
    """``(recipe.yaml, README.md)`` for an hf export of ``ev``: the recipe with its sources as
    the experiment named them (hub ids pinned to the revision the run used, ``zoo:`` names,
    local paths), and the card."""
    from evomerge import model_card as mc

    experiment: Any = None
    archive: Archive | None = None
    info: dict[str, Any] = {}
    objectives: list[str] = []
    directions: list[str] = []
    if run_dir is not None:
        from evomerge.experiment import Experiment
        from evomerge.run.run_dir import EXPERIMENT_FILE, read_info

        info = read_info(run_dir)
        experiment = Experiment.load(Path(run_dir) / EXPERIMENT_FILE)
        archive = open_archive(run_dir)
        objectives, directions = archive.objectives, archive.directions
    refs: dict[str, str] = dict(experiment.sources) if experiment is not None else {}
    revisions: dict[str, str] = dict(info.get("revisions") or {})
    facts, portable_sources = [], {}
    for name, src in recipe.sources.items():
        ref = refs.get(name, src.path)
        fact = mc.source_fact(name, ref, revision=revisions.get(name), local_dir=src.path)
        facts.append(fact)
        pinned = f"{fact.ref}@{fact.revision}" if fact.kind == "hub" and fact.revision else ref
        portable_sources[name] = src.model_copy(update={"path": pinned})
    portable = recipe.model_copy(update={"sources": portable_sources}).to_yaml()
    estimators = {o.label: o.estimator for o in experiment.objectives} if experiment else {}
    obj = mc.objective_facts(
        objectives or [f"objective{i}" for i in range(len(ev.values or []))],
        directions or ["?"] * len(ev.values or []),
        ev.values or [],
        estimators=estimators,
        fidelity=ev.fidelity,
        stderr=ev.stderr,
        heldout=_heldout(archive, ev) if archive is not None else {},
    )
    run = f"{experiment.name}-{info['experiment_hash']}" if experiment is not None else "unknown"
    zoo = " --zoo ZOO_DIR" if any(f.kind == "zoo" for f in facts) else ""
    commands = [f"evomerge merge {RECIPE_FILE} OUT_DIR{zoo}  # from this directory"]
    notes = ["`ZOO_DIR`: the tiny zoo's directory (`evomerge zoo build`)."] if zoo else []
    found, role = None, ""
    if run_dir is not None and archive is not None:
        from evomerge.run.reference_points import read_reference
        from evomerge.run.standing import role as role_of
        from evomerge.run.standing import standing

        commands.append(
            f"evomerge export RUN_DIR --trial {ev.number} --format hf --out OUT_DIR"
            "  # from the search's run directory"
        )
        notes.append(f"`RUN_DIR`: the directory of run `{run}`, where it ran.")
        role = role_of(archive, ev)
        found = standing(archive, read_reference(run_dir)[1], trial=ev.number)
    card = mc.render(
        mc.CardFacts(
            recipe_yaml=portable,
            recipe_hash=ev.recipe_hash,
            method=recipe.method,
            base=recipe.base,
            sources=facts,
            objectives=obj,
            run=run,
            trial=int(ev.number if ev.number is not None else -1),
            version=_version(),
            commands=commands,
            notes=notes,
            role=role,
            comparison=found.rows if found else (),
            comparison_caption=found.caption if found else "",
            compared=found.trial.values if found else (),
            local_name=out.name,
        )
    )
    return portable, card

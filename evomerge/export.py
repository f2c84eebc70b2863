"""Taking a recipe out of a run: choosing one evaluated recipe and writing it as our YAML, as
mergekit YAML, or as a materialized checkpoint."""

from __future__ import annotations

from pathlib import Path

from evomerge.archive import Archive, Evaluation
from evomerge.fileio import atomic_write_text
from evomerge.run_dir import RunError

EXPORT_FORMATS = ("recipe", "mergekit", "hf")


def pick(
    archive: Archive,
    *,
    trial: int | None = None,
    best: str | None = None,
    knee: bool = False,
    where: str = "the run",
    by: str = "estimate",
) -> Evaluation:
    """One evaluated recipe of a run (``where``, in errors): a trial by number, the best on an
    objective, or the knee. ``by="confirmed"`` ranks best and knee by the scores ``evomerge
    confirm`` measured (held-out, else full), among the confirmed trials only; the trial comes
    back as the search recorded it."""
    if sum(x is not None and x is not False for x in (trial, best, knee)) != 1:
        raise RunError("choose exactly one of --trial N, --best OBJECTIVE, --knee")
    if by not in ("estimate", "confirmed"):
        raise RunError(f"--by {by!r}: choose estimate or confirmed")
    if by == "confirmed" and trial is None:
        view = archive.confirmed()  # refuses a run with nothing confirmed
        chosen = view.best(best) if best is not None else view.knee()
        if chosen is None or chosen.number is None:
            raise RunError(f"{where}: no confirmed trial to export")
        return archive.trial(chosen.number)
    ev = (
        archive.trial(trial)
        if trial is not None
        else archive.best(best)
        if best is not None
        else archive.knee()
    )
    if ev is None or not ev.recipe:
        raise RunError(f"{where}: no evaluated recipe to export yet")
    return ev


def export(ev: Evaluation, out: Path, format: str = "recipe") -> Path:
    """Write ``ev``'s recipe as our YAML, as mergekit YAML, or materialized (``hf``: a dir)."""
    import yaml

    from evomerge.recipe import Recipe

    if format not in EXPORT_FORMATS:
        raise RunError(f"--format must be recipe, mergekit or hf, not {format!r}")
    out = Path(out)
    recipe = Recipe.from_dict(yaml.safe_load(ev.recipe))
    try:  # whole or not at all: a checkpoint by directory renames, a file by atomic write
        if format == "hf":
            from evomerge.merge.materialize import merge_to_dir

            return merge_to_dir(recipe, out)
        if format == "recipe":
            text = ev.recipe
        else:
            from evomerge import mergekit_yaml

            text = mergekit_yaml.dump(mergekit_yaml.to_mergekit(recipe))
        atomic_write_text(out, text)
    except OSError as e:  # a full disk, a read-only directory: nothing left under `out`
        raise RunError(f"cannot write {out}: {e.strerror or e}") from None
    return out

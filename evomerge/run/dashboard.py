"""A run as optuna-dashboard shows it: notes that say what the study's attributes cannot.

The archive is an optuna study, so optuna-dashboard opens a run as it is. What a user looks
for there is the merge to take: :func:`write_notes` writes the study's note (the knee against
the base, each source and the uniform merge, and the export command) and a note on each front
member's trial (which member it is, and its recipe), with optuna-dashboard's own ``save_note``.
The knee's trial note is headed as the knee. Trials noted before and no longer on the front get
a note that says so. Notes are Markdown, versioned by optuna-dashboard; writing them again
replaces them. Nothing else in the study changes.
"""

from __future__ import annotations

from pathlib import Path

from evomerge.errors import EvomergeError
from evomerge.model_card import comparison_table, rounded
from evomerge.run.archive import Archive, Evaluation
from evomerge.run.reference_points import read_reference
from evomerge.run.run_dir import open_archive, storage_url
from evomerge.run.standing import Standing, role, standing

NOTED_ATTR = "evomerge:noted"  # study system attr: the trials given a note


class DashboardError(EvomergeError):
    """optuna-dashboard is not installed, or the run has nothing to show."""


def _save_note():  # type: ignore[no-untyped-def]
    try:
        from optuna_dashboard import save_note
    except ImportError:
        raise DashboardError(
            "optuna-dashboard is not installed: pip install 'evomerge[dashboard]'"
        ) from None
    return save_note


def write_notes(run_dir: Path) -> dict[int, str]:
    """Write the study's note and the front's trial notes; trial number → the note written."""
    import optuna

    save_note = _save_note()
    run_dir = Path(run_dir)
    archive = open_archive(run_dir)
    study = archive.study
    front = archive.front()
    if not front:
        raise DashboardError(f"{run_dir}: no evaluated recipe yet, nothing to note")
    knee = archive.knee()
    found = standing(archive, read_reference(run_dir)[1])
    save_note(study, study_note(run_dir, archive, knee, found))
    # save_note takes a live optuna.Trial, built from the storage's trial id (FrozenTrial's
    # private _trial_id: tests/test_dashboard.py reads every note back, so a rename fails there)
    ids = {t.number: t._trial_id for t in study.get_trials(deepcopy=False)}
    before = archive.system_attrs().get(NOTED_ATTR, [])
    notes: dict[int, str] = {}
    for ev in front:
        notes[int(ev.number or 0)] = trial_note(archive, ev, knee)
    for n in before:
        if n not in notes and n in ids:
            notes[n] = (
                f"## Trial {n}\n\nNo longer on the Pareto front: later trials beat it on every "
                "objective."
            )
    for n, text in notes.items():
        save_note(optuna.trial.Trial(study, ids[n]), text)
    archive.set_system_attr(NOTED_ATTR, sorted(notes))
    return notes


def study_note(
    run_dir: Path, archive: Archive, knee: Evaluation | None, found: Standing | None
) -> str:
    lines = [f"# The merge to take: trial {knee.number}, the knee" if knee else "# No knee yet"]
    if knee is not None:
        lines += [
            "",
            "Of the Pareto front, the member nearest the ideal point (the best score on every "
            "objective at once). Its trial note holds its recipe.",
        ]
    if found is not None:
        mine = (f"knee (trial {found.trial.trial})", found.trial.values)
        lines += ["", *comparison_table(archive.objectives, mine, found.rows), "", found.caption]
    lines += [
        "",
        "To take it: `evomerge export " + str(run_dir) + " --knee --format hf --out merged`",
        "",
        "Parameters named `gene:…` are the optimizer's unit genes (0 … 1), not recipe values; "
        "the `recipe.…` attributes are the values the merge uses.",
    ]
    return "\n".join(lines)


def trial_note(archive: Archive, ev: Evaluation, knee: Evaluation | None) -> str:
    is_knee = knee is not None and knee.number == ev.number
    head = f"## ★ The knee: trial {ev.number}" if is_knee else f"## Trial {ev.number}"
    scores = ", ".join(
        f"{n} {v:.4f}" for n, v in zip(archive.objectives, ev.values or [], strict=True)
    )
    return "\n".join(
        [
            head,
            "",
            f"It is {role(archive, ev)}. Scores as the search saw them: {scores}.",
            "",
            f"Recipe `{ev.recipe_hash}` (values rounded to 6 decimals; "
            f"`evomerge export RUN_DIR --trial {ev.number}` writes it exactly):",
            "",
            "```yaml",
            rounded(ev.recipe).rstrip(),
            "```",
        ]
    )


def serve(run_dir: Path, *, host: str, port: int) -> None:
    """Write the notes, then serve the run's study with optuna-dashboard until interrupted."""
    write_notes(run_dir)
    from optuna_dashboard import run_server

    run_server(storage_url(Path(run_dir)), host=host, port=port)

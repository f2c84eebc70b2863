"""A run in optuna-dashboard: the notes `evomerge dashboard` writes (read back with
optuna-dashboard's own `get_note`, and from the real server's API), and what the study's
attributes no longer hold (the full recipe, the genome, the scored item ids)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from typer.testing import CliRunner
from unit_experiment import experiment, run_to_the_end, write_experiment

from evomerge.cli import app
from evomerge.model_card import rounded
from evomerge.run.archive import STUDY_NAME
from evomerge.run.dashboard import NOTED_ATTR
from evomerge.run.reference_points import read_reference
from evomerge.run.run_dir import open_archive, storage_url

get_note = pytest.importorskip("optuna_dashboard").get_note
runner = CliRunner()


@pytest.fixture(scope="module")
def run(unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dashboard")
    exp = write_experiment(root, experiment("unit-dashboard", budget=8))
    return run_to_the_end(exp, root / "run", unit_zoo)


def _study(run: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run))


def test_attributes_hold_what_a_reader_needs(run: Path) -> None:
    study = _study(run)
    archive = open_archive(run)
    for t, ev in zip(study.get_trials(), archive.evaluations, strict=True):
        assert "recipe" not in t.user_attrs and "genome" not in t.user_attrs
        assert all(name.startswith("gene:") for name in t.params)
        assert t.system_attrs["evomerge:recipe"] == ev.recipe  # evomerge still reads them
        assert t.system_attrs["evomerge:genome"] == ev.genome
    assert "scored_items" not in study.user_attrs
    assert set(archive.scored_items()) == {"rev9", "shift3"}


def test_notes_name_the_knee_and_hold_the_recipes(run: Path) -> None:
    res = runner.invoke(app, ["dashboard", str(run), "--notes-only"])
    assert res.exit_code == 0, res.output
    study = _study(run)
    archive = open_archive(run)
    knee = archive.knee()
    assert knee is not None
    note = get_note(study)
    assert f"# The merge to take: trial {knee.number}, the knee" in note
    _, points = read_reference(run)
    for p in points:
        row = next(line for line in note.splitlines() if line.startswith(f"| {p.label} |"))
        for name, k, v in zip(archive.objectives, knee.values, p.values, strict=True):  # type: ignore[arg-type]
            assert f"{v:.4f} (Δ {k - v:+.4f}" in row, (name, row)
    assert f"evomerge export {run} --knee --format hf --out merged" in note
    trials = {t.number: t for t in study.get_trials()}
    front = {e.number for e in archive.front()}
    for n in front:
        text = get_note(optuna.trial.Trial(study, trials[n]._trial_id))
        head = text.splitlines()[0]
        assert head == (f"## ★ The knee: trial {n}" if n == knee.number else f"## Trial {n}")
        shown = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
        assert shown == yaml.safe_load(rounded(archive.trial(n).recipe))
    # a trial noted before and no longer on the front is told so
    off = next(e.number for e in archive.evaluations if e.number not in front)
    storage = study._storage
    storage.set_study_system_attr(study._study_id, NOTED_ATTR, [off])
    assert runner.invoke(app, ["dashboard", str(run), "--notes-only"]).exit_code == 0
    text = get_note(optuna.trial.Trial(study, trials[off]._trial_id))
    assert text.startswith(f"## Trial {off}\n\nNo longer on the Pareto front")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_the_served_study_shows_the_notes(run: Path) -> None:
    """`evomerge dashboard` serves the run on a local port; the dashboard's own API hands the
    study's note and the knee's trial note to its page."""
    port = _free_port()
    cmd = [sys.executable, "-m", "evomerge.cli", "dashboard", str(run), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, studies = time.time() + 60, None
        while studies is None and time.time() < deadline:
            try:
                studies = _get(f"http://127.0.0.1:{port}/api/studies")
            except OSError:
                time.sleep(0.3)
        if studies is None:
            proc.terminate()
            pytest.fail(f"the dashboard did not start: {proc.communicate(timeout=30)[0]!r}")
        (sid,) = [
            s["study_id"] for s in studies["study_summaries"] if s["study_name"] == STUDY_NAME
        ]
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{sid}")
        knee = open_archive(run).knee()
        assert knee is not None
        assert f"trial {knee.number}, the knee" in detail["note"]["body"]
        (t,) = [t for t in detail["trials"] if t["number"] == knee.number]
        assert t["note"]["body"].startswith(f"## ★ The knee: trial {knee.number}")
        assert not any(a["key"] in ("recipe", "genome") for a in t["user_attrs"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)

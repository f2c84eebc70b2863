"""Held-out confirmation on the unit zoo: the search never scores a held-out item (from the ids the
run stored, checked against what reached the engine), confirm equals an independent re-score of
the materialized recipe, the split is stable, `--by confirmed` ranks by confirmed scores, a
confirm cut short resumes, and a run without holdout says so."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner
from unit_experiment import experiment, run_to_the_end, write_experiment

from evomerge.cli import app
from evomerge.evaluate.holdout import HoldoutError, split_items
from evomerge.evaluate.scoring import score_task
from evomerge.evaluate.select import make_engine
from evomerge.evaluate.tasks import load_task
from evomerge.experiment import Experiment
from evomerge.merge.materialize import merge_to_dir
from evomerge.recipe import Recipe
from evomerge.run import confirm as confirm_mod
from evomerge.run.archive import ArchiveError
from evomerge.run.confirm import ConfirmError, confirm, estimator_error, held_out_items
from evomerge.run.reference_points import read_reference
from evomerge.run.run_dir import open_archive

runner = CliRunner()
EXPERIMENT: dict[str, Any] = experiment(
    "unit-holdout",
    objectives=[
        {"task": "rev9", "estimator": "subsample:8"},
        # its own fraction and seed; anchor: calibrated on the search's items only
        {"task": "shift3", "estimator": "anchor:8", "holdout": {"fraction": 0.3, "seed": 7}},
    ],
    budget=8,
    holdout=0.2,
    # the first candidate is always promoted: it is scored on every item the search may see
    promotion={"enabled": True},
)


def _write(d: Path, **changes: Any) -> Path:
    return write_experiment(d, EXPERIMENT, **changes)


def _run(d: Path, zoo: Path, **changes: Any) -> Path:
    return run_to_the_end(_write(d, **changes), d / "run", zoo)


@pytest.fixture(scope="module")
def spied_run(
    unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, set[str]], dict[str, list[str]]]:
    """A run with holdout, and what really reached the engine and the calibration."""
    import evomerge.workers.local as local

    sent: dict[str, set[str]] = {}
    calibrated: dict[str, list[str]] = {}
    mp = pytest.MonkeyPatch()
    real_score, real_cal = local.score_prepared, local.build_calibration

    def score(engine: Any, prep: Any) -> Any:
        sent.setdefault(prep.task.name, set()).update(it.id for it in prep.items)
        return real_score(engine, prep)

    def cal(engine: Any, task: Any, *a: Any, **kw: Any) -> Any:
        calibrated[task.name] = list(task.item_ids)
        return real_cal(engine, task, *a, **kw)

    mp.setattr(local, "score_prepared", score)
    mp.setattr(local, "build_calibration", cal)
    try:
        run_dir = _run(tmp_path_factory.mktemp("holdout"), unit_zoo)
    finally:
        mp.undo()
    return run_dir, sent, calibrated


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    """A run of its own to confirm in (confirmations are written to the archive)."""
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


def _split(zoo: Path, task: str, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    t = load_task(task, zoo=zoo)
    return split_items(t.name, t.item_ids, fraction, seed)


def test_held_out_items_are_never_scored_during_the_search(
    spied_run: tuple[Path, dict[str, set[str]], dict[str, list[str]]], unit_zoo: Path
) -> None:
    run_dir, sent, calibrated = spied_run
    scored = open_archive(run_dir).scored_items()
    for label, fraction, seed in (("rev9", 0.2, 3), ("shift3", 0.3, 7)):
        pool, held = _split(unit_zoo, label, fraction, seed)
        assert held and pool and not set(pool) & set(held)
        assert len(pool) + len(held) == 200
        # the stored ids are those sent to the engine, and every search item was (promotion)
        assert scored[label] == sent[label] == set(pool)
        assert not scored[label] & set(held)
    assert sorted(calibrated["shift3"]) == sorted(_split(unit_zoo, "shift3", 0.3, 7)[0])
    held = held_out_items(Experiment.load(run_dir.parent / "exp.yaml"), unit_zoo)
    assert held == {
        "rev9": _split(unit_zoo, "rev9", 0.2, 3)[1],
        "shift3": _split(unit_zoo, "shift3", 0.3, 7)[1],
    }
    # fidelity: the share of the search's items (the first candidate was promoted to all)
    evs = open_archive(run_dir).evaluations
    n_pool = len(_split(unit_zoo, "rev9", 0.2, 3)[0])
    assert evs[0].fidelity["rev9"] == 1.0
    assert {e.fidelity["rev9"] for e in evs} <= {8 / n_pool, 1.0}


def test_confirm_equals_an_independent_rescore_of_the_materialized_recipe(
    spied_run: tuple[Path, dict[str, set[str]], dict[str, list[str]]],
    unit_zoo: Path,
    tmp_path: Path,
    console_width: Callable[[int], None],
) -> None:
    run_dir = _copy(spied_run[0], tmp_path)
    archive = open_archive(run_dir)
    knee = archive.knee()
    assert knee is not None and knee.number is not None and knee.values is not None
    [c] = confirm(run_dir, trials=[knee.number])
    model = merge_to_dir(
        Recipe.from_dict(yaml.safe_load(knee.recipe)).with_zoo(unit_zoo), tmp_path / "m"
    )
    engine = make_engine("hf", model)
    for i, (label, fraction, seed) in enumerate((("rev9", 0.2, 3), ("shift3", 0.3, 7))):
        held = _split(unit_zoo, label, fraction, seed)[1]
        scores = score_task(engine, load_task(label, zoo=unit_zoo), held).scores
        assert sorted(scores) == sorted(held)
        assert c.scores[label] == pytest.approx(np.mean([scores[h] for h in held]), abs=1e-12)
        assert c.items[label] == len(held) and c.fidelity[label] == len(held) / 200
        assert c.estimate[label] == knee.values[i]
        assert c.optimism[label] == pytest.approx(knee.values[i] - c.scores[label])
    # stored next to the trial, read back by a fresh archive
    stored = open_archive(run_dir).confirmations("holdout")
    assert list(stored) == [knee.number] and stored[knee.number]["scores"] == c.scores
    # --full: every item of the task
    [f] = confirm(run_dir, trials=[knee.number], full=True)
    every = score_task(engine, load_task("rev9", zoo=unit_zoo)).scores
    assert f.items["rev9"] == 200
    assert f.scores["rev9"] == pytest.approx(np.mean(list(every.values())), abs=1e-12)
    # the run's estimator error: mean |estimate − held-out score| over confirmed trials
    confirm(run_dir, top=3)
    evs = {e.number: e for e in open_archive(run_dir).evaluations}
    rows = open_archive(run_dir).confirmations("holdout")
    err = estimator_error(open_archive(run_dir))
    for i, label in enumerate(("rev9", "shift3")):
        gaps = [evs[n].values[i] - r["scores"][label] for n, r in rows.items()]  # type: ignore[index]
        assert err[label]["n"] == len(rows) == 3
        assert err[label]["mae"] == pytest.approx(np.mean(np.abs(gaps)))
        assert err[label]["optimism"] == pytest.approx(np.mean(gaps))
    console_width(200)
    res = runner.invoke(app, ["status", str(run_dir)])
    assert res.exit_code == 0 and "estimator error rev9" in res.output
    # one name and one sign: estimate − score, in status as in confirm's own table
    assert f"optimism {err['rev9']['optimism']:+.4f}: the mean estimate − score" in res.output
    assert f"{err['rev9']['mae']:.4f}" in res.output


@settings(max_examples=30, deadline=None)
@given(
    ids=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=60, unique=True),
    more=st.lists(st.text(min_size=1, max_size=8), max_size=20, unique=True),
    fraction=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**32),
)
def test_the_split_depends_only_on_task_item_and_seed(
    ids: list[str], more: list[str], fraction: float, seed: int
) -> None:
    pool, held = split_items("t", ids, fraction, seed)
    assert sorted(pool + held) == sorted(ids) and not set(pool) & set(held)
    # adding items (anywhere) and reordering move no other item across the split
    grown = [m for m in more if m not in ids] + ids[::-1]
    pool2, held2 = split_items("t", grown, fraction, seed)
    assert set(held) == set(held2) & set(ids) and set(pool) == set(pool2) & set(ids)


def test_holdout_fraction_seeds_and_errors(unit_zoo: Path) -> None:
    ids = [f"item-{i}" for i in range(4000)]
    for seed in (0, 1):
        held = split_items("rev9", ids, 0.2, seed)[1]
        assert abs(len(held) / 4000 - 0.2) < 4 * (0.2 * 0.8 / 4000) ** 0.5  # binomial: 4σ
    a, b = (set(split_items("rev9", ids, 0.2, s)[1]) for s in (0, 1))
    assert a != b and abs(len(a & b) / 4000 - 0.04) < 0.015  # independent draws overlap ≈ f²
    assert set(split_items("shift3", ids, 0.2, 0)[1]) != a  # the task is part of the draw
    assert set(split_items("rev9", ids, 0.1, 0)[1]) < a  # a smaller fraction: a subset
    with pytest.raises(HoldoutError, match="must lie in"):
        split_items("t", ids, 1.0, 0)
    # the objective's own holdout overrides the experiment's; costs have none; 0 turns it off
    exp = Experiment.parse(
        {
            **EXPERIMENT,
            "objectives": [
                {"task": "rev9", "holdout": 0},
                {"task": "shift3"},
                {"cost": "params", "reference": 1.0},
            ],
        }
    )
    assert [exp.holdout_of(o) for o in exp.objectives] == [None, (0.2, 3), None]
    assert held_out_items(exp, unit_zoo)["rev9"] == []
    with pytest.raises(ValueError, match="no items to hold out"):
        Experiment.parse(
            {**EXPERIMENT, "objectives": [{"cost": "params", "reference": 1, "holdout": 0.1}]}
        )
    # the estimator asks for more items than the holdout leaves: refused before any model
    big = Experiment.parse(
        {**EXPERIMENT, "objectives": [{"task": "rev9", "estimator": "subsample:190"}]}
    )
    with pytest.raises(Exception, match=r"subsample:190 asks for 190 items but 1\d\d of"):
        held_out_items(big, unit_zoo)
    # unset, the keys hash as before they existed; set, they change the search
    plain = {k: v for k, v in EXPERIMENT.items() if k != "holdout"}
    plain["objectives"] = [{"task": "rev9"}]
    h = Experiment.parse(plain).content_hash()
    assert Experiment.parse({**plain, "holdout": None}).content_hash() == h
    assert Experiment.parse({**plain, "holdout": 0.2}).content_hash() != h
    assert (
        Experiment.parse({**plain, "holdout": 0.2}).content_hash()
        == Experiment.parse({**plain, "holdout": {"fraction": 0.2}}).content_hash()
    )


def _knee(points: np.ndarray, numbers: list[int]) -> int:
    """The trial nearest the ideal point, objectives scaled to [0, 1] over the front (all
    maximized here; ties: the earliest trial): computed here, apart from the archive's code."""
    front = [
        i for i, p in enumerate(points) if not any(np.all(q >= p) and np.any(q > p) for q in points)
    ]
    f = points[front]
    lo, hi = f.min(0), f.max(0)
    d = np.linalg.norm((hi - f) / np.where(hi > lo, hi - lo, 1), axis=1)
    return min(zip(d, (numbers[i] for i in front), strict=True))[1]


def test_front_and_export_by_confirmed_rank_by_confirmed_scores(
    spied_run: tuple[Path, dict[str, set[str]], dict[str, list[str]]], tmp_path: Path
) -> None:
    run_dir = _copy(spied_run[0], tmp_path)
    res = runner.invoke(app, ["export", str(run_dir), "--knee", "--by", "confirmed", "--out", "x"])
    assert res.exit_code == 2 and "no trial of this run is confirmed yet" in res.output
    results = confirm(run_dir, top=8)  # every trial
    assert len(results) == 8
    numbers = [c.trial for c in results]
    pts = np.array([[c.scores["rev9"], c.scores["shift3"]] for c in results])
    out, best = tmp_path / "k.yaml", tmp_path / "best.yaml"
    res = runner.invoke(
        app, ["export", str(run_dir), "--knee", "--by", "confirmed", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    knee = _knee(pts, numbers)
    assert f"trial {knee} " in res.output
    assert out.read_text() == open_archive(run_dir).trial(knee).recipe
    res = runner.invoke(
        app, ["export", str(run_dir), "--best", "shift3", "--by", "confirmed", "--out", str(best)]
    )
    best_shift3 = numbers[int(np.argmax(pts[:, 1]))]
    assert f"trial {best_shift3} " in res.output
    assert best.read_text() == open_archive(run_dir).trial(best_shift3).recipe
    res = runner.invoke(app, ["front", str(run_dir), "--by", "confirmed", "--json"])
    assert res.exit_code == 0, res.output
    rows = yaml.safe_load(res.output)["front"]
    by_trial = {c.trial: c for c in results}
    for r in rows:  # the confirmed scores, only confirmed trials
        assert r["rev9"] == by_trial[r["trial"]].scores["rev9"]
    expected = [
        numbers[i]
        for i in range(8)
        if not any(np.all(q >= pts[i]) and np.any(q > pts[i]) for q in pts)
    ]
    assert sorted(r["trial"] for r in rows) == sorted(expected)
    res = runner.invoke(app, ["front", str(run_dir), "--by", "nope"])
    assert res.exit_code == 2 and "--by 'nope'" in res.output


def test_confirm_cut_short_resumes_without_rescoring(
    spied_run: tuple[Path, dict[str, set[str]], dict[str, list[str]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_dir = _copy(spied_run[0], tmp_path)
    calls: list[str] = []
    real = confirm_mod._Scorer.score

    def crashing(self: Any, recipe: str) -> Any:
        calls.append(recipe)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second trial
        return real(self, recipe)

    monkeypatch.setattr(confirm_mod._Scorer, "score", crashing)
    with pytest.raises(KeyboardInterrupt):
        confirm(run_dir, top=3)
    first = open_archive(run_dir).confirmations("holdout")
    assert len(first) == 1  # committed before the crash
    calls.clear()

    def counted(self: Any, recipe: str) -> Any:
        calls.append(recipe)
        return real(self, recipe)

    monkeypatch.setattr(confirm_mod._Scorer, "score", counted)
    results = confirm(run_dir, top=3)
    _, points = read_reference(run_dir)  # scored once, on the same items, after the trials
    assert len(calls) == 2 + len(points) and len(results) == 3
    assert calls[2:] == [p.recipe for p in points]
    assert all("holdout" in p.confirmed for p in read_reference(run_dir)[1])
    n = next(iter(first))
    assert next(c for c in results if c.trial == n).scores == first[n]["scores"]
    calls.clear()
    built: list[int] = []
    monkeypatch.setattr(confirm_mod, "_Scorer", lambda *a: built.append(1))
    assert [c.trial for c in confirm(run_dir, top=3)] == [c.trial for c in results]
    assert not built  # nothing left to score: no engine is even opened
    monkeypatch.undo()
    again = confirm(run_dir, trials=[n], again=True)  # asked: scored again, the same
    assert again[0].scores == first[n]["scores"]


def test_a_run_without_holdout(unit_zoo: Path, tmp_path: Path) -> None:
    run_dir = _run(
        tmp_path,
        unit_zoo,
        holdout=None,
        objectives=[EXPERIMENT["objectives"][0]],
        promotion={"enabled": False},
        budget=4,
    )
    archive = open_archive(run_dir)
    assert archive.trial(0).fidelity == {"rev9": 8 / 200}  # as before holdout existed
    assert len(archive.scored_items()["rev9"]) == 8
    with pytest.raises(ConfirmError, match=r"reserved no held-out items.*--full"):
        confirm(run_dir)
    res = runner.invoke(app, ["confirm", str(run_dir)])
    assert res.exit_code == 2 and "reserved no held-out items" in res.output
    res = runner.invoke(app, ["confirm", str(run_dir), "--full", "--trial", "0"])
    assert res.exit_code == 0, res.output
    assert "200 all" in res.output
    with pytest.raises(ArchiveError, match="confirmed on holdout items"):
        archive.confirmed("holdout")
    assert [e.number for e in archive.confirmed().evaluations] == [0]  # full ones, then

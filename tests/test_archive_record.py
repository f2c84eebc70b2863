"""How a trial is written: the fast insert against optuna's own ``add_trial``, and what
optuna-dashboard reads (metric names, real start and end, the recipe's values, the knee)."""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from unit_experiment import experiment, write_experiment

from evomerge.genes import Gene
from evomerge.recipe import PerLayer, Recipe, numbers
from evomerge.run import lifecycle as search
from evomerge.run.archive import Archive, Evaluation
from evomerge.run.run_dir import STUDY_NAME, open_archive, storage_url

GENES = [Gene(f"g{i}") for i in range(5)] + [Gene("route", 3)]


def _archive(path: Path, name: str = "s") -> Archive:
    return Archive(
        f"sqlite:///{path}",
        study_name=name,
        objectives=["rev9", "shift3"],
        directions=["maximize", "minimize"],
        genes=GENES,
        experiment_hash="h",
    )


def _evaluation(i: int, *, ok: bool = True) -> Evaluation:
    rng = np.random.default_rng(i)
    genome = [*rng.random(5).tolist(), float(i % 3)]
    return Evaluation(
        recipe_hash=f"r{i}",
        recipe=f"method: linear\nsources:\n  a:\n    path: /x\n    parameters: {{weight: {i}.5}}\n",
        genome=genome,
        values=[float(rng.random()), math.inf if i == 2 else float(rng.random())] if ok else None,
        status="ok" if ok else "failed",
        error=None if ok else "RecipeError: no",
        fidelity={"rev9": 0.5},
        stderr={"rev9": 0.01, "shift3": None},
        timings={"total": 0.25 + i},
        worker="local",
        started=1.7e9 + 10 * i,
    )


def test_the_fast_insert_writes_what_add_trial_writes(tmp_path: Path) -> None:
    ours = _archive(tmp_path / "a.db")
    # SQLite: the fast path is the one tested. It writes optuna's private table models
    # (optuna.storages._rdb.models, run/trial_writer.py says why); a release that moves them
    # fails here first (make test-latest), while users' runs fall back to add_trial (below)
    assert ours._writer is not None, "optuna's RDB models moved: update run/trial_writer.py"
    ref = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'ref.db'}", directions=["maximize", "minimize"]
    )
    for i in range(4):
        ev = ours.record(_evaluation(i, ok=i != 1))
        assert ev.number == i
    # the reference: optuna's own add_trial of the trials as read back, renumbered
    got = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'a.db'}").trials
    for t in got:
        ref.add_trial(
            optuna.trial.FrozenTrial(
                number=-1,
                state=t.state,
                value=None,
                values=t.values,
                datetime_start=t.datetime_start,
                datetime_complete=t.datetime_complete,
                params=t.params,
                distributions=t.distributions,
                user_attrs=t.user_attrs,
                system_attrs=t.system_attrs,
                intermediate_values={},
                trial_id=-1,
            )
        )
    want = optuna.load_study(study_name=ref.study_name, storage=f"sqlite:///{tmp_path / 'ref.db'}")
    assert len(got) == 4
    for a, b in zip(got, want.trials, strict=True):
        assert (a.number, a.state, a.values, a.params) == (b.number, b.state, b.values, b.params)
        assert a.distributions == b.distributions and a.user_attrs == b.user_attrs
        assert a.system_attrs == b.system_attrs
        assert (a.datetime_start, a.datetime_complete) == (b.datetime_start, b.datetime_complete)
    # and against what was recorded, independently of both
    assert got[1].state == optuna.trial.TrialState.FAIL and got[1].values is None
    assert got[0].values == _evaluation(0).values and got[3].values == _evaluation(3).values
    assert got[2].state == optuna.trial.TrialState.FAIL  # a non-finite score is a failure
    assert got[0].params["gene:route"] == 0 and got[3].params["gene:route"] == 0
    assert got[0].params["gene:g0"] == pytest.approx(_evaluation(0).genome[0], rel=1e-12)
    # the exact genome and the full recipe kept where optuna-dashboard does not list them
    assert got[0].system_attrs["evomerge:genome"] == _evaluation(0).genome
    assert got[0].system_attrs["evomerge:recipe"] == _evaluation(0).recipe
    assert "genome" not in got[0].user_attrs and "recipe" not in got[0].user_attrs
    # reopened, the archive serves the same evaluations
    again = _archive(tmp_path / "a.db")
    assert [e.recipe_hash for e in again.evaluations] == ["r0", "r1", "r2", "r3"]
    assert again.lookup("r3").genome == _evaluation(3).genome  # type: ignore[union-attr]


def test_without_optunas_private_models_trials_go_through_add_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The private API is a speed-up, never a dependency: where optuna's table models are gone,
    the archive records through ``add_trial`` and reads back the very same trials."""
    fast = _archive(tmp_path / "fast.db")
    import optuna.storages._rdb as rdb

    monkeypatch.delattr(rdb, "models")  # as if a release had moved them: the import fails
    monkeypatch.setitem(sys.modules, "optuna.storages._rdb.models", None)
    slow = _archive(tmp_path / "slow.db")
    assert fast._writer is not None and slow._writer is None
    for i in range(4):
        fast.record(_evaluation(i, ok=i != 1))
        slow.record(_evaluation(i, ok=i != 1))
    monkeypatch.undo()
    a, b = (
        optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / f}").trials
        for f in ("fast.db", "slow.db")
    )
    assert len(a) == len(b) == 4
    for x, y in zip(a, b, strict=True):
        assert (x.number, x.state, x.values, x.params) == (y.number, y.state, y.values, y.params)
        assert x.distributions == y.distributions and x.user_attrs == y.user_attrs
        assert x.datetime_start == y.datetime_start  # the evaluation's start (its end: the commit)


def test_trial_times_are_the_evaluation_s_start_and_its_commit(tmp_path: Path) -> None:
    a = _archive(tmp_path / "a.db")
    t0 = time.time()
    ev = _evaluation(0)
    ev.started = t0 - 3.0  # three seconds of work, committed now
    a.record(ev)
    ev = _evaluation(1)
    ev.started = None  # no start known: the commit less the worker's total
    a.record(ev)
    t1 = time.time()
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'a.db'}").trials
    assert trials[0].datetime_start == datetime.fromtimestamp(t0 - 3.0)
    assert t0 <= trials[0].datetime_complete.timestamp() <= t1 + 1e-3
    assert trials[0].duration.total_seconds() == pytest.approx(3.0, abs=t1 - t0 + 0.01)
    assert trials[1].duration.total_seconds() == pytest.approx(1.25, abs=1e-3)


def test_dashboard_sees_metric_names_durations_recipe_values_and_the_knee(
    unit_zoo: Path, tmp_path: Path
) -> None:
    exp = experiment(
        "unit-dashboard",
        optimizer={"name": "optuna-tpe", "batch": 3},
        budget=6,
        seed=2,
        reference_points=False,  # every evaluate call here is a trial
    )
    path = write_experiment(tmp_path, exp)
    s, budget = search.start(path, tmp_path / "run", zoo=unit_zoo)
    spans: list[tuple[datetime, datetime]] = []  # each evaluate call's start and end, seen here
    evaluate = s.worker.evaluate

    def timed(*args, **kwargs):
        t = datetime.now()
        try:
            return evaluate(*args, **kwargs)
        finally:
            spans.append((t, datetime.now()))

    s.worker.evaluate = timed
    s.run(budget)
    s.close()
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(tmp_path / "run"))
    assert study.metric_names == ["rev9", "shift3"]
    trials = study.trials
    assert len(trials) == len(spans) == 6
    # a trial spans its evaluation (stamped before the call, completed at its commit, which
    # comes before the next candidate's evaluation: one local worker), whatever the load
    slack = timedelta(milliseconds=1)  # optuna stores datetimes to the microsecond
    nexts = [b for b, _ in spans[1:]] + [datetime.max - slack]
    for t, (begin, end), nxt in zip(trials, spans, nexts, strict=True):
        assert t.duration.total_seconds() > 0
        assert t.datetime_start <= begin + slack and end <= t.datetime_complete + slack
        assert t.datetime_complete <= nxt + slack, (t.number, t.datetime_complete, nxt)
        assert t.datetime_complete >= t.datetime_start
        recipe = Recipe.from_dict(yaml.safe_load(t.system_attrs["evomerge:recipe"]))
        for name, src in recipe.sources.items():
            for param, spec in src.parameters.items():
                want = [round(v, 4) for v in numbers(spec)]  # type: ignore[arg-type]
                if isinstance(spec, PerLayer):
                    assert t.user_attrs[f"recipe.{name}.{param}.per_layer"] == want
                else:
                    assert [t.user_attrs[f"recipe.{name}.{param}"]] == want
    assert [t.datetime_start for t in trials] == sorted(t.datetime_start for t in trials)
    knee = open_archive(tmp_path / "run").knee()
    assert knee is not None and study.user_attrs["knee_trial"] == knee.number
    if importlib.util.find_spec("optuna_dashboard") is not None:  # an optional dev tool
        _check_dashboard_api(storage_url(tmp_path / "run"), trials)


def _check_dashboard_api(url: str, trials: list[optuna.trial.FrozenTrial]) -> None:
    """What optuna-dashboard's own JSON API serves for the run (its WSGI app, no server)."""
    import json
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    app = wsgi(url)

    def get(path: str) -> dict:
        env: dict = {}
        setup_testing_defaults(env)
        env["PATH_INFO"] = path
        status: list[str] = []
        body = b"".join(app(env, lambda s, h, e=None: status.append(s)))
        assert status[0].startswith("200"), (path, status, body[:200])
        return json.loads(body)

    (summary,) = get("/api/studies")["study_summaries"]
    study = get(f"/api/studies/{summary['study_id']}")
    assert study["objective_names"] == ["rev9", "shift3"]
    for got, t in zip(study["trials"], trials, strict=True):
        start = datetime.fromisoformat(got["datetime_start"])
        end = datetime.fromisoformat(got["datetime_complete"])
        assert end - start == t.duration and (end - start).total_seconds() > 0
        attrs = {a["key"]: a["value"] for a in got["user_attrs"]}
        assert any(k.startswith("recipe.") and k.endswith(".per_layer") for k in attrs)

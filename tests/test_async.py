"""Asynchronous dispatch (`workers.dispatch: async`): one candidate asked as soon as one finishes.

The optimizer side (ask_one/tell_one out of order, pending tickets in the state), generational
optimizers refused by key, the sequential order kept with one candidate in flight (resumed or
not, local or one Ray actor), and on two Ray actors: the budget exact, each recipe once, after
SIGTERM and after SIGKILL of the driver too, the candidates in flight at the kill not lost."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pickle
import signal
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from test_search import _trace, _write

from evomerge.experiment import ExperimentError
from evomerge.optimize import OPTIMIZERS, Gene, OptimizerError, make_optimizer
from evomerge.run import lifecycle as search
from evomerge.run.run_dir import STUDY_NAME, read_optimizer_state, storage_url

GENES = [Gene("a"), Gene("b"), Gene("layer", 3)]
ASYNC: dict[str, Any] = {"threads": 1, "dispatch": "async"}
RAY: dict[str, Any] = {**ASYNC, "backend": "ray", "count": 2, "resources": {"num_cpus": 1}}
TPE: dict[str, Any] = {"name": "optuna-tpe", "n_startup_trials": 4}


ASYNCHRONOUS = [
    pytest.param(n, marks=pytest.mark.skip(reason="no 'cmaes' package"))
    if n == "optuna-cmaes" and importlib.util.find_spec("cmaes") is None
    else n
    for n, cls in sorted(OPTIMIZERS.items())
    if cls.asynchronous
]


def test_which_optimizers_ask_one_at_a_time() -> None:
    assert [n for n, c in sorted(OPTIMIZERS.items()) if c.asynchronous] == [
        *(f"optuna-{s}" for s in ("botorch", "cmaes", "gp", "nsga2", "nsga3", "tpe")),
        "random",
    ]
    batch = make_optimizer("random", GENES, 1, seed=5, options={"batch": 3}).ask()
    one = make_optimizer("random", GENES, 1, seed=5)
    assert all(np.array_equal(a, one.ask_one()[1]) for a in batch)  # the batches' draws


@pytest.mark.parametrize("name", ASYNCHRONOUS)
def test_ask_one_tell_out_of_order_and_resume_with_tickets_pending(name: str) -> None:
    """Tickets told in any order; a state written with tickets pending restores them and goes
    on exactly (the same next genomes)."""
    opt = make_optimizer(name, GENES, 1, seed=5)
    asked = [opt.ask_one() for _ in range(3)]
    assert [t for t, _ in asked] == [0, 1, 2]
    opt.tell_one(2, 0.5)
    opt.tell_one(0, None)  # a failure
    state = opt.state()
    twin = make_optimizer(name, GENES, 1, seed=5)
    twin.restore(state)
    assert list(twin.tickets) == [1] and np.array_equal(twin.tickets[1], asked[1][1])
    with pytest.raises(OptimizerError, match="ask\\(\\) while 1 genome"):
        twin.ask()
    for o in (opt, twin):
        o.tell_one(1, 0.25)
    a, b = [[o.ask_one() for _ in range(2)] for o in (opt, twin)]
    assert [t for t, _ in a] == [t for t, _ in b] == [3, 4]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True))
    with pytest.raises(OptimizerError, match="ticket 1, which is not pending"):
        opt.tell_one(1, 0.0)


def test_generational_optimizers_are_refused_naming_the_key(unit_zoo: Path, tmp_path: Path) -> None:
    with pytest.raises(OptimizerError, match="cannot ask one candidate at a time"):
        make_optimizer("nsga2", GENES, 1).ask_one()
    for opt in ({"name": "nsga2", "pop_size": 4}, {"name": "cma"}):
        exp = _write(tmp_path, optimizer=opt, workers={**RAY, "count": 1})
        with pytest.raises(ExperimentError, match=r"workers\.dispatch: async needs an optimizer"):
            search.start(exp, tmp_path / "run", zoo=unit_zoo)
        assert not (tmp_path / "run").exists()  # refused before Ray or a run dir


def _run(exp: Path, run_dir: Path, zoo: Path, stop_at: int | None = None) -> search.Outcome:
    s, budget = search.start(exp, run_dir, zoo=zoo)

    def interrupt(ev: Any) -> None:
        if ev.number == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        return s.run(budget, on_evaluation=interrupt)
    finally:
        s.close()


def _resume(run_dir: Path) -> search.Outcome:
    s, budget = search.reopen(run_dir)
    try:
        return s.run(budget)
    finally:
        s.close()


def _exactly_once(run_dir: Path, budget: int = 12) -> list[optuna.trial.FrozenTrial]:
    """Every evaluation once: `budget` trials, no recipe twice, each COMPLETE or FAIL."""
    trials = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run_dir)).trials
    assert len(trials) == budget
    assert len({t.user_attrs["hash"] for t in trials}) == budget
    ok = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    assert all(t.state in ok for t in trials)
    return trials


@pytest.mark.slow
def test_one_in_flight_keeps_the_sequential_order(
    cluster: Any, unit_zoo: Path, tmp_path: Path
) -> None:
    """`count: 1`: local async, the same stopped by SIGTERM and resumed, and one Ray actor give
    the same trials in the same order (TPE asks each candidate after the last one is told)."""
    ref = _run(_write(tmp_path, optimizer=TPE, workers=ASYNC), tmp_path / "ref", unit_zoo)
    assert ref.status == "finished"
    _exactly_once(tmp_path / "ref")
    out = _run(_write(tmp_path, optimizer=TPE, workers=ASYNC), tmp_path / "b", unit_zoo, 5)
    assert out.status == "interrupted" and out.evaluations == 6
    assert _resume(tmp_path / "b").status == "finished"
    assert _trace(tmp_path / "b") == _trace(tmp_path / "ref")
    ray_exp = _write(tmp_path, optimizer=TPE, workers={**RAY, "count": 1})
    assert _run(ray_exp, tmp_path / "ray", unit_zoo).status == "finished"
    assert _trace(tmp_path / "ray") == _trace(tmp_path / "ref")


@pytest.mark.parametrize(
    ("optimizer", "sigterm_at"), [(TPE, None), ({"name": "random"}, None), (TPE, 4)]
)
def test_two_actors_spend_exactly_the_budget(
    cluster: Any, unit_zoo: Path, tmp_path: Path, optimizer: dict[str, Any], sigterm_at: int | None
) -> None:
    """Two Ray actors kept busy: exactly `budget` evaluations, none twice, also when SIGTERM
    stops it (the candidates in flight are awaited, committed and told) and it is resumed;
    `status` reads the pool with its dispatch mode."""
    run_dir = tmp_path / "run"
    out = _run(_write(tmp_path, optimizer=optimizer, workers=RAY), run_dir, unit_zoo, sigterm_at)
    if sigterm_at is not None:
        assert out.status == "interrupted" and sigterm_at < out.evaluations < 12
        w = search.summary(run_dir)["workers"]
        # the pool's work: the trials and the 5 reference points (base, experts, uniform)
        assert w["in_flight"] == 0 and w["evaluations"] == out.evaluations + 5
        state = pickle.loads(read_optimizer_state(run_dir) or b"")
        assert state["tickets"] == []  # every candidate sent was committed and told
        out = _resume(run_dir)
    assert out.status == "finished" and out.evaluations == 12
    trials = _exactly_once(run_dir)
    assert {t.user_attrs["worker"] for t in trials} == {"ray:0", "ray:1"}
    w = search.summary(run_dir)["workers"]
    assert w["dispatch"] == "async" and w["in_flight"] == 0
    assert all(0 < a["utilization"] <= 1 for a in w["actors"])


@pytest.mark.slow
def test_driver_sigkilled_resumes_without_loss_or_repeat(
    cluster: Any, unit_zoo: Path, tmp_path: Path
) -> None:
    """`evomerge run` (its own local cluster) SIGKILLed with one candidate hung on an actor and
    others committed: the checkpoint holds the candidates in flight as pending tickets; resume
    scores those not committed (the same genomes) and ends with exactly `budget` recipes."""
    from test_ray import _hang_one, _kill_session, _start_driver, _wait_for

    run_dir = tmp_path / "run"
    proc = _start_driver(_write(tmp_path, optimizer=TPE, workers=RAY), unit_zoo, tmp_path)
    try:
        # optimizer.pkl: written after the first ask, once the archive's tables exist
        assert _wait_for(lambda: (run_dir / "optimizer.pkl").exists() or proc.poll() is not None)
        assert _wait_for(lambda: _committed(run_dir) >= 3 or proc.poll() is not None)
        _hang_one(proc, tmp_path)  # the next candidate sent hangs; the other actor goes on
    finally:
        _kill_session(proc)
    before = {t.user_attrs["hash"] for t in _exactly_once(run_dir, _committed(run_dir))}
    assert 3 <= len(before) < 12
    s, budget = search.reopen(run_dir)
    try:
        pending = [s.space.decode(g).content_hash() for g in s.optimizer.tickets.values()]
        lost = set(pending) - before
        assert lost  # the hung candidate, at least, was in flight and never committed
        assert s.run(budget).status == "finished"
    finally:
        s.close()
    after = {t.user_attrs["hash"] for t in _exactly_once(run_dir)}
    assert before | lost <= after  # the candidates in flight at the kill were scored on resume


def _committed(run_dir: Path) -> int:
    """Trials in the archive, read without touching its schema (optuna.load_study would create
    the tables, racing the driver that is creating them)."""
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{run_dir / 'archive.db'}?mode=ro", uri=True)
        ) as db:
            return int(db.execute("SELECT count(*) FROM trials").fetchone()[0])
    except sqlite3.Error:
        return 0

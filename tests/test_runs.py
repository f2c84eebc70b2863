"""Runs under trouble (RELIABILITY.md): one driver per run directory, a resume with nothing to
do, a space smaller than its budget, the failure policy (the candidate's failure → a failed
trial; the system's → the run stops cleanly, resumable), injected faults, SIGKILL at many
points of `evomerge run` then resume, determinism over every optimizer, and the wiring of hub
revisions, estimator checks and hypervolume references."""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_hub import _cache_repo
from test_search import _trace
from test_search import _write as _search_experiment
from typer.testing import CliRunner
from unit_experiment import tiny_layers_space

from evomerge.cli import app
from evomerge.evaluate.estimators import Estimate, EstimatorError
from evomerge.killpoints import ENV as KILL_AT
from evomerge.optimize import OPTIMIZERS
from evomerge.run import lifecycle as search
from evomerge.run.archive import Evaluation
from evomerge.run.run_dir import RunError, open_archive, read_info

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"optimizer": {"name": "random", "batch": 2}, "budget": 2}


def _write(tmp_path: Path, name: str = "exp.yaml", **changes: Any) -> Path:
    """test_search's experiment without reference points: these tests count engine calls and
    kill points from the first trial (test_report covers the reference points' resume)."""
    return _search_experiment(tmp_path, name, **{"reference_points": False, **changes})


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from evomerge.cli import app; app()", *args]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture(scope="module")
def uninterrupted(unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_search's experiment, run without interruption (12 evaluations, NSGA-II by 4)."""
    d = tmp_path_factory.mktemp("ref")
    s, budget = search.start(_write(d), d / "run", zoo=unit_zoo)
    assert s.run(budget).status == "finished"
    s.close()
    return d / "run"


def _small_run(unit_zoo: Path, tmp_path: Path) -> Path:
    s, budget = search.start(_write(tmp_path, **SMALL), tmp_path / "run", zoo=unit_zoo)
    s.run(budget)
    s.close()
    return tmp_path / "run"


# -- wiring ------------------------------------------------------------------------------------


def test_hub_sources_record_their_commits_and_resume_on_them(
    unit_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hf"
    sha = {
        "base": _cache_repo(cache, "org/base", unit_zoo / "base"),
        "rev9": _cache_repo(cache, "org/rev9", unit_zoo / "experts" / "rev9"),
    }
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exp = _write(
        tmp_path,
        sources={"base": "org/base", "rev9": "org/rev9"},
        space="task_arithmetic-per-layer",
        objectives=[{"task": "rev9", "estimator": "subsample:4"}],
        **SMALL,
    )
    s, budget = search.start(exp, tmp_path / "run", zoo=unit_zoo)
    assert read_info(tmp_path / "run")["revisions"] == sha
    s.run(budget)
    s.close()
    # the repository moves on (main → another commit): a resume still reads the recorded one
    _cache_repo(cache, "org/rev9", unit_zoo / "experts" / "shift3", ref="v2")
    refs = cache / "models--org--rev9" / "refs"
    (refs / "main").write_text((refs / "v2").read_text())
    s2, _ = search.reopen(tmp_path / "run", budget=4)
    assert s2.worker.sources["rev9"].path.name == sha["rev9"]
    s2.close()


def test_irt_on_a_perplexity_task_is_refused_when_the_experiment_loads(
    unit_zoo: Path, tmp_path: Path
) -> None:
    task = yaml.safe_load((ROOT / "fitness" / "rev9.yaml").read_text())
    (tmp_path / "ppl.yaml").write_text(yaml.safe_dump({**task, "metric": "perplexity"}))
    exp = _write(
        tmp_path,
        objectives=[{"task": str(tmp_path / "ppl.yaml"), "estimator": "irt:8", "name": "ppl"}],
    )
    refused = r"objective 'ppl': estimator '(gp)?irt:8'.*'perplexity'"
    with pytest.raises(EstimatorError, match=refused):
        search.start(exp, tmp_path / "run", zoo=unit_zoo)
    assert not (tmp_path / "run").exists()


def test_the_hypervolume_reference_follows_the_objective_direction(
    unit_zoo: Path, tmp_path: Path
) -> None:
    task = yaml.safe_load((ROOT / "fitness" / "rev9.yaml").read_text())
    (tmp_path / "err.yaml").write_text(
        yaml.safe_dump({**task, "name": "err", "higher_is_better": False})
    )
    exp = _write(tmp_path, objectives=[{"task": str(tmp_path / "err.yaml")}, {"task": "rev9"}])
    s, _ = search.start(exp, tmp_path / "run", zoo=unit_zoo)
    s.close()
    assert s.directions == ["minimize", "maximize"]
    assert s.reference == [1.0, 0.0]  # token accuracy minimized: its worst end is 1


# -- one driver per run, nothing to do ---------------------------------------------------------


def test_a_second_driver_is_refused_naming_the_holder_until_it_dies(
    unit_zoo: Path, tmp_path: Path
) -> None:
    run_dir = _small_run(unit_zoo, tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from evomerge.run.run_dir import lock; lock(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(300)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        env=_env(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        who = rf"being run by process {holder.pid} on {socket.gethostname()} \(since"
        with pytest.raises(RunError, match=who):
            search.reopen(run_dir, budget=4)
        exp = str(tmp_path / "exp.yaml")
        for args in (
            ["resume", str(run_dir), "--budget", "4"],
            ["run", exp, "--run-dir", str(run_dir), "--zoo", str(unit_zoo)],
        ):
            res = CliRunner().invoke(app, args)
            assert res.exit_code == 2 and f"process {holder.pid}" in res.output, res.output
    finally:
        holder.send_signal(signal.SIGKILL)  # the OS releases its lock
        holder.wait()
    s, total = search.reopen(run_dir, budget=4)
    assert total == 4
    s.close()


def test_resume_of_a_finished_run_says_nothing_to_do_and_exits_0(
    unit_zoo: Path, tmp_path: Path
) -> None:
    run_dir = _small_run(unit_zoo, tmp_path)
    res = CliRunner().invoke(app, ["resume", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert "nothing to do" in res.output and "spent its budget (2 of 2" in res.output
    with pytest.raises(search.NothingToDo):
        search.reopen(run_dir)
    search.reopen(run_dir, budget=3)[0].close()  # a larger budget goes on


# -- a space smaller than the budget -----------------------------------------------------------


def _tiny_space(tmp_path: Path) -> Path:
    return _write(tmp_path, **tiny_layers_space(), budget=40)  # 2⁴ genomes


def _guarded(s: search.Search, budget: int, **kw: Any) -> search.Outcome:
    def guard(p: search.Progress) -> None:
        if p.cached > 3000:
            raise RuntimeError("the search does not end")

    return s.run(budget, on_progress=guard, **kw)


def test_a_space_smaller_than_its_budget_ends_exhausted_and_resumes_exactly(
    unit_zoo: Path, tmp_path: Path
) -> None:
    exp = _tiny_space(tmp_path)
    s, budget = search.start(exp, tmp_path / "a", zoo=unit_zoo)
    out = _guarded(s, budget)
    s.close()
    assert out.status == "exhausted" and out.evaluations <= 16 < budget
    assert out.reason and "proposals were all recipes already in the archive" in out.reason
    hashes = [h for h, _ in _trace(tmp_path / "a")]
    assert len(set(hashes)) == len(hashes)
    res = CliRunner().invoke(app, ["resume", str(tmp_path / "a"), "--budget", "100"])
    assert res.exit_code == 0 and "nothing to do" in res.output and "exhausted" in res.output
    # interrupted once the space is covered (while it counts proposals), then resumed
    s, budget = search.start(exp, tmp_path / "b", zoo=unit_zoo)
    seen = [0]

    def interrupt(p: search.Progress) -> None:
        seen[0] += 1
        if seen[0] == 60:
            os.kill(os.getpid(), signal.SIGINT)

    assert s.run(budget, on_progress=interrupt).status == "interrupted"
    s.close()
    s, budget = search.reopen(tmp_path / "b")
    assert _guarded(s, budget).status == "exhausted"
    s.close()
    assert _trace(tmp_path / "b") == _trace(tmp_path / "a")
    assert read_info(tmp_path / "b")["status"] == "exhausted"


# -- the failure policy and injected faults ----------------------------------------------------


def _fail_on(s: search.Search, calls: set[int], exc: BaseException | None) -> list[int]:
    """The engine's load_weights raises ``exc`` on these calls (1-based), or for good from the
    first of them when ``exc`` is raised always (``calls`` = {n, …, 10**9})."""
    engine, real, n = s.worker.engine, s.worker.engine.load_weights, [0]

    def load_weights(*a: Any, **k: Any) -> Any:
        n[0] += 1
        if n[0] in calls and exc is not None:
            raise exc
        return real(*a, **k)

    engine.load_weights = load_weights
    return n


def test_a_candidate_error_is_a_failed_trial_and_status_groups_failures(
    unit_zoo: Path, tmp_path: Path
) -> None:
    s, budget = search.start(_write(tmp_path), tmp_path / "run", zoo=unit_zoo)
    _fail_on(s, {3, 4}, RuntimeError("engine exploded on this candidate"))
    est = s.worker.objectives[0].estimator
    real, n = est.estimate, [0]

    def estimate(*a: Any, **k: Any) -> Estimate:
        n[0] += 1
        e = real(*a, **k)
        bad = {2: float("nan"), 6: float("inf")}.get(n[0])
        return e if bad is None else dataclasses.replace(e, value=bad)

    est.estimate = estimate
    out = s.run(budget)
    s.close()
    assert out.status == "finished" and out.evaluations == 12
    failed = [e.error or "" for e in s.archive.evaluations if not e.ok]
    assert len(failed) == 4
    assert sum(e.startswith("RuntimeError: engine exploded") for e in failed) == 2
    assert sorted(e for e in failed if e.startswith("NonFiniteScore")) == [
        "NonFiniteScore: rev9 = inf",
        "NonFiniteScore: rev9 = nan",
    ]
    info = search.summary(tmp_path / "run")
    assert info["failures"] == {
        "RuntimeError": (2, "engine exploded on this candidate"),
        "NonFiniteScore": (2, "rev9 = nan"),
    }
    res = CliRunner().invoke(app, ["status", str(tmp_path / "run")])
    assert "NonFiniteScore" in res.output and "RuntimeError" in res.output, res.output


@pytest.mark.parametrize(
    ("exc", "calls", "reason"),
    [
        (TypeError("'NoneType' object is not subscriptable"), {3}, r"^internal error \(TypeError"),
        (AssertionError("invariant"), {3}, r"^internal error \(AssertionError: invariant"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), {3}, None),
        (RuntimeError("[enforce fail] DefaultCPUAllocator: out of memory"), {3}, None),
        (torch.OutOfMemoryError("CUDA out of memory"), set(range(3, 99)), r"^out of memory again"),
        (OSError(errno.EIO, "Input/output error"), set(range(3, 99)), r"^I/O error twice"),
    ],
    ids=["bug", "assertion", "oom-once", "cpu-oom-once", "oom-twice", "io-twice"],
)
def test_system_failures_stop_cleanly_or_retry_once(
    unit_zoo: Path,
    tmp_path: Path,
    uninterrupted: Path,
    exc: BaseException,
    calls: set[int],
    reason: str | None,
) -> None:
    """A bug stops the run at once; out of memory and I/O errors are retried once. A stopped
    run saved everything before the candidate (not recorded: the system failed, not it), says
    why, and resumes to the uninterrupted run's archive."""
    run_dir = tmp_path / "run"
    s, budget = search.start(_write(tmp_path), run_dir, zoo=unit_zoo)
    _fail_on(s, calls, exc)
    out = s.run(budget)
    s.close()
    if reason is None:  # retried once, then fine: nothing lost, nothing failed
        assert out.status == "finished"
    else:
        assert out.status == "stopped" and out.evaluations == 2
        assert out.reason is not None and re.search(reason, out.reason)
        info = read_info(run_dir)
        assert info["status"] == "stopped" and info["reason"] == out.reason
        assert type(exc).__name__ in info["traceback"]
        res = CliRunner().invoke(app, ["status", str(run_dir)])
        assert "stopped: " in res.output, res.output
        s, budget = search.reopen(run_dir)  # the cause fixed: resume
        s.run(budget)
        s.close()
    assert _trace(run_dir) == _trace(uninterrupted)


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_a_source_file_lost_mid_run_stops_it_and_resume_goes_on(
    unit_zoo: Path,
    tmp_path: Path,
    uninterrupted: Path,
    how: str,
) -> None:
    zoo = tmp_path / "zoo"
    shutil.copytree(unit_zoo, zoo)
    weights = zoo / "experts" / "rev9" / "model.safetensors"
    backup = tmp_path / "backup.safetensors"
    shutil.copy2(weights, backup)
    s, budget = search.start(_write(tmp_path), tmp_path / "run", zoo=zoo)

    def damage(ev: Evaluation) -> None:
        if ev.number == 1:
            if how == "deleted":
                weights.unlink()
            else:
                os.truncate(weights, weights.stat().st_size // 2)

    out = s.run(budget, on_evaluation=damage)
    s.close()
    assert out.status == "stopped" and out.evaluations == 2
    assert out.reason and out.reason.startswith("a source cannot be read (CheckpointError")
    assert f"source 'rev9': {weights}" in out.reason
    assert ("is gone" if how == "deleted" else "was truncated") in out.reason
    shutil.copy2(backup, weights)
    s, budget = search.reopen(tmp_path / "run")
    assert s.run(budget).status == "finished"
    s.close()
    # the same scores as the run on the original zoo (recipes name other paths)
    assert [v for _, v in _trace(tmp_path / "run")] == [v for _, v in _trace(uninterrupted)]


@pytest.mark.parametrize("fmt", ["recipe", "mergekit", "hf"])
def test_a_full_disk_while_exporting_leaves_nothing(
    uninterrupted: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
) -> None:
    def full(*_: Any, **__: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if fmt == "hf":
        monkeypatch.setattr("evomerge.checkpoint.save_file", full)
    else:
        monkeypatch.setattr("evomerge.fileio.os.fsync", full)
    out = tmp_path / "out" / ("model" if fmt == "hf" else "r.yaml")
    res = CliRunner().invoke(
        app, ["export", str(uninterrupted), "--trial", "0", "--out", str(out), "--format", fmt]
    )
    assert res.exit_code == 2 and "No space left on device" in res.output, res.output
    assert not out.exists() and list(out.parent.iterdir()) == []  # no temp file either


# -- SIGKILL anywhere, then resume -------------------------------------------------------------

SHORT_SWEEP = ["merge:40", "score:5", "commit:4", "write:optimizer.pkl:1"]
# every commit, the merge and scoring of several candidates, each checkpoint and run.json write
LONG_SWEEP = [
    *(f"commit:{n}" for n in range(1, 12)),
    *(f"merge:{n}" for n in (1, 25, 80, 160, 300)),
    *(f"score:{n}" for n in (1, 2, 9, 16, 23)),
    *(f"tell:{n}" for n in (1, 2)),
    *(f"write:optimizer.pkl:{n}" for n in (1, 2)),
    *(f"write:run.json:{n}" for n in (1, 2, 3)),
]


def _kill_then_resume(unit_zoo: Path, tmp_path: Path, uninterrupted: Path, point: str) -> None:
    run_dir = tmp_path / "run"
    res = subprocess.run(
        _cli("run", str(_write(tmp_path)), "--run-dir", str(run_dir), "--zoo", str(unit_zoo)),
        capture_output=True,
        env=_env(**{KILL_AT: point}),
        timeout=600,
    )
    assert res.returncode == -signal.SIGKILL, res.stdout.decode()[-2000:] + res.stderr.decode()
    if not (run_dir / "run.json").exists():  # killed while the run was being created
        s, budget = search.start(_write(tmp_path), run_dir, zoo=unit_zoo)  # takes it over
    else:
        done = _trace(run_dir)  # the archive opens: every committed trial whole
        assert len({h for h, _ in done}) == len(done)
        assert done == _trace(uninterrupted)[: len(done)]
        if len(done) == 12:  # killed after the last commit: nothing to do, status mended
            with pytest.raises(search.NothingToDo):
                search.reopen(run_dir)
            assert read_info(run_dir)["status"] == "finished"
        s, budget = search.reopen(run_dir, budget=12 if len(done) < 12 else 13)
    s.run(min(budget, 12))
    s.close()
    assert _trace(run_dir) == _trace(uninterrupted)  # nothing lost, nothing evaluated twice
    ref_front = [e.recipe_hash for e in open_archive(uninterrupted).front()]
    assert [e.recipe_hash for e in s.archive.front()] == ref_front
    assert not list(run_dir.glob(".*.tmp"))  # the atomic write the kill cut short: swept


@pytest.mark.parametrize("point", SHORT_SWEEP)
def test_sigkill_then_resume_equals_uninterrupted(
    unit_zoo: Path,
    tmp_path: Path,
    uninterrupted: Path,
    point: str,
) -> None:
    _kill_then_resume(unit_zoo, tmp_path, uninterrupted, point)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EVOMERGE_LONG_SWEEP"), reason="EVOMERGE_LONG_SWEEP=1")
@pytest.mark.parametrize("point", LONG_SWEEP)
def test_long_sigkill_sweep(
    unit_zoo: Path, tmp_path: Path, uninterrupted: Path, point: str
) -> None:
    _kill_then_resume(unit_zoo, tmp_path, uninterrupted, point)


@pytest.mark.parametrize(("fmt", "point"), [("recipe", "write:r.yaml:1"), ("hf", "export:1")])
def test_sigkill_while_exporting_leaves_nothing_under_the_name(
    uninterrupted: Path,
    tmp_path: Path,
    fmt: str,
    point: str,
) -> None:
    out = tmp_path / ("model" if fmt == "hf" else "r.yaml")
    args = ["export", str(uninterrupted), "--trial", "0", "--out", str(out), "--format", fmt]
    res = subprocess.run(
        _cli(*args), capture_output=True, env=_env(**{KILL_AT: point}), timeout=300
    )
    assert res.returncode == -signal.SIGKILL, res.stdout.decode() + res.stderr.decode()
    assert not out.exists()


# -- determinism -------------------------------------------------------------------------------

TINY = {
    "random": {"batch": 2},
    "cma": {"popsize": 4},
    "nsga2": {"pop_size": 4},
    "nsga3": {"pop_size": 4},
    "optuna-tpe": {"batch": 2, "n_startup_trials": 2},
    "optuna-cmaes": {"batch": 2},
    "optuna-nsga2": {"batch": 2, "population_size": 4},
    "optuna-nsga3": {"batch": 2, "population_size": 4},
    "optuna-gp": {"batch": 2, "n_startup_trials": 2},
    "optuna-botorch": {"batch": 2, "n_startup_trials": 2},
}


@pytest.fixture(scope="module")
def shared_worker(unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from evomerge.experiment import Experiment
    from evomerge.workers.local import LocalWorker

    exp = Experiment.load(_write(tmp_path_factory.mktemp("w")))
    return LocalWorker(exp, exp.resolved_sources(unit_zoo), zoo=unit_zoo)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_same_experiment_and_seed_give_the_same_run(
    unit_zoo: Path, tmp_path: Path, shared_worker: Any, name: str
) -> None:
    """Every optimizer, on the local backend: the same recipes in the same order, the same
    scores to the bit, the same front (CPU kernels; see RELIABILITY.md for GPUs)."""
    assert name in TINY, f"give {name} tiny options in TINY"
    n = (
        4 if name in ("optuna-gp", "optuna-botorch") else 6
    )  # the GP's fit is the slow part: two batches
    exp = _write(tmp_path, optimizer={"name": name, **TINY[name]}, budget=n)
    runs = []
    for d in ("a", "b"):
        s, budget = search.start(exp, tmp_path / d, zoo=unit_zoo, worker=shared_worker)
        out = s.run(budget)
        s.close()
        runs.append((_trace(tmp_path / d), [e.recipe_hash for e in out.front]))
    assert len(runs[0][0]) == n and runs[0] == runs[1]
    assert all(v is None or all(isinstance(x, float) for x in v) for _, v in runs[0][0])

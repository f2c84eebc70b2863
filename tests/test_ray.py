"""The search on Ray actors (a local cluster, the unit zoo): the same archive as the in-process
loop, actor deaths retried or failed with the reason, hung candidates timed out, a SIGKILLed
driver resumed to the same archive, and a cluster reached by address."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray")

import ray
from test_search import _trace, _write
from unit_experiment import failing_della

from evomerge.run import lifecycle as search
from evomerge.workers.ray_pool import HANG_HOOK

RAY = {"backend": "ray", "count": 2, "threads": 1, "resources": {"num_cpus": 1}}
ROOT = Path(__file__).resolve().parent.parent


def _ray_exp(tmp_path: Path, **workers: Any) -> Path:
    return _write(tmp_path, "ray.yaml", workers={**RAY, **workers})


@pytest.fixture(scope="module")
def local_reference(unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("local")
    s, budget = search.start(_write(d), d / "run", zoo=unit_zoo)
    assert s.run(budget).status == "finished"
    return d / "run"


def _same_archive(a: Path, b: Path) -> None:
    ta, tb = _trace(a), _trace(b)
    assert len({h for h, _ in ta}) == len(ta) == 12  # nothing lost, nothing evaluated twice
    assert sorted(ta) == sorted(tb)


@pytest.mark.parametrize("sigterm_at", [None, 5])
def test_ray_gives_the_local_archive(
    cluster: Any, unit_zoo: Path, tmp_path: Path, local_reference: Path, sigterm_at: int | None
) -> None:
    """Generational mode: the same recipes and scores as the local backend, whatever order the
    results arrive in, also when SIGTERM stops it mid-batch and it is resumed; `status` reads
    the pool; the actors run this checkout's code."""
    run_dir = tmp_path / "run"
    s, budget = search.start(_ray_exp(tmp_path), run_dir, zoo=unit_zoo)

    def interrupt(ev: Any) -> None:
        if ev.number == sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        out = s.run(budget, on_evaluation=interrupt)
    finally:
        s.close()
    first = 0
    if sigterm_at is not None:
        first = out.evaluations
        # sending stopped; the candidates in flight (one per actor) were awaited and committed
        assert out.status == "interrupted" and sigterm_at < out.evaluations <= sigterm_at + 3
        assert search.summary(run_dir)["workers"]["in_flight"] == 0
        s, budget = search.reopen(run_dir)
        try:
            out = s.run(budget)
        finally:
            s.close()
    assert out.status == "finished"
    _same_archive(run_dir, local_reference)
    info = search.summary(run_dir)
    w = info["workers"]
    assert w["in_flight"] == 0 and w["retries"] == 0
    # this pool's (the resumed run's) evaluations, with the 5 reference points (base, 3
    # experts, uniform merge) scored by the first pool only: a resume does not score them again
    assert w["evaluations"] == 12 - first + (5 if first == 0 else 0)
    assert [a["name"] for a in w["actors"]] == ["ray:0", "ray:1"]
    assert all(0 < a["utilization"] <= 1 for a in w["actors"])
    assert {e.worker for e in s.archive.evaluations} <= {"ray:0", "ray:1"}
    import evomerge

    assert {a["evomerge"] for a in w["actors"]} == {evomerge.__file__}
    assert all("dispatch" in e.timings for e in s.archive.evaluations)


def _hang_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "hang").touch()
    monkeypatch.setenv(HANG_HOOK, str(hook))  # forwarded to the actors
    return hook


@pytest.mark.parametrize("retries", [2, 0])
def test_actor_killed_mid_candidate(
    cluster: Any, unit_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retries: int
) -> None:
    """`ray.kill` of the actor scoring a candidate: Ray restarts it and the candidate is sent
    again; with `retries: 0` it is a failed trial that says why. The run completes either way."""
    hook = _hang_once(tmp_path, monkeypatch)
    exp = _write(
        tmp_path,
        "ray.yaml",
        optimizer={"name": "random", "batch": 4},
        budget=4,
        workers={**RAY, "retries": retries},
        reference_points=False,  # the hook hangs the pool's first candidate: a trial's
    )
    s, budget = search.start(exp, tmp_path / "run", zoo=unit_zoo)
    killed: list[int] = []

    def killer() -> None:  # the candidate hangs until its actor is killed
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for f in hook.glob("hung-*"):
                pid = int(f.name.split("-")[1])
                i = [a["pid"] for a in s.worker.info].index(pid)
                ray.kill(s.worker.actors[i], no_restart=False)
                killed.append(i)
            time.sleep(0.1)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        out = s.run(budget)
    finally:
        s.close()
        t.join()
    assert killed and out.status == "finished" and out.evaluations == 4
    evs = s.archive.evaluations
    failed = [e for e in evs if not e.ok]
    stats = search.summary(tmp_path / "run")["workers"]
    assert stats["deaths"] == 1
    if retries:
        assert not failed and stats["retries"] == 1
    else:
        assert len(failed) == 1 and stats["retries"] == 0
        assert "ActorDied: the actor scoring it died 1 time(s) (retries: 0)" in failed[0].error


def test_hung_candidate_is_timed_out(
    cluster: Any, unit_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hang_once(tmp_path, monkeypatch)
    exp = _write(
        tmp_path,
        "ray.yaml",
        optimizer={"name": "random", "batch": 4},
        budget=6,
        workers={**RAY, "timeout_s": 8},
        reference_points=False,  # the hook hangs the pool's first candidate: a trial's
    )
    s, budget = search.start(exp, tmp_path / "run", zoo=unit_zoo)
    try:
        out = s.run(budget)
    finally:
        s.close()
    assert out.status == "finished" and out.evaluations == 6
    failed = [e for e in s.archive.evaluations if not e.ok]
    assert len(failed) == 1 and failed[0].error.startswith("Timeout: still running after 8s")
    stats = search.summary(tmp_path / "run")["workers"]
    assert stats["timeouts"] == 1 and all(a["alive"] is False for a in stats["actors"])  # closed


def test_failures_in_a_row_stop_the_run(unit_zoo: Path, tmp_path: Path) -> None:
    """A run whose candidates keep failing stops with the reason (local backend: the rule is
    the loop's); resume goes on."""
    exp = _write(tmp_path, **failing_della(), workers={"threads": 1, "max_failures": 1})
    s, budget = search.start(exp, tmp_path / "run", zoo=unit_zoo)
    out = s.run(budget)
    assert out.status == "failing" and out.evaluations < 8
    assert [e.ok for e in s.archive.evaluations][-1] is False
    assert out.reason and out.reason.startswith("1 failed candidate(s) in a row")
    assert "della needs density" in out.reason
    assert search.summary(tmp_path / "run")["reason"] == out.reason


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _kill_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL every process of the session ``proc`` leads (it and whatever Ray started)."""
    sid = proc.pid
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # state ppid pgrp session
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signal.SIGKILL)
    proc.wait(timeout=30)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from evomerge.cli import app; app()", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _start_driver(exp: Path, zoo: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    """`evomerge run` of ``exp`` into tmp_path/run in a session of its own (``_kill_session``
    takes it and its cluster whole), its actors hanging on tmp_path/hook, its log driver.log."""
    (tmp_path / "hook").mkdir()
    log = (tmp_path / "driver.log").open("wb")
    return subprocess.Popen(
        _cli("run", str(exp), "--run-dir", str(tmp_path / "run"), "--zoo", str(zoo)),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**_env(), HANG_HOOK: str(tmp_path / "hook")},
        start_new_session=True,
    )


def _hang_one(proc: subprocess.Popen[bytes], tmp_path: Path) -> None:
    """Hang the next candidate sent (the other actor goes on) and check the driver outlives
    it: what a kill then finds is a run held with that candidate in flight."""
    hook = tmp_path / "hook"
    (hook / "hang").touch()
    assert _wait_for(lambda: any(hook.glob("hung-*")) or proc.poll() is not None)
    time.sleep(2)
    assert proc.poll() is None, (tmp_path / "driver.log").read_text()


@pytest.mark.slow
def test_driver_sigkilled_mid_batch_resumes_to_the_same_archive(
    cluster: Any, unit_zoo: Path, tmp_path: Path, local_reference: Path
) -> None:
    """`evomerge run` on its own local cluster, SIGKILLed (driver and cluster) while a batch
    after the first is in flight; `resume` ends with the archive of an uninterrupted run."""
    run_dir = tmp_path / "run"
    proc = _start_driver(_ray_exp(tmp_path), unit_zoo, tmp_path)
    try:
        # once the first batch is told, a candidate of a later batch hangs: the run is held
        # mid-batch, with the other actor's results committed around it
        assert _wait_for(lambda: (run_dir / "optimizer.pkl").exists() or proc.poll() is not None)
        _hang_one(proc, tmp_path)
    finally:
        _kill_session(proc)
    done = len(_trace(run_dir))
    assert 4 <= done < 12
    assert search.summary(run_dir)["stale"]
    s, budget = search.reopen(run_dir)
    try:
        assert s.run(budget).status == "finished"
    finally:
        s.close()
    _same_archive(run_dir, local_reference)


def _wait_for(condition: Any, timeout: float = 240) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_run_on_a_cluster_by_address(unit_zoo: Path, tmp_path: Path) -> None:
    """A head started with `ray start --head --port P`; the experiment names it in `address`."""
    port = _free_port()
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        start_new_session=True,
    )
    try:
        exp = _write(
            tmp_path,
            optimizer={"name": "random", "batch": 4},
            budget=4,
            workers={**RAY, "address": f"127.0.0.1:{port}"},
        )
        res = subprocess.run(
            _cli("run", str(exp), "--run-dir", str(tmp_path / "run"), "--zoo", str(unit_zoo)),
            capture_output=True,
            env=_env(),
            timeout=300,
        )
        assert res.returncode == 0, res.stdout.decode()[-3000:] + res.stderr.decode()[-3000:]
        status = subprocess.run(
            _cli("status", str(tmp_path / "run")), capture_output=True, env=_env(), timeout=120
        ).stdout.decode()
    finally:
        _kill_session(head)
    info = search.summary(tmp_path / "run")
    assert info["status"] == "finished" and info["trials"] == 4
    assert info["workers"]["address"] == f"127.0.0.1:{port}"
    assert info["workers"]["evaluations"] == 4 + 5  # and the 5 reference points
    assert "ray actors alive" in status and "evaluations/hour" in status


@pytest.mark.parametrize(("dispatch", "fidelity"), [("batch", "halving"), ("async", "promotion")])
def test_ray_runs_the_local_combinations_to_the_same_archive(
    cluster: Any, unit_zoo: Path, tmp_path: Path, dispatch: str, fidelity: str
) -> None:
    """Ray's dispatch under a coarse-to-fine schedule, with successive halving (each rung sent
    to the actors, the batch committed once halved) or asynchronously with one candidate in
    flight: the very archive of the local backend, trial for trial."""
    from test_combinations import _experiment

    runs = {}
    for backend in ("local", "ray"):
        data = _experiment(True, dispatch, fidelity)
        if backend == "ray":
            data["workers"] = {**RAY, "dispatch": dispatch, "count": 1}
        path = tmp_path / f"{backend}.yaml"
        path.write_text(yaml.safe_dump(data))
        s, budget = search.start(path, tmp_path / backend, zoo=unit_zoo)
        try:
            assert s.run(budget).status == "finished"
        finally:
            s.close()
        runs[backend] = _trace(tmp_path / backend)
    assert len(runs["local"]) == 8 and runs["ray"] == runs["local"]

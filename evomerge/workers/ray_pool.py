"""Ray actors as workers: the same candidates as the in-process worker, on many processes, GPUs
and machines.

Each actor holds a :class:`~evomerge.workers.local.LocalWorker` — the sources open (memory-mapped
from the same path on every node, or a shared file system), one resident engine built the way
the local worker builds it — so a candidate travels as its recipe (a few KB) and is merged on the
actor's device and swapped in. Nothing is written to disk per candidate.

The driver keeps the archive and the optimizer; :meth:`RayPool.run` hands out the candidates of a
batch one per idle actor (or, with ``workers.dispatch: async``, asks the loop for the next one
whenever an actor is free) and yields each result as it arrives (``ray.wait``), so the loop
commits it at once. Faults: an actor that dies (killed, OOM) is restarted by Ray and its
candidate is sent again up to ``retries`` times, then failed with the reason; a candidate
running past ``timeout_s`` has its actor killed (and restarted) and is failed. Neither stops the
run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from evomerge.checkpoint import ModelSource
from evomerge.errors import EvomergeError
from evomerge.experiment import Experiment
from evomerge.fileio import atomic_write_json
from evomerge.recipe import Recipe
from evomerge.workers.base import Evaluation, Job, WorkerBase
from evomerge.workers.faults import WorkerFault
from evomerge.workers.halving import Rung
from evomerge.workers.local import load_objectives

# a test hook: the first candidate that finds DIR/hang hangs (until its actor is killed)
HANG_HOOK = "EVOMERGE_TEST_HANG"
_POLL_S = 0.5  # how often the driver wakes to check timeouts and signals
_STATS_EVERY_S = 1.0  # workers.json is rewritten at most this often (and on every change of an
# actor's state)


class RayPoolError(EvomergeError):
    """The Ray pool cannot start (no Ray, no cluster, actors that cannot be placed or built)."""


class _Actor:
    """Runs inside a Ray actor: one LocalWorker, built once."""

    def __init__(
        self, experiment: Experiment, sources: dict[str, str], zoo: Path | None, name: str
    ) -> None:
        from evomerge.workers.local import LocalWorker

        self.worker = LocalWorker(experiment, sources, zoo=zoo)
        self.worker.name = name  # recorded with each evaluation

    def info(self) -> dict[str, Any]:
        import evomerge

        return {"pid": os.getpid(), "host": socket.gethostname(), "evomerge": evomerge.__file__}

    def evaluate(
        self,
        recipe: Recipe,
        genome: Sequence[float],
        front: Sequence[Sequence[float]],
        rung: Rung | None = None,
    ) -> Evaluation | tuple[Evaluation, dict[str, dict[str, float]]]:
        """The evaluation; at a successive-halving ``rung``, with the candidate's item scores so
        far (the driver's copy of ``rung.scores`` is not the one extended here)."""
        hook = os.environ.get(HANG_HOOK)
        if hook:
            try:
                os.rename(Path(hook) / "hang", Path(hook) / f"hung-{os.getpid()}")
            except OSError:
                pass
            else:
                time.sleep(3600)
        if rung is None:
            return self.worker.evaluate(recipe, genome, front)
        return self.worker.evaluate(recipe, genome, front, rung=rung), rung.scores


def _failed(job: Job, worker: str, error: str, timings: dict[str, float]) -> Evaluation:
    return Evaluation(
        job.recipe.content_hash(),
        job.recipe.to_yaml(),
        list(job.genome),
        None,
        status="failed",
        error=error,
        timings=timings,
        worker=worker,
    )


class RayPool(WorkerBase):
    """``workers.count`` actors on a Ray cluster, driven by the search loop."""

    name = "ray"
    concurrent = True  # the loop hands it whole batches (:meth:`run`)

    def __init__(
        self,
        experiment: Experiment,
        sources: dict[str, str],
        *,
        zoo: Path | None = None,
        log: Callable[[str], None] = lambda _: None,
        stats_file: Path | None = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise RayPoolError(
                "workers.backend: ray needs Ray: pip install 'evomerge[ray]'"
            ) from None
        self._ray, self.log, self.stats_file = ray, log, stats_file
        w = self.spec = experiment.workers
        # the driver plans and orients objectives itself: headers and task files only
        self.objectives = load_objectives(experiment, zoo)
        self.sources = {n: ModelSource(p, name=n) for n, p in sources.items()}
        res = dict(w.resources)
        num_cpus = res.pop("num_cpus", 1.0)
        num_gpus = res.pop("num_gpus", 1.0 if w.device.startswith("cuda") else 0.0)
        memory = res.pop("memory", None)
        self._started_ray = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {}
            if w.address is None:  # a private local cluster ("local": never someone else's)
                kwargs["num_cpus"] = max(os.cpu_count() or 1, int(-(-num_cpus * w.count // 1)))
            try:
                ray.init(
                    address=w.address or "local",
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    **kwargs,
                )
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise RayPoolError(f"workers.address {w.address!r}: cannot connect ({e})") from e
            self._started_ray = True
        need = {"CPU": num_cpus, "GPU": num_gpus, **res}
        have = ray.cluster_resources()
        short = {k: v for k, v in need.items() if v > have.get(k, 0.0)}
        if short:
            self.close()
            raise RayPoolError(
                f"workers.resources: an actor needs {short} but the whole cluster has "
                f"{ {k: have.get(k, 0.0) for k in short} }"
            )
        env = {
            k: v for k, v in os.environ.items() if k == "PYTHONPATH" or k.startswith("EVOMERGE_")
        }
        remote = ray.remote(_Actor).options(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            resources=res or None,
            memory=memory,
            max_restarts=-1,  # Ray restarts a dead actor; its candidate's retries are ours
            max_task_retries=0,
            runtime_env={"env_vars": env} if env else None,
        )
        self.names = [f"ray:{i}" for i in range(w.count)]
        self.actors = [remote.remote(experiment, sources, zoo, n) for n in self.names]
        log(f"ray: starting {w.count} actor(s) ({num_cpus:g} CPU, {num_gpus:g} GPU each)…")
        try:
            self.info = ray.get([a.info.remote() for a in self.actors])
        except ray.exceptions.RayError as e:
            self.close()
            last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise RayPoolError(f"a Ray actor could not start: {last}") from None
        hosts = sorted({i["host"] for i in self.info})
        log(f"ray: {w.count} actor(s) ready on {', '.join(hosts)}")
        n = w.count
        self._alive = [True] * n
        self._idle: deque[int] = deque(range(n))
        self._pings: dict[Any, int] = {}  # restarted actors' readiness, by pending reply
        self._busy = [0.0] * n
        self._evals = [0] * n
        self._in_flight = 0
        self.retries = self.timeouts = self.deaths = self.evaluations = 0
        self._first: float | None = None  # the first dispatch (throughput's clock starts)
        self._saved = 0.0

    # -- what the search loop asks of every worker ---------------------------------------------
    # -- dispatch ------------------------------------------------------------------------------
    def run(
        self,
        jobs: Sequence[Job],
        *,
        front: Callable[[], list[list[float]]],
        stop: Callable[[], bool],
        more: Callable[[], Job | None] | None = None,
    ) -> Iterator[tuple[Job, Evaluation]]:
        """Score ``jobs`` on the actors, one per idle actor; yield each (job, evaluation) as it
        arrives. Once ``stop()`` is true nothing more is sent: the candidates in flight are
        awaited and yielded, the rest are not scored.

        ``more`` (asynchronous dispatch): called for the next job whenever an actor is idle and
        ``jobs`` are spent, after the last result was yielded (so it has been told); None: none
        for now (the pool ends once nothing is in flight)."""
        ray = self._ray
        queue: deque[Job] = deque(jobs)
        idle, pings = self._idle, self._pings
        flight: dict[Any, tuple[Job, int, float]] = {}
        timeout = self.spec.timeout_s

        def send(ask: bool = True) -> None:
            while idle and not stop():
                if not queue:
                    job = more() if ask and more is not None else None
                    if job is None:
                        break
                    queue.append(job)
                i, job = idle.popleft(), queue.popleft()
                job.attempts += 1
                ref = self.actors[i].evaluate.remote(job.recipe, job.genome, front(), job.rung)
                now = time.perf_counter()
                self._first = self._first or now
                flight[ref] = (job, i, now)
                self._in_flight = len(flight)
                self._save()

        try:
            while True:
                send()
                if not flight and (stop() or (not queue and (more is None or idle))):
                    break  # stopped (the queue is left unscored), or nothing more to score
                if not flight and not idle and not pings:
                    raise RayPoolError("every Ray actor is dead; see the Ray logs")
                ready, _ = ray.wait([*flight, *pings], num_returns=1, timeout=_POLL_S)
                for ref in ready:
                    if ref in pings:
                        self._back(pings.pop(ref), ref)
                        continue
                    job, i, t0 = flight.pop(ref)
                    self._in_flight = len(flight)
                    now = time.perf_counter()
                    self._busy[i] += now - t0
                    try:
                        ev = ray.get(ref)
                    except ray.exceptions.RayActorError as e:
                        self._restarting(i)
                        if job.attempts <= self.spec.retries:
                            self.retries += 1
                            self.log(f"{self.names[i]} died ({_first_line(e)}); sending again")
                            queue.appendleft(job)
                            self._save(force=True)
                            continue
                        ev = _failed(
                            job,
                            self.names[i],
                            f"ActorDied: the actor scoring it died {job.attempts} time(s) "
                            f"(retries: {self.spec.retries}); last: {_first_line(e)}",
                            {"total": now - t0},
                        )
                    except ray.exceptions.RayTaskError as e:  # a bug, not the candidate's values
                        idle.append(i)
                        if isinstance(e.cause, WorkerFault):  # the system: the run stops
                            raise e.cause from None
                        ev = _failed(
                            job,
                            self.names[i],
                            f"{type(e.cause).__name__}: {e}",
                            {"total": now - t0},
                        )
                    else:
                        idle.append(i)
                        if job.rung is not None:  # the rung's item scores come back with it
                            ev, scores = ev
                            job.rung.scores.clear()
                            job.rung.scores.update(scores)
                        ev.timings["dispatch"] = max(0.0, now - t0 - ev.timings.get("total", 0.0))
                    # the actor works on the next candidate while this one is committed (a
                    # job of the batch; ``more`` is asked once this result has been told)
                    send(ask=False)
                    yield self._done(i, job, ev)
                if timeout is not None:
                    now = time.perf_counter()
                    for ref, (job, i, t0) in list(flight.items()):
                        if now - t0 <= timeout:
                            continue
                        del flight[ref]
                        self._in_flight = len(flight)
                        self._busy[i] += now - t0
                        ray.kill(self.actors[i], no_restart=False)  # Ray starts it afresh
                        self._restarting(i)
                        self.timeouts += 1
                        ev = _failed(
                            job,
                            self.names[i],
                            f"Timeout: still running after {timeout:g}s; its actor was restarted",
                            {"total": now - t0},
                        )
                        yield self._done(i, job, ev)
        finally:
            for ref, (_, i, _) in flight.items():  # interrupted (a second Ctrl-C, an error)
                ray.cancel(ref)
                idle.append(i)
            self._in_flight = 0
            self._save(force=True)

    def _restarting(self, i: int) -> None:
        """Actor ``i`` died (Ray restarts it): it gets work again once it answers."""
        self._alive[i] = False
        self.deaths += 1
        self._pings[self.actors[i].info.remote()] = i

    def _back(self, i: int, ref: Any) -> None:
        try:
            self.info[i] = self._ray.get(ref)
        except self._ray.exceptions.RayError as e:  # it could not be restarted
            self.log(f"{self.names[i]} is dead for good: {_first_line(e)}")
            return
        self._alive[i] = True
        self._idle.append(i)
        self._save(force=True)

    def _done(self, i: int, job: Job, ev: Evaluation) -> tuple[Job, Evaluation]:
        self._evals[i] += 1
        self.evaluations += 1
        self._save(force=True)
        return job, ev

    # -- status --------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        now = time.perf_counter()
        wall = now - self._first if self._first else 0.0
        return {
            "backend": "ray",
            "dispatch": self.spec.dispatch,
            "address": self.spec.address,
            "updated": time.time(),
            "wall_s": wall,
            "actors": [
                {
                    "name": n,
                    "host": info["host"],
                    "pid": info["pid"],
                    "evomerge": info["evomerge"],
                    "alive": alive,
                    "busy_s": busy,
                    "utilization": busy / wall if wall > 0 else 0.0,
                    "evaluations": evals,
                }
                for n, info, alive, busy, evals in zip(
                    self.names, self.info, self._alive, self._busy, self._evals, strict=True
                )
            ],
            "in_flight": self._in_flight,
            "evaluations": self.evaluations,
            "retries": self.retries,
            "timeouts": self.timeouts,
            "deaths": self.deaths,
            "evaluations_per_hour": self.evaluations / wall * 3600 if wall > 0 else None,
        }

    def _save(self, *, force: bool = False) -> None:
        now = time.perf_counter()
        if self.stats_file is None or (not force and now - self._saved < _STATS_EVERY_S):
            return
        self._saved = now
        atomic_write_json(self.stats_file, self.stats())  # for `evomerge status`

    def close(self) -> None:
        """Stop the actors (and the local cluster this pool started)."""
        for a in getattr(self, "actors", []):
            with contextlib.suppress(Exception):  # already gone, or the cluster is
                self._ray.kill(a, no_restart=True)
        if hasattr(self, "_alive"):
            self._alive = [False] * len(self._alive)
            self._save(force=True)
        self.actors = []
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

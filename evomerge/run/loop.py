"""The search loop: ask a batch, decode, evaluate (or reuse), commit, tell, checkpoint.

The run directory (:mod:`evomerge.run.run_dir`) holds the experiment, the archive and the
optimizer's state after its last complete batch. Resume = restore the optimizer, ask again: a
batch cut short re-asks the same genomes, whose finished members come back from the archive by
recipe hash. So an interrupted and resumed run evaluates the same recipes, in the same order, as
one that was never interrupted.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evomerge.experiment import Experiment, is_unit_metric
from evomerge.hub import resolve_sources
from evomerge.killpoints import kill_point
from evomerge.objectives import loss, shortfall
from evomerge.optimize.base import Optimizer
from evomerge.recipe import Recipe
from evomerge.run.archive import Archive, Evaluation
from evomerge.run.dispatch import Candidate, batch_results, check_async, run_async
from evomerge.run.fidelity import halve_batch
from evomerge.run.run_dir import (
    WORKERS_FILE,
    claim_study,
    read_info,
    read_optimizer_journal,
    read_optimizer_state,
    save_optimizer,
    storage_url,
    study_name,
    unlock,
    update_info,
    write_optimizer_state,
)
from evomerge.run.schedule import Schedule, ideal_notes
from evomerge.space import SpaceError
from evomerge.workers.base import Job
from evomerge.workers.faults import WorkerFault


@dataclass
class Progress:
    """What a progress display needs after each evaluation."""

    done: int
    budget: int
    failed: int
    cached: int
    best: dict[str, float]
    hypervolume: float
    elapsed: float


@dataclass
class Outcome:
    run_dir: Path
    status: str  # finished | interrupted | time limit | failing | exhausted | stopped
    evaluations: int
    new: int
    front: list[Evaluation] = field(default_factory=list)
    reason: str | None = None  # why a failing, exhausted or stopped run ended


# this many proposals in a row that are all recipes already in the archive (and at least three
# batches of them) end a run as `exhausted`: the space has fewer distinct recipes than the
# budget, or the optimizer has converged on what it knows
EXHAUSTED_AFTER = 100


class Search:
    """One run: experiment + run dir + archive + optimizer + worker."""

    def __init__(
        self,
        run_dir: Path,
        experiment: Experiment,
        *,
        zoo: Path | None,
        log: Callable[[str], None] = lambda _: None,
        worker: Any = None,
        revisions: dict[str, str] | None = None,
    ) -> None:
        self.run_dir, self.experiment, self.zoo, self.log = run_dir, experiment, zoo, log
        # zoo: names, hub ids (at the commits a run recorded, on resume) and paths
        sources, self.revisions = resolve_sources(experiment.sources, zoo=zoo, revisions=revisions)
        space_kw = {
            "sources": sources,
            "base": experiment.base,
            "seed": experiment.seed,
            "dtype": experiment.dtype,
            "tokenizer_source": experiment.tokenizer_source,
        }
        # coarse to fine: the archive, the worker and the exports see the last stage's space
        self.schedule = Schedule(experiment, **space_kw)
        self.space = self.schedule.space
        if experiment.workers.dispatch == "async":  # one candidate at a time
            check_async(experiment)
        state = read_optimizer_state(run_dir)
        if self.schedule.staged is not None and state is not None:
            self.schedule.stage = _stage_of(state)
        # every stage's optimizer and options are checked before any work
        built = [self.schedule.new_optimizer(i) for i in range(len(self.schedule.stages) or 1)]
        self.optimizer: Optimizer = built[self.schedule.stage]
        owned = worker is None
        if worker is None and experiment.workers.backend == "ray":
            from evomerge.workers.ray_pool import RayPool

            worker = RayPool(
                experiment, sources, zoo=zoo, log=log, stats_file=Path(run_dir) / WORKERS_FILE
            )
        elif worker is None:
            from evomerge.workers.local import LocalWorker

            worker = LocalWorker(experiment, sources, zoo=zoo, log=log)
        self.worker = worker
        try:
            self.worker.plan(self.space.decode(self.space.middle()))  # the space fits the sources
            self.labels = [o.label for o in experiment.objectives]
            self.directions = worker.directions
            self.reference = [
                experiment.default_reference(o, ob.metric, d)
                for o, ob, d in zip(
                    experiment.objectives, worker.objectives, self.directions, strict=True
                )
            ]
            self.archive = Archive(
                storage_url(run_dir),
                study_name=study_name(run_dir),
                objectives=self.labels,
                directions=self.directions,
                genes=self.space.genes,
                experiment_hash=experiment.content_hash(),
                unit_objectives=[
                    o.cost is None and is_unit_metric(ob.metric)
                    for o, ob in zip(experiment.objectives, worker.objectives, strict=True)
                ],
            )
            if experiment.storage is not None:
                claim_study(self.archive, run_dir, experiment.storage)
            if state is not None:
                self.optimizer.restore(state, read_optimizer_journal(run_dir))
        except BaseException:
            if owned:
                self.close()  # Ray actors do not outlive a run that could not open
            raise
        self._stop: str | None = None
        self._failing: str | None = None  # max_failures failed candidates in a row: why
        self._streak = 0
        self._fault: WorkerFault | None = None  # the system failed: why the run stopped
        self._exhausted = self._exhaustion()  # as the restored optimizer left it
        # seconds spent by the loop itself (not in the worker), for the overhead benchmark
        self.loop_timings: dict[str, float] = dict.fromkeys(
            ("ask", "decode", "lookup", "commit", "tell", "checkpoint"), 0.0
        )
        self._timings_saved: dict[str, float] = {}  # what run.json holds of them

    @property
    def stage(self) -> int:
        """The schedule's stage in force (0 without a schedule)."""
        return self.schedule.stage

    @property
    def multi(self) -> bool:
        """Whether the optimizer in force takes every objective (else one loss: their weighted
        sum, or the distance to the ideal point in a stage that targets the knee)."""
        return self.optimizer.multi_objective and not self.schedule.targets_knee()

    def _next_stage(self, budget: int) -> None:
        """Between batches: the next stage's optimizer once its stage begins, its state saved
        at once, so a resume continues in the new stage with the same seeds."""
        step = self.schedule.advance(self.archive, self.optimizer, budget)
        if step is None:
            return
        self.optimizer, message = step
        self.log(message)
        write_optimizer_state(self.run_dir, self.optimizer.state())

    # -- losses for the optimizer --------------------------------------------------------------
    def losses_of(self, ev: Evaluation) -> list[float] | None:
        """What the optimizer in force is told of an evaluation: its losses (multi-objective),
        their weighted sum, or (a stage that targets the knee) its shortfall from the ideal
        point; None for a failure."""
        if not ev.ok:
            return None
        assert ev.values is not None
        signed = loss(ev.values, self.directions)
        if self.multi:
            return signed
        if self.schedule.targets_knee():
            notes = self.optimizer.annotations
            if "ideal" not in notes:
                notes.update(ideal_notes(self.archive))
            return [float(shortfall(np.asarray(signed), notes["ideal"], notes["scale"]))]
        weights = [o.weight for o in self.experiment.objectives]
        return [float(np.dot(weights, signed))]

    # -- one candidate -------------------------------------------------------------------------
    def resolve(self, genome: np.ndarray, *, look_up: bool = True) -> Candidate:
        """What a genome of the optimizer in force is: its genome in the space's genes, its
        recipe and hash, and (``look_up``) the archive's evaluation of that recipe. A genome
        that makes no model is recorded (or found) as an invalid trial at once, no worker
        involved, and counted as a failure."""
        t0 = time.perf_counter()
        lifted = self.schedule.lift(genome, self.optimizer.annotations)
        try:
            recipe = self.space.decode(lifted)
        except SpaceError as e:
            key = "invalid-" + _genome_key(lifted)
            hit = self.archive.lookup(key)
            if hit is not None:
                return Candidate([float(g) for g in lifted], None, key, hit, hit, False)
            ev = Evaluation(
                key, "", [float(g) for g in lifted], None, status="failed", error=f"SpaceError: {e}"
            )
            ev = self.archive.record(ev)
            self.count_failure(ev)
            return Candidate([float(g) for g in lifted], None, key, None, ev, True)
        t1 = time.perf_counter()
        key = recipe.content_hash()
        hit = self.archive.lookup(key) if look_up else None
        self.loop_timings["decode"] += t1 - t0
        self.loop_timings["lookup"] += time.perf_counter() - t1
        return Candidate([float(g) for g in lifted], recipe, key, hit)

    def commit(self, ev: Evaluation) -> Evaluation:
        """Record a new evaluation in the archive, the items it scored first (so the run's
        record of scored items never misses one), timed as the loop's commit."""
        t0 = time.perf_counter()
        self.archive.note_scored(ev.scored_items)
        ev = self.archive.record(ev)
        self.loop_timings["commit"] += time.perf_counter() - t0
        return ev

    def count_failure(self, ev: Evaluation) -> None:
        """A run whose candidates keep failing stops, with the reason, instead of burning its
        budget (``workers.max_failures`` in a row)."""
        self._streak = 0 if ev.ok else self._streak + 1
        limit = self.experiment.workers.max_failures
        if limit is not None and self._streak >= limit and not self._failing:
            self._failing = (
                f"{self._streak} failed candidate(s) in a row (workers.max_failures: {limit}); "
                f"the last: {(ev.error or '?').strip().splitlines()[0]}"
            )
            self.log(f"stopping: {self._failing}")

    def front_values(self) -> list[list[float]]:
        """The front a promoting worker measures a candidate against ([] without promotion)."""
        if not self.experiment.promotion.enabled:
            return []
        return [e.values for e in self.archive.front() if e.values is not None]

    @property
    def stopping(self) -> bool:
        """A signal or a run of failures asked the loop to stop."""
        return bool(self._stop or self._failing)

    @property
    def exhausted(self) -> bool:
        return self._exhausted is not None

    def stage_ends(self, evaluations: int, budget: int) -> bool:
        """Whether a schedule's next stage begins at ``evaluations``."""
        return self.schedule.stage_ends(evaluations, budget)

    def note_proposals(self, proposals: int, new: int) -> None:
        """The one stopping rule of a search that finds nothing new: count the proposals in a
        row that brought no new recipe (kept with the optimizer's state, so a resumed run stops
        exactly where an uninterrupted one does); ``EXHAUSTED_AFTER`` of them, over at least
        three asks, exhaust the search."""
        notes = self.optimizer.annotations
        notes["stale"] = 0 if new else notes.get("stale", 0) + proposals
        notes["stale_batches"] = 0 if new else notes.get("stale_batches", 0) + 1
        self._exhausted = self._exhaustion()

    def _exhaustion(self) -> str | None:
        """Why the search is exhausted (:meth:`note_proposals`), or None."""
        notes = self.optimizer.annotations
        stale = notes.get("stale", 0)
        if stale < EXHAUSTED_AFTER or notes.get("stale_batches", 0) < 3:
            return None
        return (
            f"the optimizer's last {stale} proposals were all recipes already in the archive "
            f"({len(self.archive)} distinct): the search space has fewer recipes than the "
            "budget, or the optimizer has converged; a larger budget would not add any"
        )

    # -- the loop ------------------------------------------------------------------------------
    def run(
        self,
        budget: int,
        *,
        hours: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_evaluation: Callable[[Evaluation], None] | None = None,
    ) -> Outcome:
        """Ask, score, commit and tell until the budget is spent (or a signal, the time limit,
        failures in a row, an exhausted space or a system fault stop it), checkpointing the
        optimizer after each batch (each ask, dispatched asynchronously)."""
        from evomerge.run.reference_points import ensure_reference_points

        start = time.perf_counter()
        stops = Stops(self, start + hours * 3600 if hours else None)
        counts = {"new": 0, "cached": 0}

        def done(ev: Evaluation, is_new: bool) -> None:
            counts["new" if is_new else "cached"] += 1
            if on_evaluation:
                on_evaluation(ev)
            if on_progress:
                on_progress(self.progress(budget, counts["cached"], start))

        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum: int, _frame: Any) -> None:
            if self._stop is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now (the archive is intact)
            self._stop = signal.Signals(signum).name
            self.log(f"{self._stop}: finishing the current candidate, then saving state…")

        for s in previous:
            signal.signal(s, on_signal)
        try:
            # once per run (a file in the run dir), not trials; a system fault while scoring
            # them stops the run cleanly, as it would on a trial
            ensure_reference_points(self)
            asynchronous = self.experiment.workers.dispatch == "async"
            while len(self.archive) < budget and not self._exhausted and not stops():
                if not self._mid_ask():
                    self._next_stage(budget)
                if asynchronous:
                    if not run_async(self, budget, stops, done):
                        break
                elif not self._batch(budget, stops, done):
                    break  # cut short: the optimizer is not told; a resume re-asks the batch
        except WorkerFault as e:  # the system, not a candidate: stop with everything saved
            self._fault = e
            self.log(f"stopping: {e.reason}")
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        status, reason = self._status("time limit" if stops.timed_out else "finished", budget)
        self.archive.tag_knee()
        update_info(
            self.run_dir,
            status=status,
            evaluations=len(self.archive),
            updated=time.time(),
            reason=reason,
            traceback=self._fault.detail if self._fault else None,
            **self._spent(time.perf_counter() - start),
        )
        return Outcome(
            self.run_dir, status, len(self.archive), counts["new"], self.archive.front(), reason
        )

    def _spent(self, wall: float) -> dict[str, Any]:
        """The loop's own seconds (``loop_seconds``: ask, tell, commit…) and the wall time of
        every run of this directory, summed over resumes, for ``evomerge status``."""
        before = read_info(self.run_dir)
        was = before.get("loop_seconds") or {}
        out = {
            k: was.get(k, 0.0) + v - self._timings_saved.get(k, 0.0)
            for k, v in self.loop_timings.items()
        }
        self._timings_saved = dict(self.loop_timings)
        return {"loop_seconds": out, "wall_seconds": before.get("wall_seconds", 0.0) + wall}

    def _mid_ask(self) -> bool:
        """The optimizer holds candidates asked and not told (a batch cut short, tickets in
        flight when the run stopped): its stage goes on until they are told."""
        return self.optimizer.pending is not None or bool(getattr(self.optimizer, "tickets", {}))

    def _batch(self, budget: int, stops: Stops, done: Callable[[Evaluation, bool], None]) -> bool:
        """One batch: asked (or the one cut short earlier, re-asked), its members resolved and
        the new ones dispatched (or halved), each committed as it is scored; told and
        checkpointed once every member is. Whether it was told."""
        t0 = time.perf_counter()
        batch = self.optimizer.pending or self.optimizer.ask()
        self.loop_timings["ask"] += time.perf_counter() - t0
        losses: list[Any] = [_UNSCORED] * len(batch)
        new = 0

        def member(i: int, ev: Evaluation, is_new: bool) -> None:
            nonlocal new
            new += is_new
            losses[i] = self.losses_of(ev)
            done(ev, is_new)

        if self.experiment.promotion.halving:
            halve_batch(self, batch, budget, stops, member)
        else:
            flight: dict[str, Job] = {}
            jobs = self._jobs(batch, budget, stops, member, flight)
            for job, ev in batch_results(self.worker, jobs, front=self.front_values, stop=stops):
                ev = self.commit(ev)
                kill_point("commit")
                del flight[job.recipe.content_hash()]
                self.count_failure(ev)
                member(job.slots[0], ev, True)
                for i in job.slots[1:]:
                    member(i, ev, False)  # scored once, told for each slot
        if any(x is _UNSCORED for x in losses):
            return False
        t0 = time.perf_counter()
        self.optimizer.tell(batch, losses)
        self.note_proposals(len(batch), new)
        kill_point("tell")
        t1 = time.perf_counter()
        self.archive.sync()  # no checkpoint ahead of the archive, even on power loss
        self.archive.tag_knee()
        save_optimizer(self.run_dir, self.optimizer)
        self.loop_timings["tell"] += t1 - t0
        self.loop_timings["checkpoint"] += time.perf_counter() - t1
        return True

    def _jobs(
        self,
        batch: list[np.ndarray],
        budget: int,
        stops: Stops,
        member: Callable[[int, Evaluation, bool], None],
        flight: dict[str, Job],
    ) -> Iterator[Job]:
        """The batch's new recipes, in order, up to the budget (counting those in flight); an
        invalid member, one in the archive or one in flight is reported at once instead."""
        for i, g in enumerate(batch):
            if stops() or len(self.archive) + len(flight) >= budget:
                return
            c = self.resolve(g)
            if c.recipe is None or c.hit is not None:
                member(i, c.hit or c.invalid, c.is_new)  # type: ignore[arg-type]
                continue
            if c.key in flight:
                flight[c.key].slots.append(i)
                continue
            job = flight[c.key] = Job(c.recipe, c.genome, [i])
            if i + 1 < len(batch) and len(self.archive) + len(flight) < budget:
                job.then = self._next_recipe(batch[i + 1], c.key)
            yield job

    def _next_recipe(self, genome: np.ndarray, current: str) -> Recipe | None:
        """The recipe of the next genome, where merging it ahead is of use: the worker
        prefetches, and it is a new, valid recipe other than the one hashed ``current``."""
        if not getattr(self.worker, "prefetches", False):
            return None
        try:
            recipe = self.space.decode(self.schedule.lift(genome, self.optimizer.annotations))
        except SpaceError:
            return None
        key = recipe.content_hash()
        if key == current or self.archive.lookup(key) is not None:
            return None
        return recipe

    def _status(self, status: str, budget: int) -> tuple[str, str | None]:
        """How the loop ended, and why when it is not the budget's end."""
        if self._fault:
            return "stopped", self._fault.reason
        if self._failing:
            return "failing", self._failing
        if self._stop or (status != "time limit" and len(self.archive) < budget):
            return ("exhausted", self._exhausted) if self._exhausted else ("interrupted", None)
        return status, None

    def close(self) -> None:
        """Release the worker's engine (a vLLM engine holds processes and memory)."""
        close = getattr(self.worker, "close", None)
        if callable(close):
            close()
        unlock(self.run_dir)

    def progress(
        self,
        budget: int,
        cached: int = 0,
        start: float | None = None,
    ) -> Progress:
        best = {}
        for i, label in enumerate(self.labels):
            b = self.archive.best(label)
            if b is not None and b.values is not None:
                best[label] = b.values[i]
        return Progress(
            done=len(self.archive),
            budget=budget,
            failed=sum(not e.ok for e in self.archive.evaluations),
            cached=cached,
            best=best,
            hypervolume=self.archive.hypervolume(self.reference),
            elapsed=time.perf_counter() - start if start else 0.0,
        )


_UNSCORED = object()  # a batch member the loop did not reach


class Stops:
    """Whether the loop should send nothing more: a signal, failures in a row, or the time
    limit (``timed_out`` then says so)."""

    def __init__(self, search: Search, deadline: float | None) -> None:
        self.search, self.deadline, self.timed_out = search, deadline, False

    def __call__(self) -> bool:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            self.timed_out = True
        return self.search.stopping or self.timed_out


def _stage_of(state: bytes) -> int:
    """The schedule's stage a saved optimizer state belongs to (its annotations say)."""
    import pickle

    try:
        return int(pickle.loads(state).get("annotations", {}).get("stage", 0))
    except Exception:  # not a state: restore() will say so
        return 0


def _genome_key(genome: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(genome, dtype=np.float64).tobytes()).hexdigest()[:16]

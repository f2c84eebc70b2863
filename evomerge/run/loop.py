"""The search loop: ask a batch, decode, evaluate (or reuse), commit, tell, checkpoint.

The run directory (:mod:`evomerge.run.run_dir`) holds the experiment, the archive and the
optimizer's state after its last complete batch. Resume = restore the optimizer, ask again: a
batch cut short re-asks the same genomes, whose finished members come back from the archive by
recipe hash. So an interrupted and resumed run evaluates the same recipes, in the same order, as
one that was never interrupted.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evomerge.experiment import Experiment, OptimizerSpec, is_unit_metric
from evomerge.hub import resolve_sources
from evomerge.killpoints import kill_point
from evomerge.objectives import loss, shortfall
from evomerge.optimize import make_optimizer, optimizer_class
from evomerge.optimize.base import Optimizer, OptimizerError
from evomerge.recipe import Recipe
from evomerge.run.archive import Archive, ArchiveError, Evaluation
from evomerge.run.run_dir import (
    RunError,
    append_optimizer_journal,
    create,
    discard,
    load_experiment,
    lock,
    open_archive,
    owner_alive,
    read_info,
    read_optimizer_journal,
    read_optimizer_state,
    read_workers,
    storage_url,
    study_name,
    unlock,
    update_info,
    write_optimizer_state,
)
from evomerge.run.schedule import StagedSpace
from evomerge.space import SearchSpace, SpaceError, load_space
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


class NothingToDo(RunError):
    """A resume found the run complete (budget spent, or space exhausted): not an error."""


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
        self.staged: StagedSpace | None = None
        self.stage = 0
        if experiment.schedule:
            self.staged = StagedSpace(
                experiment.space, experiment.space_options, experiment.schedule, **space_kw
            )
            self.space = self.staged.final
        else:
            spec = load_space(experiment.space, experiment.space_options)
            self.space = SearchSpace(spec, **space_kw)
        if experiment.workers.dispatch == "async":  # one candidate at a time: search_async.py
            from evomerge.run.dispatch_async import check_async

            check_async(experiment)
        state = read_optimizer_state(run_dir)
        if self.staged is not None and state is not None:
            self.stage = _stage_of(state)
        if self.staged is not None:  # every stage's optimizer and options, before any work
            built = [self._new_optimizer(i) for i in range(len(self.staged.spaces))]
            self.optimizer: Optimizer = built[self.stage]
        else:
            self.optimizer = self._new_optimizer()
        owned = worker is None
        if worker is None and experiment.workers.backend == "ray":
            from evomerge.workers.ray_pool import RayPool

            worker = RayPool(experiment, sources, zoo=zoo, log=log, run_dir=run_dir)
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
                self._claim_study(experiment.storage)
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
        self._exhausted = self._exhaustion(0)
        # seconds spent by the loop itself (not in the worker), for the overhead benchmark
        self.loop_timings: dict[str, float] = dict.fromkeys(
            ("ask", "decode", "lookup", "commit", "tell", "checkpoint"), 0.0
        )

    def _claim_study(self, storage: str) -> None:
        """One driver per study: a shared database's study is this run directory's alone (two
        drivers telling one optimizer apart would each miss the other's results)."""
        ours = f"{socket.gethostname()}:{Path(self.run_dir).resolve()}"
        theirs = self.archive.study.user_attrs.get("driver")
        if theirs is None:
            self.archive.study.set_user_attr("driver", ours)
        elif theirs != ours:
            raise RunError(
                f"the study {study_name(self.run_dir)!r} in {storage} belongs to the run "
                f"{theirs}; several drivers feeding one study are not supported. Resume that run "
                "directory (`workers: {backend: ray, count: N}` spreads it over many GPUs), or "
                "change the experiment's name or seed for a study of its own"
            )

    def _optimizer_spec(self, stage: int) -> OptimizerSpec:
        """The optimizer of a schedule's stage: its own, or the experiment's."""
        if self.staged is not None:
            own = self.experiment.schedule[stage].get("optimizer")
            if own is not None:
                return OptimizerSpec.model_validate(own)
        return self.experiment.optimizer

    @property
    def multi(self) -> bool:
        """Whether the optimizer in force takes every objective (else one loss: their weighted
        sum, or the distance to the ideal point in a stage that targets the knee)."""
        return self.optimizer.multi_objective and not self._targets_knee()

    def _targets_knee(self, stage: int | None = None) -> bool:
        stage = self.stage if stage is None else stage
        return self.staged is not None and self.staged.targets[stage] == "knee"

    def _new_optimizer(self, stage: int | None = None) -> Optimizer:
        """The optimizer over the genes of a stage (the one in force by default; unscheduled:
        the space's)."""
        stage = self.stage if stage is None else stage
        space = self.staged.spaces[stage] if self.staged else self.space
        spec = self._optimizer_spec(stage)
        try:
            return make_optimizer(
                spec.name,
                space.genes,
                len(self.experiment.objectives)
                if optimizer_class(spec.name).multi_objective and not self._targets_knee(stage)
                else 1,
                seed=self.experiment.seed,
                options=spec.options,
            )
        except OptimizerError as e:
            if self.staged is None or "optimizer" not in self.experiment.schedule[stage]:
                raise
            raise OptimizerError(f"schedule[{stage}].optimizer: {e}") from None

    def _lift(self, genome: np.ndarray) -> np.ndarray:
        """The optimizer's genome in the space's genes (scheduled: the last stage's)."""
        return genome if self.staged is None else self.staged.lift(self.stage, genome)

    def _next_stage(self, budget: int) -> None:
        """Between batches: once the archive reaches a stage's ``until`` (or the budget's
        ``last`` evaluations begin), a fresh optimizer over the next stage's genes, seeded with
        every candidate so far (mapped into its genes: they decode to recipes in the archive, so
        re-asking them costs no evaluation), and its state saved at once, so a resume continues
        in the new stage with the same seeds."""
        assert self.staged is not None
        stage = self.staged.stage_at(len(self.archive), budget)
        if stage <= self.stage:
            return
        annotations = dict(self.optimizer.annotations)
        annotations.pop("ideal", None)
        annotations.pop("scale", None)
        self.stage = stage
        if self._targets_knee():  # the ideal point, fixed while the stage lasts
            annotations.update(self._ideal_point())
        self.optimizer = self._new_optimizer()
        seeds, seen = [], set()
        for ev in self.archive.evaluations:
            if not ev.ok:
                continue
            g = self.staged.project(stage, np.asarray(ev.genome))
            if g.tobytes() not in seen:
                seen.add(g.tobytes())
                seeds.append(g)
        n = self.optimizer.start_from(seeds)
        # re-asked seeds are archive hits by design: they do not count towards exhaustion
        annotations["stale"] = annotations.get("stale", 0) - n
        self.optimizer.annotations = {**annotations, "stage": stage}
        self.log(f"schedule: stage {stage} after {len(self.archive)} evaluations ({n} seeds)")
        write_optimizer_state(self.run_dir, self.optimizer.state())

    # -- losses for the optimizer --------------------------------------------------------------
    def _ideal_point(self) -> dict[str, list[float]]:
        """What a stage that targets the knee measures by: the front's ideal point, as losses,
        and each objective's unit (:meth:`Archive.ideal_point`); {} before any score."""
        point = self.archive.ideal_point()
        if point is None:
            return {}  # set at the stage's first loss
        return {"ideal": point[0].tolist(), "scale": point[1].tolist()}

    def _losses(self, ev: Evaluation) -> list[float] | None:
        if not ev.ok:
            return None
        assert ev.values is not None
        signed = loss(ev.values, self.directions)
        if self.multi:
            return signed
        if self._targets_knee():
            notes = self.optimizer.annotations
            if "ideal" not in notes:
                notes.update(self._ideal_point())
            return [float(shortfall(np.asarray(signed), notes["ideal"], notes["scale"]))]
        weights = [o.weight for o in self.experiment.objectives]
        return [float(np.dot(weights, signed))]

    def _evaluate(
        self, genome: np.ndarray, after: np.ndarray | None = None
    ) -> tuple[Evaluation, bool]:
        """(evaluation, whether it is new). ``after``: the genome evaluated next, which a
        worker that prefetches merges while this one is scored."""
        t0 = time.perf_counter()
        genome = self._lift(genome)
        try:
            recipe = self.space.decode(genome)
        except SpaceError as e:
            key = "invalid-" + _genome_key(genome)
            hit = self.archive.lookup(key)
            if hit is not None:
                return hit, False
            ev = Evaluation(
                key, "", [float(g) for g in genome], None, status="failed", error=f"SpaceError: {e}"
            )
            return self.archive.record(ev), True
        t1 = time.perf_counter()
        key = recipe.content_hash()
        hit = self.archive.lookup(key)
        front = []
        if hit is None and self.experiment.promotion.enabled:
            front = [e.values for e in self.archive.front() if e.values is not None]
        t2 = time.perf_counter()
        self.loop_timings["decode"] += t1 - t0
        self.loop_timings["lookup"] += t2 - t1
        if hit is not None:
            return hit, False
        started = time.time()
        then = self._next_recipe(after, key) if after is not None else None
        if then is not None:
            ev = self.worker.evaluate(recipe, genome, front, then=then)
        else:
            ev = self.worker.evaluate(recipe, genome, front)
        if ev.started is None:
            ev.started = started  # the trial's start in the archive (its end: the commit)
        ev = self._commit(ev)
        kill_point("commit")
        return ev, True

    def _next_recipe(self, genome: np.ndarray, current: str) -> Recipe | None:
        """The recipe of the next genome, where merging it ahead is of use: the worker
        prefetches, and it is a new, valid recipe other than the one hashed ``current``."""
        if not getattr(self.worker, "prefetches", False):
            return None
        try:
            recipe = self.space.decode(self._lift(genome))
        except SpaceError:
            return None
        key = recipe.content_hash()
        if key == current or self.archive.lookup(key) is not None:
            return None
        return recipe

    def _commit(self, ev: Evaluation) -> Evaluation:
        """Record a new evaluation in the archive, the items it scored first (so the run's
        record of scored items never misses one), timed as the loop's commit."""
        t0 = time.perf_counter()
        self.archive.note_scored(ev.scored_items)
        ev = self.archive.record(ev)
        self.loop_timings["commit"] += time.perf_counter() - t0
        return ev

    # -- the loop ------------------------------------------------------------------------------
    def run(
        self,
        budget: int,
        *,
        hours: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_evaluation: Callable[[Evaluation], None] | None = None,
    ) -> Outcome:
        from evomerge.run.reference_points import ensure_reference_points

        start, new, cached = time.perf_counter(), 0, 0
        deadline = start + hours * 3600 if hours else None
        status = "finished"
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def stop(signum: int, _frame: Any) -> None:
            if self._stop is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now (the archive is intact)
            self._stop = signal.Signals(signum).name
            self.log(f"{self._stop}: finishing the current candidate, then saving state…")

        for s in previous:
            signal.signal(s, stop)
        try:
            # once per run (a file in the run dir), not trials; a system fault while scoring
            # them stops the run cleanly, as it would on a trial
            ensure_reference_points(self)
            while len(self.archive) < budget and not self._exhausted:
                if self.experiment.workers.dispatch == "async":  # search_async.py
                    from evomerge.run.dispatch_async import run_async

                    n_new, cached, timed_out = run_async(
                        self, budget, deadline, start, on_evaluation, on_progress
                    )
                    new, status = n_new, "time limit" if timed_out else status
                    break
                new_before = new
                if self.staged is not None and self.optimizer.pending is None:
                    self._next_stage(budget)
                t0 = time.perf_counter()
                # a batch cut short earlier in this process is still pending: finish it first
                batch = self.optimizer.pending or self.optimizer.ask()
                self.loop_timings["ask"] += time.perf_counter() - t0
                losses: list[Any] = []
                if getattr(self.worker, "concurrent", False):  # Ray: the batch at once
                    losses, n_new, n_cached, timed_out = self._dispatch(
                        batch, budget, deadline, start, cached, on_evaluation, on_progress
                    )
                    new, cached = new + n_new, cached + n_cached
                    status = "time limit" if timed_out else status
                    batch_left = []
                elif self.experiment.promotion.halving:  # search_halving.py
                    from evomerge.run.halving import halve_batch

                    losses, n_new, n_cached, timed_out = halve_batch(
                        self,
                        batch,
                        budget,
                        deadline,
                        _UNSCORED,
                        on_evaluation,
                        on_progress,
                        start,
                        cached,
                    )
                    new, cached = new + n_new, cached + n_cached
                    status = "time limit" if timed_out else status
                    batch_left = []
                else:
                    batch_left = batch
                for i, g in enumerate(batch_left):
                    if self._stop or self._failing or len(self.archive) >= budget:
                        break
                    if deadline and time.perf_counter() > deadline:
                        status = "time limit"
                        break
                    after = batch_left[i + 1] if i + 1 < len(batch_left) else None
                    if len(self.archive) + 1 >= budget:
                        after = None  # the budget ends with this one
                    ev, is_new = self._evaluate(g, after)
                    new += is_new
                    cached += not is_new
                    if is_new:
                        self._count_failure(ev)
                    losses.append(self._losses(ev))
                    if on_evaluation:
                        on_evaluation(ev)
                    if on_progress:
                        on_progress(self.progress(budget, cached, start))
                if len(losses) < len(batch) or any(x is _UNSCORED for x in losses):
                    break  # the batch was cut short: the optimizer is not told; resume re-asks
                t0 = time.perf_counter()
                self.optimizer.tell(batch, losses)
                self._exhausted = self._exhaustion(len(batch), new - new_before)
                kill_point("tell")
                t1 = time.perf_counter()
                self.archive.sync()  # no checkpoint ahead of the archive, even on power loss
                self.archive.tag_knee()
                save_optimizer(self.run_dir, self.optimizer)
                self.loop_timings["tell"] += t1 - t0
                self.loop_timings["checkpoint"] += time.perf_counter() - t1
        except WorkerFault as e:  # the system, not a candidate: stop with everything saved
            self._fault = e
            self.log(f"stopping: {e.reason}")
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        status, reason = self._status(status, budget)
        self.archive.tag_knee()
        update_info(
            self.run_dir,
            status=status,
            evaluations=len(self.archive),
            updated=time.time(),
            reason=reason,
            traceback=self._fault.detail if self._fault else None,
        )
        return Outcome(self.run_dir, status, len(self.archive), new, self.archive.front(), reason)

    def _status(self, status: str, budget: int) -> tuple[str, str | None]:
        """How the loop ended, and why when it is not the budget's end."""
        if self._fault:
            return "stopped", self._fault.reason
        if self._failing:
            return "failing", self._failing
        if self._stop or (status != "time limit" and len(self.archive) < budget):
            return ("exhausted", self._exhausted) if self._exhausted else ("interrupted", None)
        return status, None

    def _exhaustion(self, proposals: int, new: int = 0) -> str | None:
        """Count the proposals in a row that brought no new recipe (kept with the optimizer's
        state, so a resumed run stops exactly where an uninterrupted one does); why the search
        is exhausted once there are ``EXHAUSTED_AFTER`` of them, else None."""
        stale = 0 if new else self.optimizer.annotations.get("stale", 0) + proposals
        self.optimizer.annotations["stale"] = stale
        batches = self.optimizer.annotations["stale_batches"] = (
            0 if new else self.optimizer.annotations.get("stale_batches", 0) + bool(proposals)
        )
        if stale < EXHAUSTED_AFTER or batches < 3:
            return None
        return (
            f"the optimizer's last {stale} proposals were all recipes already in the archive "
            f"({len(self.archive)} distinct): the search space has fewer recipes than the "
            "budget, or the optimizer has converged; a larger budget would not add any"
        )

    def _decode(self, genome: np.ndarray) -> tuple[Recipe | None, Evaluation | None, bool]:
        """The genome's recipe; a genome that makes no model is recorded (or found) as an
        invalid trial instead, with no worker involved: (None, its evaluation, is it new)."""
        try:
            return self.space.decode(self._lift(genome)), None, False
        except SpaceError:
            ev, is_new = self._evaluate(genome)
            if is_new:
                self._count_failure(ev)
            return None, ev, is_new

    def _count_failure(self, ev: Evaluation) -> None:
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

    def _dispatch(
        self,
        batch: list[np.ndarray],
        budget: int,
        deadline: float | None,
        start: float,
        cached: int,
        on_evaluation: Callable[[Evaluation], None] | None,
        on_progress: Callable[[Progress], None] | None,
    ) -> tuple[list[Any], int, int, bool]:
        """One batch on a concurrent worker (Ray): every member not in the archive goes out at
        once, each result is committed the moment it arrives, in any order.

        The members scored are those the one-by-one loop would score (the first new recipes of
        the batch, up to the budget; a recipe twice in the batch is scored once), so the batch's
        losses, told in the batch's order, are the same. Returns (losses with ``_UNSCORED``
        where a member was not reached, new, cached, whether the time limit stopped it).
        """
        from evomerge.workers.ray_pool import Job

        losses: list[Any] = [_UNSCORED] * len(batch)
        jobs: dict[str, Job] = {}
        n_new = n_cached = 0
        timed_out = False

        def done(i: int, ev: Evaluation, is_new: bool) -> None:
            nonlocal n_new, n_cached
            n_new += is_new
            n_cached += not is_new
            losses[i] = self._losses(ev)
            if on_evaluation:
                on_evaluation(ev)
            if on_progress:
                on_progress(self.progress(budget, cached + n_cached, start))

        for i, g in enumerate(batch):
            if self._stop or self._failing or len(self.archive) + len(jobs) >= budget:
                break
            if deadline and time.perf_counter() > deadline:
                timed_out = True
                break
            t0 = time.perf_counter()
            recipe, invalid, is_new = self._decode(g)
            if recipe is None:
                done(i, invalid, is_new)
                continue
            key = recipe.content_hash()
            hit = self.archive.lookup(key)
            self.loop_timings["decode"] += time.perf_counter() - t0
            if hit is not None:
                done(i, hit, False)
            elif key in jobs:
                jobs[key].slots.append(i)  # scored once, told twice
            else:
                jobs[key] = Job(recipe, [float(x) for x in self._lift(g)], [i])

        def front() -> list[list[float]]:
            if not self.experiment.promotion.enabled:
                return []
            return [e.values for e in self.archive.front() if e.values is not None]

        def stop() -> bool:
            nonlocal timed_out
            if deadline and time.perf_counter() > deadline:
                timed_out = True
            return bool(self._stop or self._failing or timed_out)

        for job, ev in self.worker.run(list(jobs.values()), front=front, stop=stop):
            ev = self._commit(ev)
            kill_point("commit")
            self._count_failure(ev)
            done(job.slots[0], ev, True)
            for i in job.slots[1:]:
                done(i, ev, False)
        return losses, n_new, n_cached, timed_out

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


def save_optimizer(run_dir: Path, optimizer: Optimizer) -> None:
    """The optimizer's checkpoint: its new journal records appended (durably), then its state,
    which needs them, written over the last."""
    state, records = optimizer.checkpoint()
    append_optimizer_journal(run_dir, optimizer.journal_length - len(records), records)
    write_optimizer_state(run_dir, state)


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


# ---------------------------------------------------------------------------------------------
# starting, resuming and summarizing runs


def start(
    experiment_file: Path,
    run_dir: Path,
    *,
    zoo: Path | None,
    budget: int | None = None,
    log: Callable[[str], None] = lambda _: None,
    worker: Any = None,
) -> tuple[Search, int]:
    """A new run in a new (or empty) run directory."""
    experiment = Experiment.load(experiment_file)
    info = create(run_dir, experiment_file, experiment, zoo=zoo, budget=budget)
    try:
        search = Search(run_dir, experiment, zoo=zoo, log=log, worker=worker)
    except BaseException:
        discard(run_dir)  # nothing was evaluated: leave no half-made run behind
        raise
    # hub sources' commits: a resume reads the very same files
    update_info(run_dir, status="running", revisions=search.revisions)
    return search, info["budget"]


def reopen(
    run_dir: Path,
    *,
    budget: int | None = None,
    experiment_file: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
    worker: Any = None,
) -> tuple[Search, int]:
    """Continue a run; ``budget`` may raise its budget. A run with nothing left to do (its
    budget spent, its space exhausted) raises :class:`NothingToDo` before any model is opened.
    Another process driving the run is refused, naming it (the run lock)."""
    read_info(run_dir)  # a run directory at all
    lock(run_dir)
    try:
        experiment, info = load_experiment(run_dir, experiment_file)
        total = budget or info["budget"]
        done = _trials(run_dir)
        if info.get("status") == "exhausted":
            raise NothingToDo(
                f"{run_dir}: nothing to do — its search space is exhausted ({done} distinct "
                f"recipes evaluated): {info.get('reason')}"
            )
        if done >= total:
            if info.get("status") == "running":  # killed after its last commit
                update_info(run_dir, status="finished", evaluations=done, pid=os.getpid())
            raise NothingToDo(
                f"{run_dir}: nothing to do — it has spent its budget ({done} of {total} "
                f"evaluations); pass --budget N with N > {done} to go on"
            )
        search = Search(
            run_dir,
            experiment,
            zoo=Path(info["zoo"]) if info.get("zoo") else None,
            log=log,
            worker=worker,
            revisions=info.get("revisions"),
        )
    except BaseException:
        unlock(run_dir)
        raise
    update_info(
        run_dir, budget=total, status="running", pid=os.getpid(), reason=None, traceback=None
    )
    return search, total


def _trials(run_dir: Path) -> int:
    try:
        return len(open_archive(run_dir))
    except ArchiveError:  # no study yet (a shared database), or one Search will explain
        return 0


def failures_by_reason(evs: list[Evaluation]) -> dict[str, tuple[int, str]]:
    """Failed trials grouped by the kind their error names first (``RecipeError``,
    ``NonFiniteScore``, ``ActorDied``…): kind → (count, the first one's message), most first."""
    groups: dict[str, tuple[int, str]] = {}
    for e in evs:
        if e.ok:
            continue
        first = (e.error or "").strip().splitlines()[0] if (e.error or "").strip() else "?"
        kind, colon, msg = first.partition(":")
        if not colon or " " in kind.strip():
            kind, msg = "other", first
        n, example = groups.get(kind.strip(), (0, msg.strip()))
        groups[kind.strip()] = (n + 1, example)
    return dict(sorted(groups.items(), key=lambda kv: -kv[1][0]))


def summary(run_dir: Path) -> dict[str, Any]:
    """A run's state from its files alone (works while it runs: SQLite allows a reader).

    ``run.json``'s fields, plus ``trials``, ``failed``, ``objectives``, ``front_size``,
    ``best`` (objective → (value, trial)), ``seconds_per_evaluation`` (None before the first),
    ``rebuilds`` (engine models built because a recipe changed the depth: with vLLM each is a
    new engine), ``stale`` (the run says it is running but its process is gone), ``workers``
    (a Ray run's pool as last written: actors alive, each one's utilization, in flight, retries,
    timeouts, evaluations per hour; None for a local run) and ``failures`` (the failed trials by
    reason: the error's kind → count and the first such error's message).
    """
    info = read_info(run_dir)
    archive = open_archive(run_dir)
    evs = archive.evaluations
    best = {}
    for i, name in enumerate(archive.objectives):
        b = archive.best(name)
        if b is not None and b.values is not None:
            best[name] = (b.values[i], b.number)
    secs = [e.timings.get("total", 0.0) for e in evs]
    info.update(
        trials=len(evs),
        failed=sum(not e.ok for e in evs),
        failures=failures_by_reason(evs),
        objectives=archive.objectives,
        front_size=len(archive.front()),
        best=best,
        seconds_per_evaluation=sum(secs) / len(secs) if secs else None,
        rebuilds=int(sum(e.timings.get("rebuilds", 0.0) for e in evs)),
        stale=info.get("status") == "running" and not owner_alive(info),
        workers=read_workers(run_dir),
    )
    return info

"""How candidates reach the worker: a batch's one at a time in-process, or all at once on Ray
actors; or asynchronously (``workers.dispatch: async``), a new candidate as soon as one finishes.

A batch's candidates come from a *pull*: the loop's walk over the batch, which resolves each
member (an invalid genome, a recipe already in the archive, one already in flight) and hands out
only new recipes. In-process, each is pulled once the one before it is committed, so a later
member sees the earlier ones in the archive; a concurrent worker gets every member at once and
yields each result as it arrives. Either way the same members are scored and told.

Asynchronous dispatch (for optimizers that ask one candidate at a time: ``Optimizer.asynchronous``)
keeps ``workers.count`` candidates in flight; each result is committed, told (``tell_one``, in
arrival order) and the next candidate asked (``ask_one``). The optimizer is checkpointed after
every ask, before its candidate is sent, so every candidate sent is in a checkpoint, told or
pending. Resume restores it and settles each pending ticket: committed (the run stopped between
the commit and the next checkpoint) → told from the archive; not committed → sent again, the
same genome. With one candidate in flight the run is the sequential ask/tell order, resumed or
not; with more, the order results arrive in decides what is asked next (the budget and "each
recipe once" stay exact). A schedule's stage ends where its evaluations are spent: no candidate
of the next stage is asked before every one of this stage is told.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from evomerge.experiment import Experiment, ExperimentError
from evomerge.killpoints import kill_point
from evomerge.run.run_dir import save_optimizer
from evomerge.workers.base import Evaluation, Job

if TYPE_CHECKING:
    from pathlib import Path

    from evomerge.optimize.base import Optimizer
    from evomerge.recipe import Recipe
    from evomerge.run.archive import Archive
    from evomerge.space import SearchSpace

Stops = Callable[[], bool]  # whether to send nothing more (a signal, failures, the time limit)


@dataclass
class Candidate:
    """A genome resolved (:meth:`Search.resolve`): its genome in the space's genes; its recipe
    and hash (no recipe: an invalid genome, ``invalid`` its trial, ``is_new`` whether it was
    recorded just now); ``hit``: the archive's evaluation of the recipe, if any."""

    genome: list[float]
    recipe: Recipe | None
    key: str
    hit: Evaluation | None
    invalid: Evaluation | None = None
    is_new: bool = False


class SearchLike(Protocol):
    """What a dispatcher and a fidelity policy use of the search they serve
    (:class:`evomerge.run.loop.Search`)."""

    optimizer: Optimizer
    archive: Archive
    worker: Any
    run_dir: Path
    experiment: Experiment
    directions: list[str]
    loop_timings: dict[str, float]
    space: SearchSpace
    reference: list[float | None]
    log: Callable[[str], None]

    @property
    def exhausted(self) -> bool: ...
    def resolve(self, genome: np.ndarray, *, look_up: bool = True) -> Candidate: ...
    def commit(self, ev: Evaluation) -> Evaluation: ...
    def count_failure(self, ev: Evaluation) -> None: ...
    def losses_of(self, ev: Evaluation) -> list[float] | None: ...
    def note_proposals(self, proposals: int, new: int) -> None: ...
    def front_values(self) -> list[list[float]]: ...
    def stage_ends(self, evaluations: int, budget: int) -> bool: ...


def check_async(experiment: Experiment) -> None:
    """``workers.dispatch: async`` needs optimizers that ask one candidate at a time: the
    experiment's, and each of its schedule's stages'."""
    from evomerge.optimize import OPTIMIZERS, optimizer_class

    names = [experiment.optimizer.name]
    names += [st["optimizer"]["name"] for st in experiment.schedule if "optimizer" in st]
    for name in names:
        if not optimizer_class(name).asynchronous:
            ok = ", ".join(n for n, c in sorted(OPTIMIZERS.items()) if c.asynchronous)
            raise ExperimentError(
                f"workers.dispatch: async needs an optimizer that asks one candidate at a time "
                f"({ok}); {name!r} asks whole generations: use `dispatch: batch` (the default) "
                "with it"
            )


def evaluate(worker: Any, job: Job, front: list[list[float]]) -> Evaluation:
    """One job on an in-process worker, timed from when it was handed over."""
    kw: dict[str, Any] = {}
    if job.then is not None:
        kw["then"] = job.then
    if job.rung is not None:
        kw["rung"] = job.rung
    started = time.time()
    ev = worker.evaluate(job.recipe, job.genome, front, **kw)
    if ev.started is None:
        ev.started = started  # the trial's start in the archive (its end: the commit)
    return ev


def batch_results(
    worker: Any,
    jobs: Iterable[Job],
    *,
    front: Callable[[], list[list[float]]],
    stop: Callable[[], bool],
) -> Iterator[tuple[Job, Evaluation]]:
    """(job, evaluation) for each job: in-process one at a time, each drawn from ``jobs`` after
    the last was yielded (and so committed: ``jobs`` may be a lazy walk over a batch); on a
    concurrent worker (Ray) every job drawn first, then all sent at once, each result yielded as
    it arrives. Nothing new is sent once ``stop()``; what is in flight is awaited."""
    if getattr(worker, "concurrent", False):
        yield from worker.run(list(jobs), front=front, stop=stop)
        return
    pending = iter(jobs)
    while not stop() and (job := next(pending, None)) is not None:
        yield job, evaluate(worker, job, front())


def run_async(
    search: SearchLike, budget: int, stops: Stops, done: Callable[[Evaluation, bool], None]
) -> bool:
    """Ask, score, commit and tell one candidate at a time until the budget, a stop, the
    search's exhaustion or the end of the schedule's stage; whether it reached the stage's end
    (the loop then opens the next stage and calls again)."""
    opt, archive = search.optimizer, search.archive
    flight: dict[str, Job] = {}  # recipe hash -> the job scoring it (its tickets in ``slots``)
    redo = deque(opt.tickets.items())  # asked before an interruption and never told
    boundary = False

    def tell(ticket: int, ev: Evaluation, is_new: bool) -> None:
        t0 = time.perf_counter()
        opt.tell_one(ticket, search.losses_of(ev))
        search.note_proposals(1, int(is_new))
        search.loop_timings["tell"] += time.perf_counter() - t0
        done(ev, is_new)

    def settle(ticket: int, genome: np.ndarray) -> Job | None:
        """A job to send, or None: the candidate was told already (found in the archive,
        invalid) or joined the job scoring the same recipe."""
        c = search.resolve(genome)
        if c.recipe is None or c.hit is not None:
            tell(ticket, c.hit or c.invalid, c.is_new)  # type: ignore[arg-type]
            return None
        if c.key in flight:
            flight[c.key].slots.append(ticket)  # scored once, told for each ticket
            return None
        job = flight[c.key] = Job(c.recipe, c.genome, [ticket])
        return job

    def more() -> Job | None:
        """The next candidate to send: pending tickets first, then new asks within the budget,
        the stage and the search's patience."""
        nonlocal boundary
        while not stops():
            if redo:
                ticket, genome = redo.popleft()
            elif len(archive) + len(flight) >= budget or search.exhausted:
                return None
            elif search.stage_ends(len(archive) + len(flight), budget):
                boundary = True
                return None
            else:
                t0 = time.perf_counter()
                ticket, genome = opt.ask_one()
                t1 = time.perf_counter()
                archive.sync()  # no checkpoint ahead of the archive, even on power loss
                save_optimizer(search.run_dir, opt)  # before it is sent
                search.loop_timings["ask"] += t1 - t0
                search.loop_timings["checkpoint"] += time.perf_counter() - t1
            job = settle(ticket, genome)
            if job is not None:
                return job
        return None

    worker = search.worker
    if getattr(worker, "concurrent", False):
        results = worker.run([], front=search.front_values, stop=stops, more=more)
    else:
        results = ((job, evaluate(worker, job, search.front_values())) for job in iter(more, None))
    for job, ev in results:
        ev = search.commit(ev)
        kill_point("commit")
        del flight[job.recipe.content_hash()]
        search.count_failure(ev)
        for i, ticket in enumerate(job.slots):
            tell(ticket, ev, i == 0)
    t0 = time.perf_counter()
    archive.sync()
    save_optimizer(search.run_dir, opt)
    search.loop_timings["checkpoint"] += time.perf_counter() - t0
    return boundary and not stops()

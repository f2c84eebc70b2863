"""The asynchronous loop (``workers.dispatch: async``): a new candidate as soon as one finishes.

For optimizers that ask one candidate at a time (``Optimizer.asynchronous``: the optuna samplers,
random). ``workers.count`` candidates are in flight; as each result arrives it is committed to
the archive, its loss is told to the optimizer (``tell_one``, in arrival order) and the next is
asked (``ask_one``). A candidate already in the archive is told at once; one already in flight
is scored once and told for each ticket.

The optimizer is checkpointed after every ask, before the candidate is sent: every candidate
sent is in a checkpoint, told or pending. Resume restores it and settles each pending ticket:
committed (the run stopped between the commit and the next checkpoint) → told from the archive;
not committed (in flight at the kill) → sent again, the same genome. So no committed evaluation
is repeated or lost, and the budget counts the archive as in the batch loop.

Determinism: with one candidate in flight (``count: 1``) the run is the sequential ask/tell
order, resumed or not, on either backend. With more, what is asked depends on the order results
arrive in: the budget and "each recipe once" are exact, the sequence is not.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from evomerge.experiment import Experiment, ExperimentError
from evomerge.optimize import optimizer_class
from evomerge.run.archive import Evaluation
from evomerge.workers.ray_pool import Job

if TYPE_CHECKING:
    from evomerge.run.loop import Progress, Search

# the optimizer proposing only recipes already evaluated this many times in a row (a space
# smaller than the budget): the run stops, with the reason
_MAX_CACHED_IN_A_ROW = 1000


def check_async(experiment: Experiment) -> None:
    """``workers.dispatch: async`` needs an optimizer that asks one candidate at a time."""
    name = experiment.optimizer.name
    if experiment.workers.dispatch == "async" and not optimizer_class(name).asynchronous:
        from evomerge.optimize import OPTIMIZERS

        ok = ", ".join(n for n, c in sorted(OPTIMIZERS.items()) if c.asynchronous)
        raise ExperimentError(
            f"workers.dispatch: async needs an optimizer that asks one candidate at a time "
            f"({ok}); {name!r} asks whole generations: use `dispatch: batch` (the default) "
            "with it"
        )


def run_async(
    search: Search,
    budget: int,
    deadline: float | None,
    start: float,
    on_evaluation: Callable[[Evaluation], None] | None,
    on_progress: Callable[[Progress], None] | None,
) -> tuple[int, int, bool]:
    """Run until the archive holds ``budget`` evaluations, a signal, the deadline or failures
    in a row stop it; (new, cached, whether the time limit stopped it)."""
    from evomerge.run.loop import save_optimizer

    opt, archive = search.optimizer, search.archive
    flight: dict[str, Job] = {}  # recipe hash -> the job scoring it (its tickets in ``slots``)
    redo = deque(opt.tickets.items())  # asked before an interruption and never told
    counts = {"new": 0, "cached": 0, "cached_in_a_row": 0}
    timed_out = False

    def stop() -> bool:
        nonlocal timed_out
        if deadline and time.perf_counter() > deadline:
            timed_out = True
        return bool(search._stop or search._failing or timed_out)

    def tell(ticket: int, ev: Evaluation, is_new: bool) -> None:
        t0 = time.perf_counter()
        opt.tell_one(ticket, search._losses(ev))
        search.loop_timings["tell"] += time.perf_counter() - t0
        counts["new" if is_new else "cached"] += 1
        counts["cached_in_a_row"] = 0 if is_new else counts["cached_in_a_row"] + 1
        if on_evaluation:
            on_evaluation(ev)
        if on_progress:
            on_progress(search.progress(budget, counts["cached"], start))

    def settle(ticket: int, genome: np.ndarray) -> Job | None:
        """A job to send, or None: the candidate was told already (found in the archive,
        invalid) or joined the job scoring the same recipe."""
        t0 = time.perf_counter()
        recipe, invalid, is_new = search._decode(genome)
        if recipe is None:
            tell(ticket, invalid, is_new)
            return None
        key = recipe.content_hash()
        hit = archive.lookup(key)
        search.loop_timings["decode"] += time.perf_counter() - t0
        if hit is not None:
            tell(ticket, hit, False)
            return None
        if key in flight:
            flight[key].slots.append(ticket)  # scored once, told for each ticket
            return None
        job = flight[key] = Job(recipe, [float(x) for x in genome], [ticket])
        return job

    def more() -> Job | None:
        """The next candidate to send: pending tickets first, then new asks within budget."""
        while not stop():
            if redo:
                ticket, genome = redo.popleft()
            elif len(archive) + len(flight) >= budget:
                return None
            elif counts["cached_in_a_row"] >= _MAX_CACHED_IN_A_ROW:
                search._failing = (
                    f"the optimizer proposed {counts['cached_in_a_row']} recipes in a row that "
                    "were evaluated already (is the space smaller than the budget?)"
                )
                search.log(f"stopping: {search._failing}")
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

    def front() -> list[list[float]]:
        if not search.experiment.promotion.enabled:
            return []
        return [e.values for e in archive.front() if e.values is not None]

    for job, ev in _results(search, more, front, stop):
        ev = search._commit(ev)
        del flight[job.recipe.content_hash()]
        search._count_failure(ev)
        for i, ticket in enumerate(job.slots):
            tell(ticket, ev, i == 0)
    t0 = time.perf_counter()
    archive.sync()
    save_optimizer(search.run_dir, opt)
    search.loop_timings["checkpoint"] += time.perf_counter() - t0
    return counts["new"], counts["cached"], timed_out


def _results(
    search: Search,
    more: Callable[[], Job | None],
    front: Callable[[], list[list[float]]],
    stop: Callable[[], bool],
) -> Iterator[tuple[Job, Evaluation]]:
    """(job, evaluation) as each finishes: on the Ray pool, ``count`` at a time; in-process,
    one at a time."""
    worker: Any = search.worker
    if getattr(worker, "concurrent", False):
        yield from worker.run([], front=front, stop=stop, more=more)
        return
    while (job := more()) is not None:
        yield job, worker.evaluate(job.recipe, job.genome, front())

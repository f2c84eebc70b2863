"""How many items a candidate earns. ``promotion: {enabled: true}`` is the worker's own
(a candidate whose optimistic estimate could enter the front is re-scored on every item:
:mod:`evomerge.workers.promotion`); this module is the batch-level policy, successive halving
(``promotion: {schedule: successive_halving, rungs, eta}``): every member of a batch is scored
at rung 0, the best ``1/eta`` of them (:func:`~evomerge.workers.halving.ranking`) at rung 1 on
more items, and so on to the last rung. Each rung goes through the batch's dispatch, so it runs
in-process or on Ray actors alike.

What the archive and the optimizer get: each member's estimate at the highest rung it reached
(its ``fidelity`` per objective, ``timings["rung"]``, and its timings summed over its rungs:
``timings["items"]`` is every item it scored), committed in the batch's order once the batch
is halved, then told as the batch's losses. So the optimizer sees mixed fidelities, and the
best of each batch at the top one.

Resume: nothing of a batch is committed before its halving is done, and a member already in
the archive (a batch cut short by a crash while committing, or the same recipe asked again) is
scored again at the rungs it reaches, so the ranking — and so who goes on — is the one an
uninterrupted run made; its archived trial is kept as it is. A member whose rung fails (a
candidate error) is recorded failed and goes no further.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from evomerge.killpoints import kill_point
from evomerge.objectives import gains
from evomerge.recipe import Recipe
from evomerge.run.dispatch import SearchLike, Stops, batch_results
from evomerge.workers.base import Evaluation, Job
from evomerge.workers.halving import Rung, keep, ranking, rung_sizes


def n_rungs(search: SearchLike) -> int:
    """The rungs that score something new on at least one task."""
    rungs = search.experiment.promotion.rungs or []
    sizes = [len(ob.task.item_ids) for ob in getattr(search.worker, "objectives", []) if ob.task]
    return max((len(rung_sizes(rungs, n)) for n in sizes), default=len(rungs))


def halve_batch(
    search: SearchLike,
    batch: list[np.ndarray],
    budget: int,
    stops: Stops,
    done: Callable[[int, Evaluation, bool], None],
) -> None:
    """Halve one batch, reporting each member (``done(slot, evaluation, is_new)``) once its
    halving is over; a batch stopped midway reports only its invalid members and commits
    nothing else. The members halved are those the one-by-one loop would score: the valid
    recipes of the batch, new ones up to the budget."""
    promo = search.experiment.promotion
    assert promo.rungs is not None
    # members: key -> (first slot, recipe, genome, the archive's evaluation or None); a recipe
    # twice in the batch is halved once (its first slot) and told at each of its slots
    members: dict[str, tuple[int, Recipe, list[float], Evaluation | None]] = {}
    twins: dict[int, str] = {}
    admitted = 0
    room = budget - len(search.archive)
    for i, g in enumerate(batch):
        c = search.resolve(g, look_up=False)
        if c.recipe is None:
            assert c.invalid is not None
            done(i, c.invalid, c.is_new)
            room -= c.is_new
            continue
        if c.key in members:
            twins[i] = c.key
            continue
        hit = search.archive.lookup(c.key)
        if hit is None:
            if admitted >= room:
                continue  # over the budget: not reached (the batch is not told)
            admitted += 1
        members[c.key] = (i, c.recipe, c.genome, hit)

    results: dict[str, Evaluation] = {}
    scores: dict[str, dict[str, dict[str, float]]] = {k: {} for k in members}
    alive = list(members)
    weights = [o.weight for o in search.experiment.objectives]
    last = n_rungs(search) - 1
    for r in range(last + 1):
        jobs = [
            Job(recipe, genome, [i], rung=Rung(r, promo.rungs[r], scores[key]))
            for key in alive
            for i, recipe, genome, _hit in [members[key]]
        ]
        for job, ev in batch_results(search.worker, jobs, front=lambda: [], stop=stops):
            key = job.recipe.content_hash()
            before = results.get(key)
            if before is not None:  # the candidate's cost so far: every rung's timings added
                for name, v in before.timings.items():
                    if name != "rung":
                        ev.timings[name] = ev.timings.get(name, 0.0) + v
                for label, ids in before.scored_items.items():  # every rung's items
                    ev.scored_items[label] = sorted({*ev.scored_items.get(label, ()), *ids})
            results[key] = ev
        if stops():
            return  # nothing of the batch committed: a resume halves it again
        scored = [k for k in alive if results[k].ok]
        if r == last:
            break
        values = [gains(results[k].values, search.directions) for k in scored]  # type: ignore[arg-type]
        order = ranking(values, weights)
        alive = [scored[j] for j in sorted(order[: keep(len(scored), promo.eta)])]

    for key, (i, _recipe, _genome, hit) in sorted(members.items(), key=lambda kv: kv[1][0]):
        if hit is not None:
            done(i, hit, False)
            continue
        ev = search.commit(results[key])
        kill_point("commit")
        search.count_failure(ev)
        done(i, ev, True)
    for i, key in twins.items():
        if key in members:
            done(i, members[key][3] or results[key], False)

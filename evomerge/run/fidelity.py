"""One batch under successive halving (``promotion: {schedule: successive_halving, rungs,
eta}``): every member is scored at rung 0, the best ``1/eta`` of them (:func:`ranking`) at
rung 1 on more items, and so on to the last rung.

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

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from evomerge.killpoints import kill_point
from evomerge.objectives import gains
from evomerge.run.archive import Evaluation
from evomerge.workers.halving import Rung, keep, ranking, rung_sizes

if TYPE_CHECKING:
    from evomerge.run.loop import Progress, Search


def n_rungs(search: Search) -> int:
    """The rungs that score something new on at least one task."""
    rungs = search.experiment.promotion.rungs or []
    sizes = [len(ob.task.item_ids) for ob in getattr(search.worker, "objectives", []) if ob.task]
    return max((len(rung_sizes(rungs, n)) for n in sizes), default=len(rungs))


def halve_batch(
    search: Search,
    batch: list[np.ndarray],
    budget: int,
    deadline: float | None,
    unscored: Any,
    on_evaluation: Callable[[Evaluation], None] | None,
    on_progress: Callable[[Progress], None] | None,
    start: float,
    cached: int,
) -> tuple[list[Any], int, int, bool]:
    """(losses in the batch's order, ``unscored`` where a member was not reached; new; cached;
    whether the time limit stopped it). The members halved are those the one-by-one loop would
    score: the valid recipes of the batch, new ones up to the budget."""
    promo = search.experiment.promotion
    assert promo.rungs is not None
    losses: list[Any] = [unscored] * len(batch)
    n_new = n_cached = 0
    timed_out = False

    def done(i: int, ev: Evaluation, is_new: bool) -> None:
        nonlocal n_new, n_cached
        n_new += is_new
        n_cached += not is_new
        losses[i] = search._losses(ev)
        if on_evaluation:
            on_evaluation(ev)
        if on_progress:
            on_progress(search.progress(budget, cached + n_cached, start))

    # members: slot -> (recipe, the archive's evaluation or None); a recipe twice in the batch
    # is halved once (its first slot) and told at each of its slots
    members: dict[str, tuple[int, Any, Evaluation | None]] = {}
    twins: dict[int, str] = {}
    admitted = 0
    room = budget - len(search.archive)
    for i, g in enumerate(batch):
        recipe, invalid, is_new = search._decode(g)
        if recipe is None:
            done(i, invalid, is_new)
            room -= is_new
            continue
        key = recipe.content_hash()
        if key in members:
            twins[i] = key
            continue
        hit = search.archive.lookup(key)
        if hit is None:
            if admitted >= room:
                continue  # over the budget: not reached (the batch is not told)
            admitted += 1
        members[key] = (i, recipe, hit)

    results: dict[str, Evaluation] = {}
    scores: dict[str, dict[str, dict[str, float]]] = {k: {} for k in members}
    alive = list(members)
    weights = [o.weight for o in search.experiment.objectives]
    last = n_rungs(search) - 1
    for r in range(last + 1):
        scored: list[str] = []
        for key in alive:
            if search._stop or (deadline and time.perf_counter() > deadline):
                timed_out = not search._stop
                return losses, n_new, n_cached, timed_out  # nothing of the batch committed
            i, recipe, _hit = members[key]
            ev = search.worker.evaluate(recipe, batch[i], rung=Rung(r, promo.rungs[r], scores[key]))
            before = results.get(key)
            if before is not None:  # the candidate's cost so far: every rung's timings added
                for name, v in before.timings.items():
                    if name != "rung":
                        ev.timings[name] = ev.timings.get(name, 0.0) + v
                for label, ids in before.scored_items.items():  # every rung's items
                    ev.scored_items[label] = sorted({*ev.scored_items.get(label, ()), *ids})
            results[key] = ev
            if ev.ok:
                scored.append(key)
        if r == last:
            break
        values = [gains(results[k].values, search.directions) for k in scored]
        order = ranking(values, weights)
        alive = [scored[j] for j in sorted(order[: keep(len(scored), promo.eta)])]

    for key, (i, _recipe, hit) in sorted(members.items(), key=lambda kv: kv[1][0]):
        if hit is not None:
            done(i, hit, False)
            continue
        ev = search._commit(results[key])
        kill_point("commit")
        search._count_failure(ev)
        done(i, ev, True)
    for i, key in twins.items():
        if key in members:
            done(i, members[key][2] or results[key], False)
    return losses, n_new, n_cached, timed_out

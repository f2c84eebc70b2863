"""Held-out confirmation: score recipes a search chose on items it never saw.

A search ranks candidates by estimates on the same few items, so the front it keeps is
selected, in part, for doing well on those items: its scores are optimistic. An experiment may
reserve items (``holdout: 0.2``, :mod:`evomerge.evaluate.holdout`) that no estimator, promotion
or calibration of the search draws from; :func:`confirm` scores chosen trials on them (or, with
``full``, on every item) and stores each result in the run's archive next to the search-time
estimate (:meth:`evomerge.run.archive.Archive.record_confirmation`), one committed row per trial, so
a crash loses nothing confirmed and a second call scores only what is left.
:func:`estimator_error` is what the run's estimates were off by.

This sits above the workers and the archive: it opens the run's sources and an engine as a
worker does, and writes to the archive as the search does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evomerge.errors import EvomergeError
from evomerge.experiment import Experiment
from evomerge.objectives import front_ranks, losses
from evomerge.run.archive import CONFIRMATION_SETS, Archive, Evaluation
from evomerge.run.run_dir import load_experiment, open_archive


class ConfirmError(EvomergeError):
    """The chosen trials cannot be confirmed as asked (no held-out items, a failed trial)."""


@dataclass(frozen=True)
class Confirmation:
    """One trial scored exactly on a confirmation set (``holdout`` or ``full``), per scored
    objective, next to its search-time estimate. ``fidelity``: the share of the task's items
    the set holds; ``optimism`` = estimate − score, evomerge's one name and sign for how far
    a search-time estimate was off (positive: the search saw the trial better than it is, on a
    maximized objective)."""

    trial: int
    kind: str
    recipe_hash: str
    scores: dict[str, float]
    stderr: dict[str, float | None]
    items: dict[str, int]
    fidelity: dict[str, float]
    estimate: dict[str, float]
    estimate_fidelity: dict[str, float]
    seconds: float

    @property
    def optimism(self) -> dict[str, float]:
        return {o: self.estimate[o] - self.scores[o] for o in self.scores}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["trial"], d["kind"]  # the attribute's key holds them
        return d

    @classmethod
    def from_dict(cls, trial: int, kind: str, d: dict[str, Any]) -> Confirmation:
        return cls(trial=trial, kind=kind, **d)


# ---------------------------------------------------------------------------------------------
# what to confirm, and on which items


def held_out_items(experiment: Experiment, zoo: Path | None) -> dict[str, list[str]]:
    """Objective → the item ids it keeps from the search (empty where it holds out none);
    task files are read, no model is opened. The same ids the search's worker left out."""
    from evomerge.workers.local import load_objectives

    return {ob.spec.label: ob.held_out for ob in load_objectives(experiment, zoo) if ob.scored}


def choose(
    archive: Archive,
    *,
    trials: Sequence[int] | None = None,
    top: int | None = None,
) -> list[Evaluation]:
    """The trials to confirm: ``trials`` by number; the ``top`` K (front by front of the
    non-dominated sorting, each front nearest the ideal point first, as the knee is); else the
    front. Failed trials are refused by number."""
    if trials and top is not None:
        raise ConfirmError("choose --trial N… or --top K, not both")
    if trials:
        chosen = [archive.trial(n) for n in dict.fromkeys(trials)]
        bad = [e.number for e in chosen if not e.ok]
        if bad:
            raise ConfirmError(f"trial {bad[0]} failed during the search: nothing to confirm")
        return chosen
    if top is None:
        return archive.front()
    if top < 1:
        raise ConfirmError(f"--top {top}: choose at least one trial")
    return _ranked(archive)[:top]


def _ranked(archive: Archive) -> list[Evaluation]:
    ok = [e for e in archive.evaluations if e.ok]
    if not ok:
        return []
    rank = front_ranks(losses([e.values for e in ok], archive.directions))  # type: ignore[misc]
    dist = archive.ideal_distances(ok)  # the knee's rule: the knee comes first
    order = sorted(range(len(ok)), key=lambda i: (rank[i], dist[i], ok[i].number or 0))
    return [ok[i] for i in order]


# ---------------------------------------------------------------------------------------------
# scoring


class _Scorer:
    """The run's sources and one resident engine, as the search's worker had them; each
    objective's confirmation items tokenized once."""

    def __init__(
        self,
        experiment: Experiment,
        sources: dict[str, str],
        objectives: list[Any],
        ids: dict[str, list[str]],
    ) -> None:
        from evomerge.evaluate.resident import Resident
        from evomerge.evaluate.scoring import prepare

        self.resident = Resident(
            experiment.workers,
            sources,
            base=experiment.base,
            tokenizer_source=experiment.tokenizer_source,
        )
        self.engine, self.sources = self.resident.engine, self.resident.sources
        self.objectives = [ob for ob in objectives if ids.get(ob.spec.label)]
        self.ids = ids
        self.prepared = {
            ob.spec.label: prepare(self.engine, ob.whole_task, ids[ob.spec.label])
            for ob in self.objectives
            if ob.lmeval is None
        }

    def score(self, recipe_yaml: str) -> dict[str, tuple[float, float | None]]:
        """Objective → (exact mean, its stderr) of the recipe on the objective's items."""
        import yaml

        from evomerge.evaluate.estimators import make_estimator
        from evomerge.evaluate.scoring import score_prepared
        from evomerge.recipe import Recipe

        self.resident.load(Recipe.from_dict(yaml.safe_load(recipe_yaml)))
        out = {}
        for ob in self.objectives:
            label = ob.spec.label
            if ob.lmeval is not None:
                name = ob.lmeval.tasks[0]
                items = {name: self.ids[label]}
                scores = ob.lmeval.evaluate(self.engine, items=items, per_item=True)[name].scores
            else:
                scores = score_prepared(self.engine, self.prepared[label]).scores
            est = make_estimator("full").estimate(scores, self.ids[label])
            out[label] = (est.value, est.stderr)
        return out

    def close(self) -> None:
        self.resident.close()


def confirm(
    run_dir: Path,
    *,
    trials: Sequence[int] | None = None,
    top: int | None = None,
    full: bool = False,
    again: bool = False,
    zoo: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> list[Confirmation]:
    """Score the chosen trials of a run (:func:`choose`; default: the front) on the items the
    search never saw, or with ``full`` on every item, and commit each trial's result before
    the next is scored. A trial already confirmed on that set is not scored again unless
    ``again``. Returns every chosen trial's confirmation, in the order chosen.

    ``zoo``: where ``zoo:`` sources and task items live (default: the run's)."""
    from evomerge.workers.local import load_objectives

    run_dir = Path(run_dir)
    experiment, info = load_experiment(run_dir)
    zoo = zoo if zoo is not None else Path(info["zoo"]) if info.get("zoo") else None
    archive = open_archive(run_dir)
    kind = "full" if full else "holdout"
    objectives = [ob for ob in load_objectives(experiment, zoo) if ob.scored]
    ids = {ob.spec.label: _items(ob, full) for ob in objectives}
    totals = {ob.spec.label: len(_items(ob, True)) for ob in objectives}
    if not any(ids.values()):
        raise ConfirmError(
            f"{run_dir} reserved no held-out items (its experiment sets no `holdout:`); "
            "--full scores the chosen trials on every item instead"
        )
    chosen = choose(archive, trials=trials, top=top)
    if not chosen:
        raise ConfirmError(f"{run_dir}: no evaluated recipe to confirm yet")
    done = archive.confirmations(kind)
    todo = [e for e in chosen if again or e.number not in done]
    refs = _references_todo(run_dir, kind, again)
    if todo or refs:
        sources = experiment.resolved_sources(zoo, info.get("revisions"))
        scorer = _Scorer(experiment, sources, objectives, ids)
        try:
            for i, ev in enumerate(todo):
                assert ev.number is not None and ev.values is not None
                log(f"confirming trial {ev.number} on {kind} items ({i + 1} of {len(todo)})")
                t0 = time.perf_counter()
                scores = scorer.score(ev.recipe)
                c = _confirmation(archive, ev, kind, scores, ids, totals, time.perf_counter() - t0)
                archive.record_confirmation(ev.number, kind, c.to_dict())
                done[ev.number] = c.to_dict()
            if refs:
                log(f"scoring the {len(refs)} reference points on the same items")
                _confirm_references(run_dir, kind, refs, scorer)
        finally:
            scorer.close()
    return [Confirmation.from_dict(e.number or 0, kind, done[e.number or 0]) for e in chosen]


def _references_todo(run_dir: Path, kind: str, again: bool) -> list[Any]:
    """The reference points (base, sources, uniform merge) not yet scored on set ``kind``: the
    headline compares the knee with them on the same items."""
    from evomerge.run.reference_points import read_reference

    _, points = read_reference(run_dir)
    return [p for p in points if p.ok and p.recipe and (again or kind not in p.confirmed)]


def _confirm_references(run_dir: Path, kind: str, points: list[Any], scorer: _Scorer) -> None:
    """Score each reference point and store the lot in ``reference_points.json`` (five or so
    small merges: one write, after the last)."""
    from evomerge.run.reference_points import record_reference_confirmations

    results = {}
    for p in points:
        scores = scorer.score(p.recipe)
        results[p.label] = (
            {o: v for o, (v, _) in scores.items()},
            {o: se for o, (_, se) in scores.items()},
        )
    record_reference_confirmations(run_dir, kind, results)


def _items(ob: Any, full: bool) -> list[str]:
    """An objective's confirmation items: held out, or every item of its task."""
    if not full:
        return list(ob.held_out)
    if ob.lmeval is not None:
        return ob.lmeval.item_ids(ob.lmeval.tasks[0])
    return list(ob.whole_task.item_ids)


def _confirmation(
    archive: Archive,
    ev: Evaluation,
    kind: str,
    scores: dict[str, tuple[float, float | None]],
    ids: dict[str, list[str]],
    totals: dict[str, int],
    seconds: float,
) -> Confirmation:
    assert ev.values is not None and ev.number is not None
    values = dict(zip(archive.objectives, ev.values, strict=True))
    return Confirmation(
        trial=ev.number,
        kind=kind,
        recipe_hash=ev.recipe_hash,
        scores={o: v for o, (v, _) in scores.items()},
        stderr={o: se for o, (_, se) in scores.items()},
        items={o: len(ids[o]) for o in scores},
        fidelity={o: len(ids[o]) / totals[o] for o in scores},
        estimate={o: values[o] for o in scores},
        estimate_fidelity={o: ev.fidelity.get(o, 1.0) for o in scores},
        seconds=seconds,
    )


# ---------------------------------------------------------------------------------------------
# reading back


def confirmations(archive: Archive, kind: str = "holdout") -> list[Confirmation]:
    """The run's confirmations on set ``kind`` (``holdout`` or ``full``), by trial."""
    if kind not in CONFIRMATION_SETS:
        raise ConfirmError(f"confirmation set {kind!r}: choose one of {CONFIRMATION_SETS}")
    return [Confirmation.from_dict(n, kind, d) for n, d in archive.confirmations(kind).items()]


def estimator_error(archive: Archive, kind: str = "holdout") -> dict[str, dict[str, float]]:
    """What the search's estimates were off by, per scored objective, over the trials confirmed
    on set ``kind``: ``mae`` (mean |estimate − confirmed score|), ``optimism`` (the mean of
    estimate − confirmed score, :attr:`Confirmation.optimism`), ``max`` (the largest
    |estimate − confirmed score|) and ``n`` (trials). Empty before any confirmation."""
    gaps: dict[str, list[float]] = {}
    for c in confirmations(archive, kind):
        for o, g in c.optimism.items():
            gaps.setdefault(o, []).append(g)
    return {
        o: {
            "mae": float(np.mean(np.abs(g))),
            "optimism": float(np.mean(g)),
            "max": float(np.max(np.abs(g))),
            "n": float(len(g)),
        }
        for o, g in gaps.items()
    }


def confirmation_rows(archive: Archive) -> list[dict[str, Any]]:
    """One flat row per confirmed trial and objective, held-out set first, then full: what a
    report's table shows (trial, set, objective, estimate, confirmed score ± stderr, items,
    optimism)."""
    rows: list[dict[str, Any]] = []
    for kind in CONFIRMATION_SETS:
        for c in confirmations(archive, kind):
            for o, score in c.scores.items():
                rows.append(
                    {
                        "trial": c.trial,
                        "set": kind,
                        "objective": o,
                        "estimate": c.estimate[o],
                        "confirmed": score,
                        "stderr": c.stderr.get(o),
                        "items": c.items.get(o),
                        "optimism": c.optimism[o],
                    }
                )
    return rows

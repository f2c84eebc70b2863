"""The in-process worker: sources stay open, one engine stays resident (the experiment's
``workers.engine``: transformers or vLLM), and each candidate is merged in memory and swapped
into it. Nothing is written to disk per candidate."""

from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import EvomergeError
from evomerge.evaluate.calibrate import build_calibration, calibration_models
from evomerge.evaluate.estimators import (
    Estimate,
    Estimator,
    EstimatorError,
    check_estimator,
    make_estimator,
)
from evomerge.evaluate.holdout import HoldoutError, split_items
from evomerge.evaluate.resident import Resident
from evomerge.evaluate.scoring import PreparedTask, prepare, score_prepared
from evomerge.evaluate.select import RecipeEngine, load_candidate
from evomerge.evaluate.tasks import Task, load_task
from evomerge.experiment import Experiment, ObjectiveSpec
from evomerge.killpoints import kill_point
from evomerge.merge.chunked import serial
from evomerge.merge.materialize import MergePlan, materialize
from evomerge.merge.methods import warm_up
from evomerge.objectives import direction_of, gains, maximized
from evomerge.recipe import Recipe
from evomerge.workers.base import Evaluation, WorkerBase
from evomerge.workers.faults import classify, fault, free_memory
from evomerge.workers.halving import Rung
from evomerge.workers.promotion import should_promote


@dataclass
class _Objective:
    spec: ObjectiveSpec
    task: Task | None
    estimator: Estimator | None
    item_ids: list[str]
    prepared: PreparedTask | None = None  # the chosen items' requests, tokenized once
    prepared_full: PreparedTask | None = None  # every item's, made on the first promotion
    lmeval: Any = None  # an LMEvalObjective holding one task
    all_ids: list[str] | None = None  # lm-eval: the search's items (all but the held-out ones)
    # items kept from the search (experiment `holdout:`), and the task with them (fitness
    # tasks; ``task`` then holds only the search's items): what `evomerge confirm` scores
    held_out: list[str] = field(default_factory=list)
    whole_task: Task | None = None
    # successive halving: requests prepared per item set (a rung's new items, or all of them)
    prepared_sets: dict[tuple[str, ...], PreparedTask] = field(default_factory=dict)

    @property
    def direction(self) -> str:
        if self.lmeval is not None:
            return self.spec.direction or self.lmeval.direction(self.lmeval.tasks[0])
        if self.task is None:
            return "minimize"  # costs
        return direction_of(self.task.higher_is_better)

    @property
    def metric(self) -> str | None:
        if self.lmeval is not None:
            return self.spec.metric or "acc"
        return self.task.metric if self.task else None

    @property
    def scored(self) -> bool:
        return self.task is not None or self.lmeval is not None


def load_objectives(experiment: Experiment, zoo: Path | None) -> list[_Objective]:
    """Tasks and estimators, all checked before any model is opened."""
    out = []
    for o in experiment.objectives:
        if o.cost is not None:
            out.append(_Objective(o, None, None, []))
            continue
        if o.lmeval is not None:
            from evomerge.evaluate.lmeval import LMEvalError, LMEvalObjective

            lm = LMEvalObjective([o.lmeval], include_path=o.include_path, metric=o.metric)
            if len(lm.tasks) != 1:
                raise LMEvalError(
                    f"objective {o.label!r}: {o.lmeval!r} is a group of {len(lm.tasks)} tasks; "
                    "name one task per objective"
                )
            est = make_estimator(o.estimator, experiment.seed)
            ids, held = _split(experiment, o, lm.tasks[0], lm.item_ids(lm.tasks[0]), est)
            out.append(_Objective(o, None, est, [], lmeval=lm, all_ids=ids, held_out=held))
            continue
        assert o.task is not None
        whole = load_task(o.task, zoo=zoo)
        est = make_estimator(o.estimator, experiment.seed)
        check_estimator(est, whole.metric, whole.unit_metric, o.label)  # IRT: scores in [0, 1]
        ids, held = _split(experiment, o, whole.name, whole.item_ids, est)
        task = whole.only(ids) if held else whole  # the search sees nothing else of the task
        out.append(_Objective(o, task, est, [], held_out=held, whole_task=whole))
    return out


_Merged = tuple[list[tuple[str, torch.Tensor]], float]  # a prefetch: the tensors, its seconds


def _core_and_memory_to_spare(model_bytes: int) -> bool:
    """Whether a background merge would not slow the engine: a core its threads leave free,
    and room for two more models in a quarter of the memory available."""
    if torch.get_num_threads() >= (os.cpu_count() or 1):
        return False
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not a POSIX system that says
        return False
    return 2 * model_bytes <= free // 4


def _split(
    experiment: Experiment, o: ObjectiveSpec, task: str, ids: list[str], est: Estimator
) -> tuple[list[str], list[str]]:
    """(the search's items, the held-out ones) of an objective; every item and none held out
    without a holdout. A holdout that keeps nothing, or too little for the estimator, is
    refused here, before any model is opened."""
    ho = experiment.holdout_of(o)
    if ho is None:
        return ids, []
    pool, held = split_items(task, ids, *ho)
    if not held or not pool:
        what = "no item" if not held else "every item"
        raise HoldoutError(
            f"objective {o.label!r}: holdout {ho[0]} of task {task!r}'s {len(ids)} items holds "
            f"out {what}; change the fraction"
        )
    if est.k is not None and est.k > len(pool):
        raise EstimatorError(
            f"objective {o.label!r}: {est.spec} asks for {est.k} items but {len(pool)} of "
            f"task {task!r}'s {len(ids)} are left to the search after the holdout"
        )
    return pool, held


class LocalWorker(WorkerBase):
    name = "local"

    def __init__(
        self,
        experiment: Experiment,
        sources: dict[str, str],
        *,
        zoo: Path | None = None,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        w = experiment.workers
        self.experiment, self.log = experiment, log
        self.objectives = load_objectives(experiment, zoo)
        self._scored: dict[str, set[str]] = {}  # item ids scored per objective, this candidate
        self.resident = Resident(
            w, sources, base=experiment.base, tokenizer_source=experiment.tokenizer_source
        )
        self.sources, self.engine = self.resident.sources, self.resident.engine
        self.device = w.device
        tensor_cpu = (
            not isinstance(self.engine, RecipeEngine) and torch.device(w.device).type == "cpu"
        )
        if tensor_cpu:
            warm_up()  # the merge kernels' one-off load: not the first candidate's cost
        self.prefetches = tensor_cpu and (
            w.prefetch
            if w.prefetch is not None
            else _core_and_memory_to_spare(
                self.sources[experiment.base or next(iter(sources))].total_bytes
            )
        )
        self._prefetch: tuple[str, Future[_Merged]] | None = None
        self._prefetcher: ThreadPoolExecutor | None = None
        calib_models = calibration_models(sources, experiment.base)
        for ob in self.objectives:
            if ob.lmeval is not None and ob.estimator is not None and ob.all_ids is not None:
                if ob.estimator.needs_calibration:
                    raise EvomergeError(
                        f"objective {ob.spec.label!r}: anchor/IRT estimators need a calibration "
                        "set; for lm-eval objectives use full or subsample:K"
                    )
                ob.item_ids = ob.estimator.select(ob.all_ids)
                continue
            if ob.estimator is None or ob.task is None:
                continue
            if ob.estimator.needs_calibration:
                ob.estimator.calibrate(
                    build_calibration(
                        self.engine, ob.task, calib_models, seed=experiment.seed, log=log
                    )
                )
            ob.item_ids = ob.estimator.select(ob.task.item_ids)  # the same items for everyone
            ob.prepared = prepare(self.engine, ob.task, ob.item_ids)

    def close(self) -> None:
        """Release the engine (vLLM: shut its processes down and free their memory)."""
        self._prefetch = None
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True, cancel_futures=True)
            self._prefetcher = None
        self.resident.close()

    def evaluate(
        self,
        recipe: Recipe,
        genome: Sequence[float],
        front: Sequence[Sequence[float]] = (),
        *,
        rung: Rung | None = None,
        then: Recipe | None = None,
    ) -> Evaluation:
        """Merge, swap, score (at ``rung``'s items under successive halving). Errors of the
        candidate itself (bad values, NaN weights or scores, a model the engine cannot hold)
        come back as a failed Evaluation; the run goes on. Errors of the system (out of memory,
        a source file gone, a bug) raise :class:`~evomerge.workers.faults.WorkerFault` after
        one retry where it may help.

        ``then``: the candidate the caller evaluates next. Where :attr:`prefetches`, it is
        merged in a background thread while this one is scored, and its evaluation streams
        those tensors (its merge's errors surface there, classified as they would be)."""
        timings: dict[str, float] = {}
        ev = Evaluation(
            recipe.content_hash(),
            recipe.to_yaml(),
            [float(g) for g in genome],
            None,
            worker=self.name,
        )
        t_all = time.perf_counter()
        self._scored = {}
        for attempt in (1, 2):
            try:
                self._check_sources()
                results = self._merge_and_score(
                    recipe, front, timings, rung, then if attempt == 1 else None
                )
            except Exception as e:
                kind = classify(e)
                if kind == "candidate":
                    ev.status, ev.error = "failed", _candidate_error(e)
                    break
                if kind == "retry" and attempt == 1:
                    self.log(
                        f"{type(e).__name__} on {recipe.content_hash()}: freeing memory, retry"
                    )
                    free_memory()
                    continue
                raise fault(e, retried=attempt > 1) from e
            ev.values = [r.value if isinstance(r, Estimate) else float(r) for r in results]
            bad = [
                f"{ob.spec.label} = {v}"
                for ob, v in zip(self.objectives, ev.values, strict=True)
                if not math.isfinite(v)
            ]
            if bad:
                ev.status, ev.error = "failed", f"NonFiniteScore: {', '.join(bad)}"
                ev.values = None
            for ob, r in zip(self.objectives, results, strict=True):
                if isinstance(r, Estimate):
                    ev.fidelity[ob.spec.label] = r.fidelity
                    ev.stderr[ob.spec.label] = r.stderr
            break
        self._settle_prefetch()
        timings["total"] = time.perf_counter() - t_all
        ev.timings = timings
        ev.scored_items = {k: sorted(v) for k, v in self._scored.items()}
        return ev

    def _merge_and_score(
        self,
        recipe: Recipe,
        front: Sequence[Sequence[float]],
        timings: dict[str, float],
        rung: Rung | None = None,
        then: Recipe | None = None,
    ) -> list[Estimate | float]:
        t0 = time.perf_counter()
        mp = self.plan(recipe)
        merged = self._prefetched(recipe, timings)
        timings["plan"] = time.perf_counter() - t0 - timings.get("prefetch_wait", 0.0)
        # hf: merge and swap timed apart; vllm: one "load" (the merge runs in its workers),
        # plus "rebuilds"/"rebuild" when the recipe's depth needed a new model
        timings.update(
            load_candidate(
                self.engine,
                recipe,
                plan=mp,
                sources=self.sources,
                device=self.device,
                merged=merged,
            )
        )
        del merged
        if then is not None and self.prefetches:
            self._start_prefetch(then)
        if rung is not None:
            return self._score_rung(mp, rung, timings)
        results = self._score(mp, self.objectives, timings)
        if self.experiment.promotion.enabled and should_promote(
            self._oriented(results),
            [self._oriented_values(f) for f in front],
            self.experiment.promotion.margin,
            self.experiment.promotion.z,
        ):
            results = self._promote(mp, results, timings)
        return results

    # -- prefetch: the next candidate merged while this one is scored ---------------------------
    def _start_prefetch(self, recipe: Recipe) -> None:
        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="evomerge-prefetch")

        def merge() -> _Merged:
            t0 = time.perf_counter()
            self._check_sources()  # as before an in-place merge
            with serial():  # one core: the engine has the others
                out = list(materialize(self.plan(recipe), self.device))
            return out, time.perf_counter() - t0

        self._prefetch = (recipe.content_hash(), self._prefetcher.submit(merge))

    def _check_sources(self) -> None:
        """Before any read of the sources: a truncated memory map would kill the process."""
        for src in self.sources.values():
            src.check_unchanged()

    def _settle_prefetch(self) -> None:
        """Wait for the merge ahead to finish before handing back: the sources' memory maps are
        then read only within :meth:`evaluate`, never while the caller runs (a file truncated
        between two candidates is caught by ``check_unchanged``, not by SIGBUS in a background
        read). Scoring is the longer part, so the wait is mostly nil; its error, if any, is
        raised by the evaluation that uses it."""
        if self._prefetch is not None:
            wait([self._prefetch[1]])

    def _prefetched(
        self, recipe: Recipe, timings: dict[str, float]
    ) -> list[tuple[str, torch.Tensor]] | None:
        """The tensors merged ahead for ``recipe`` (waiting for them if need be), or None.
        A merge error raises here, where the merge would have raised."""
        pending, self._prefetch = self._prefetch, None
        if pending is None or pending[0] != recipe.content_hash():
            return None
        t0 = time.perf_counter()
        merged, seconds = pending[1].result()
        timings["prefetch_wait"] = time.perf_counter() - t0
        timings["merge_background"] = seconds
        return merged

    def _item_scores(
        self, ob: _Objective, *, full: bool = False
    ) -> tuple[dict[str, float], list[str]]:
        """Per-item scores of the resident weights on the objective's chosen items (or all of
        the search's), and the ids of the search's full set. Fitness requests are tokenized
        once per run. The ids scored are noted for the archive (``Evaluation.scored_items``)."""
        if ob.lmeval is not None:
            assert ob.all_ids is not None
            name, ids = ob.lmeval.tasks[0], ob.all_ids if full else ob.item_ids
            scores = ob.lmeval.evaluate(self.engine, items={name: ids}, per_item=True)[name].scores
            self._scored.setdefault(ob.spec.label, set()).update(scores)
            return scores, ob.all_ids
        assert ob.task is not None
        if full and ob.prepared_full is None:  # promotions are rare: prepared on first use
            ob.prepared_full = prepare(self.engine, ob.task)
        prep = ob.prepared_full if full else ob.prepared
        assert prep is not None
        scores = score_prepared(self.engine, prep).scores
        self._scored.setdefault(ob.spec.label, set()).update(scores)
        return scores, ob.task.item_ids

    def _score(
        self, mp: MergePlan, objectives: Iterable[_Objective], timings: dict[str, float]
    ) -> list[Estimate | float]:
        out: list[Estimate | float] = []
        for ob in objectives:
            if not ob.scored:
                out.append(_cost(mp, ob.spec.cost))
                continue
            assert ob.estimator is not None
            kill_point("score")
            t0 = time.perf_counter()
            scores, all_ids = self._item_scores(ob)
            t1 = time.perf_counter()
            out.append(ob.estimator.estimate(scores, all_ids))
            key = f"score:{ob.spec.label}"
            timings[key] = timings.get(key, 0.0) + t1 - t0
            timings["estimate"] = timings.get("estimate", 0.0) + time.perf_counter() - t1
        return out

    def _score_rung(
        self, mp: MergePlan, rung: Rung, timings: dict[str, float]
    ) -> list[Estimate | float]:
        """Successive halving: each task's first ``rung.items`` items of its seeded order (the
        items a ``subsample:K`` of the run's seed selects; all of them from K = the task's size
        on), scoring only those ``rung.scores`` lacks. ``timings["items"]`` counts the items
        scored, ``timings["rung"]`` is the rung."""
        out: list[Estimate | float] = []
        scored = 0
        for ob in self.objectives:
            if not ob.scored:
                out.append(_cost(mp, ob.spec.cost))
                continue
            assert ob.task is not None
            ids = ob.task.item_ids
            k = min(rung.items, len(ids))
            est = make_estimator(
                "full" if k == len(ids) else f"subsample:{k}", self.experiment.seed
            )
            chosen = est.select(ids)
            have = rung.scores.setdefault(ob.spec.label, {})
            todo = tuple(i for i in chosen if i not in have)
            if todo:
                kill_point("score")
                t0 = time.perf_counter()
                prep = ob.prepared_sets.get(todo)
                if prep is None:
                    prep = ob.prepared_sets[todo] = prepare(self.engine, ob.task, list(todo))
                have.update(score_prepared(self.engine, prep).scores)
                key = f"score:{ob.spec.label}"
                timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
                scored += len(todo)
            out.append(est.estimate(have, ids))
        timings["items"] = float(scored)
        timings["rung"] = float(rung.index)
        return out

    def _promote(
        self, mp: MergePlan, results: list[Estimate | float], timings: dict[str, float]
    ) -> list[Estimate | float]:
        out = list(results)
        for i, (ob, r) in enumerate(zip(self.objectives, results, strict=True)):
            if not (isinstance(r, Estimate) and r.fidelity < 1.0):
                continue
            t0 = time.perf_counter()
            scores, all_ids = self._item_scores(ob, full=True)
            timings[f"score:{ob.spec.label}"] += time.perf_counter() - t0
            out[i] = make_estimator("full").estimate(scores, all_ids)
        timings["promoted"] = 1.0
        return out

    def _oriented(self, results: Sequence[Estimate | float]) -> list[Estimate | float]:
        """Promotion reasons with maximized objectives: minimized ones are negated."""
        out: list[Estimate | float] = []
        for ob, r in zip(self.objectives, results, strict=True):
            if maximized(ob.direction):
                out.append(r)
            elif isinstance(r, Estimate):
                out.append(Estimate(-r.value, r.items_used, r.n_items, r.stderr, r.estimator))
            else:
                out.append(-float(r))
        return out

    def _oriented_values(self, values: Sequence[float]) -> list[float]:
        return gains(values, [ob.direction for ob in self.objectives])


def _candidate_error(e: BaseException) -> str:
    if isinstance(e, EvomergeError):
        return f"{type(e).__name__}: {e}"
    return f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"  # torch's, of a candidate


def _cost(mp: MergePlan, cost: str | None) -> float:
    if cost == "layers":
        return float(mp.num_layers)
    ref = next(iter(mp.sources.values()))
    return float(sum(ref.tensors[j.src_name].numel for j in mp.jobs))

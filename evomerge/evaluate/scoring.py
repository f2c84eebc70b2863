"""Scoring a task through any engine: requests built (tokenized once), sent, turned into
per-item scores. A search scores the same items for every candidate, so requests are prepared
once (:func:`prepare`) and replayed for each new set of weights (:func:`score_prepared`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evomerge.evaluate.engines import Engine
from evomerge.evaluate.tasks import (
    _LOWER_IS_BETTER,
    GenerationRequest,
    LoglikelihoodRequest,
    Task,
    TaskResult,
)


@dataclass(frozen=True)
class PreparedTask:
    """A task's requests, tokenized once: a search scores the same items for every candidate."""

    task: Task
    items: list[Any]
    generation: list[GenerationRequest]
    loglikelihood: list[LoglikelihoodRequest]
    per_item: list[int]  # loglikelihood requests per item


def prepare(engine: Engine, task: Task, item_ids: Sequence[str] | None = None) -> PreparedTask:
    items = task.items if item_ids is None else task.subset(item_ids)
    if task.spec.kind == "generate":
        reqs = task.generation_requests(engine.tokenizer, items, engine.max_length)
        return PreparedTask(task, items, list(reqs), [], [])
    per_item = task.loglikelihood_requests(engine.tokenizer, items, engine.max_length)
    flat = [r for reqs in per_item for r in reqs]
    return PreparedTask(task, items, [], flat, [len(r) for r in per_item])


def score_prepared(engine: Engine, prep: PreparedTask) -> TaskResult:
    """Per-item scores of the engine's current weights on prepared requests."""
    task = prep.task
    if task.spec.kind != "generate":
        return score_prepared_metrics(engine, prep, [task.metric])[task.metric]
    scores = {}
    for it, text in zip(prep.items, engine.generate(prep.generation), strict=True):
        scores[it.id] = task.score_generation(it, text)
    return TaskResult(task.name, task.metric, task.higher_is_better, scores)


def score_prepared_metrics(
    engine: Engine, prep: PreparedTask, metrics: Sequence[str]
) -> dict[str, TaskResult]:
    """A loglikelihood task's per-item scores under several of its kind's metrics from one pass
    (a judge reporting exact match beside the smooth signal a search used)."""
    task = prep.task
    if task.spec.kind == "generate":
        raise ValueError(f"{task.origin}: a generate task has one metric; score it alone")
    results = engine.loglikelihood(prep.loglikelihood)
    out = {}
    for m in metrics:
        rows, scores = iter(results), {}
        for it, n in zip(prep.items, prep.per_item, strict=True):
            scores[it.id] = task.score_loglikelihood(it, [next(rows) for _ in range(n)], metric=m)
        higher = task.higher_is_better if m == task.metric else m not in _LOWER_IS_BETTER
        out[m] = TaskResult(task.name, m, higher, scores)
    return out


def score_task(engine: Engine, task: Task, item_ids: Sequence[str] | None = None) -> TaskResult:
    """Per-item scores of the engine's current weights on ``task`` (all items, or ``item_ids``)."""
    return score_prepared(engine, prepare(engine, task, item_ids))


def timed_score(
    engine: Engine, task: Task, item_ids: Sequence[str] | None = None
) -> tuple[TaskResult, float]:
    t0 = time.perf_counter()
    res = score_task(engine, task, item_ids)
    return res, time.perf_counter() - t0

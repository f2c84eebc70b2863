"""The engine protocol, and scoring a task through any engine.

An engine stays resident: it is built once, candidate weights are swapped into it in place
(``load_weights``), and it answers batched, deterministic requests. The transformers engine
(:mod:`evomerge.evaluate.hf`) is the embedded default; vLLM (:mod:`evomerge.evaluate.vllm`) is the
GPU one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from evomerge.evaluate.tasks import (
    GenerationRequest,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    Task,
    TaskResult,
)


@runtime_checkable
class Engine(Protocol):
    tokenizer: Any
    max_length: int

    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy a full state (HF names) into the resident model, in place."""

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        """Sum of log-probabilities of each continuation after its context."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Greedy completions, cut at the first stop string."""


def score_task(engine: Engine, task: Task, item_ids: Sequence[str] | None = None) -> TaskResult:
    """Per-item scores of the engine's current weights on ``task`` (all items, or ``item_ids``)."""
    items = task.items if item_ids is None else task.subset(item_ids)
    scores: dict[str, float] = {}
    if task.spec.kind == "generate":
        reqs = task.generation_requests(engine.tokenizer, items, engine.max_length)
        for it, text in zip(items, engine.generate(reqs), strict=True):
            scores[it.id] = task.score_generation(it, text)
    else:
        per_item = task.loglikelihood_requests(engine.tokenizer, items, engine.max_length)
        flat = [r for reqs in per_item for r in reqs]
        results = iter(engine.loglikelihood(flat))
        for it, reqs in zip(items, per_item, strict=True):
            scores[it.id] = task.score_loglikelihood(it, [next(results) for _ in reqs])
    return TaskResult(task.name, task.metric, task.higher_is_better, scores)


def timed_score(
    engine: Engine, task: Task, item_ids: Sequence[str] | None = None
) -> tuple[TaskResult, float]:
    t0 = time.perf_counter()
    res = score_task(engine, task, item_ids)
    return res, time.perf_counter() - t0

"""Scoring the zoo's models through the same tasks, engine and scoring code as every fitness
objective (:mod:`evomerge.evaluate.tasks`, :class:`~evomerge.evaluate.hf.HFEngine`,
:mod:`evomerge.evaluate.scoring`), so the figures zoo.json records are those the search sees.

A zoo item becomes an item of a ``logprob`` task shaped like ``fitness/<task>.yaml``: the prompt,
then the answer and eos as the reference (:func:`zoo_task`). One teacher-forced pass gives all
three figures: token accuracy (share of the answer's tokens, eos included, that are the argmax),
mean log-probability, and exact match: every one of those tokens is the argmax, which is exactly
when greedy decoding yields the answer and then eos. Exact match is what users care about but is
brittle under merging; token accuracy and log-probability move smoothly: the search signals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from evomerge.evaluate.engines import Engine
from evomerge.evaluate.hf import HFEngine
from evomerge.evaluate.scoring import prepare
from evomerge.evaluate.tasks import Item, Task, TaskSpec
from evomerge.zoo.skills import TaskItem, as_items

ItemLike = TaskItem | dict[str, str]


@dataclass(frozen=True)
class TeacherForced:
    """Per-item teacher-forced scores: share of answer tokens (eos included) predicted right,
    the mean log-probability of those tokens, and whether all of them were (greedy exact match)."""

    token_accuracy: list[float]
    mean_logprob: list[float]
    exact_match: list[float]


def zoo_task(name: str, items: Sequence[ItemLike], chat: bool = False) -> Task:
    """Zoo items as a task of ``fitness/<name>.yaml``'s shape: ``logprob`` kind, token accuracy,
    the answer followed by eos as the reference; ``chat``: prompts go through the tokenizer's
    chat template (the real-model zoo)."""
    spec = TaskSpec(
        name=name,
        kind="logprob",
        items=f"zoo:tasks/{name}.jsonl",
        prompt="{prompt}",
        target="{answer}",
        append_eos=True,
        metric="token_accuracy",
        chat=chat,
    )
    rows = [Item(id=it.id, prompt=it.prompt, answer=it.answer) for it in as_items(items)]
    return Task(spec, rows, origin=f"zoo task {name}")


def model_engine(model: torch.nn.Module, tokenizer: Any, batch_size: int = 256) -> HFEngine:
    """An engine holding a copy of an in-memory model (nothing is written to disk)."""
    return HFEngine.from_model(model, tokenizer, batch_size=batch_size)


def engine_scores(
    engine: Engine, items: Sequence[ItemLike], name: str = "zoo", chat: bool = False
) -> TeacherForced:
    """The resident weights' teacher-forced scores on zoo items, from one forward pass each."""
    if not items:
        return TeacherForced([], [], [])
    task = zoo_task(name, items, chat)
    prep = prepare(engine, task)
    results = engine.loglikelihood(prep.loglikelihood)  # one request per item
    return TeacherForced(
        [task.score_loglikelihood(it, [r]) for it, r in zip(prep.items, results, strict=True)],
        [r.logprob / r.n_tokens for r in results],
        [float(r.is_greedy) for r in results],
    )


def teacher_forced_scores(
    model: torch.nn.Module, tokenizer: Any, items: Sequence[ItemLike], batch_size: int = 256
) -> TeacherForced:
    """Per-item scores of a model in memory on `prompt answer </s>`, scoring the answer and eos."""
    if not items:
        return TeacherForced([], [], [])
    return engine_scores(model_engine(model, tokenizer, batch_size), items)


def exact_match_scores(
    model: torch.nn.Module, tokenizer: Any, items: Sequence[ItemLike], batch_size: int = 256
) -> list[float]:
    """Per item 1.0 if greedy decoding yields exactly the answer followed by eos, else 0.0."""
    return teacher_forced_scores(model, tokenizer, items, batch_size).exact_match


def evaluate_exact_match(
    model: torch.nn.Module, tokenizer: Any, items: Sequence[ItemLike], batch_size: int = 256
) -> float:
    """Share of items whose greedy generation is exactly the answer (then eos)."""
    return _mean(exact_match_scores(model, tokenizer, items, batch_size))


def evaluate_token_accuracy(
    model: torch.nn.Module, tokenizer: Any, items: Sequence[ItemLike], batch_size: int = 256
) -> float:
    """Mean over items of the teacher-forced share of answer tokens (eos included) predicted."""
    return _mean(teacher_forced_scores(model, tokenizer, items, batch_size).token_accuracy)


def _mean(scores: list[float]) -> float:
    return sum(scores) / len(scores) if scores else 0.0

"""Scoring a causal LM on prompt/answer items: greedy exact match and teacher-forced accuracy.

Exact match is what users care about but is brittle under merging; teacher-forced token accuracy
and the answer's mean log-probability need one forward pass and move smoothly, which makes them
the better search signals. Items are batched by length so that no batch needs padding on the left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from evomerge.zoo.skills import TaskItem, as_items

ItemLike = TaskItem | dict[str, str]


@dataclass(frozen=True)
class TeacherForced:
    """Per-item teacher-forced scores: share of answer tokens (eos included) predicted right,
    and the mean log-probability of those tokens."""

    token_accuracy: list[float]
    mean_logprob: list[float]


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by equal length, each group cut into batches of at most `batch_size`."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    return [
        idx[k : k + batch_size]
        for _, idx in sorted(groups.items())
        for k in range(0, len(idx), batch_size)
    ]


@torch.inference_mode()
def exact_match_scores(
    model: torch.nn.Module, tokenizer: Any, items: Sequence[ItemLike], batch_size: int = 256
) -> list[float]:
    """Per item 1.0 if greedy decoding yields exactly the answer followed by eos, else 0.0."""
    rows = as_items(items)
    if not rows:
        return []
    eos = tokenizer.eos_token_id
    device = _device(model)
    prompts = _encode(tokenizer, [r.prompt for r in rows])
    answers = [[*ids, eos] for ids in _encode(tokenizer, [r.answer for r in rows])]
    scores = [0.0] * len(rows)
    was_training = model.training
    model.eval()
    for batch in _length_batches([len(p) for p in prompts], batch_size):
        ids = torch.tensor([prompts[i] for i in batch], device=device)
        want_len = [len(answers[i]) for i in batch]
        width = max(want_len)
        want = torch.full((len(batch), width), -1, dtype=torch.long, device=device)
        for row, i in enumerate(batch):
            want[row, : want_len[row]] = torch.tensor(answers[i], device=device)
        lengths = torch.tensor(want_len, device=device)
        alive = torch.ones(len(batch), dtype=torch.bool, device=device)
        done = torch.zeros(len(batch), dtype=torch.bool, device=device)
        out = model(input_ids=ids, use_cache=True)
        for t in range(width):
            nxt = out.logits[:, -1, :].argmax(dim=-1)
            alive &= (nxt == want[:, t]) | done
            done |= t + 1 == lengths
            if not bool((alive & ~done).any()):
                break
            out = model(input_ids=nxt[:, None], past_key_values=out.past_key_values, use_cache=True)
        for row, i in enumerate(batch):
            scores[i] = float(alive[row] and done[row])
    model.train(was_training)
    return scores


@torch.inference_mode()
def teacher_forced_scores(
    model: torch.nn.Module, tokenizer: Any, items: Sequence[ItemLike], batch_size: int = 256
) -> TeacherForced:
    """One forward pass per batch over `prompt answer </s>`; scores only the answer and eos."""
    rows = as_items(items)
    eos = tokenizer.eos_token_id
    device = _device(model)
    prompts = _encode(tokenizer, [r.prompt for r in rows])
    answers = [[*ids, eos] for ids in _encode(tokenizer, [r.answer for r in rows])]
    seqs = [p + a for p, a in zip(prompts, answers, strict=True)]
    acc = [0.0] * len(rows)
    logp = [0.0] * len(rows)
    was_training = model.training
    model.eval()
    for batch in _length_batches([len(s) for s in seqs], batch_size):
        ids = torch.tensor([seqs[i] for i in batch], device=device)
        logits = model(input_ids=ids).logits.float()
        for row, i in enumerate(batch):
            start = len(prompts[i]) - 1
            target = ids[row, start + 1 :]
            pred = logits[row, start:-1]
            acc[i] = (pred.argmax(-1) == target).float().mean().item()
            logp[i] = -F.cross_entropy(pred, target).item()
    model.train(was_training)
    return TeacherForced(acc, logp)


def evaluate_exact_match(
    model: torch.nn.Module, tokenizer: Any, items: Sequence[ItemLike], batch_size: int = 256
) -> float:
    """Share of items whose greedy generation is exactly the answer (then eos)."""
    scores = exact_match_scores(model, tokenizer, items, batch_size)
    return sum(scores) / len(scores) if scores else 0.0


def evaluate_token_accuracy(
    model: torch.nn.Module, tokenizer: Any, items: Sequence[ItemLike], batch_size: int = 256
) -> float:
    """Mean over items of the teacher-forced share of answer tokens (eos included) predicted."""
    scores = teacher_forced_scores(model, tokenizer, items, batch_size).token_accuracy
    return sum(scores) / len(scores) if scores else 0.0

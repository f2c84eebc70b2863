"""Full fine-tuning of a pretrained chat model on one skill, on the CPU, resumable.

Each batch is a pure function of (skill, seed, step) (:func:`~.chat_skills.training_pairs`), so a
run killed at step k and resumed from its last checkpoint takes the same steps the uninterrupted
run would have. The loss covers the answer and the end-of-turn token only, and the vocabulary
projection runs on those positions alone: with SmolLM2's 49k-token head that saves a fifth of a
step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from evomerge.zoo.chat_skills import training_pairs
from evomerge.zoo.train import optimizer_step

IGNORE = -100


@dataclass(frozen=True)
class FineTunePlan:
    """How long and how fast; everything a fine-tune depends on besides the seed."""

    steps: int
    lr: float
    batch_size: int = 16
    warmup: int = 5
    checkpoint_every: int = 25


def render(tokenizer: Any, question: str) -> str:
    """A question as the model is prompted: one user turn through its chat template."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def collate(
    tokenizer: Any, pairs: Sequence[tuple[str, str]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, and next-token targets (IGNORE except where the next
    token is part of the answer or the end-of-turn token that closes it).

    Prompt and answer are tokenized apart, as the fitness tasks score them
    (:meth:`evomerge.evaluate.tasks.Task.loglikelihood_requests`)."""
    eos = tokenizer.eos_token_id
    seqs = []
    for question, answer in pairs:
        prompt = tokenizer(render(tokenizer, question), add_special_tokens=False)["input_ids"]
        reply = tokenizer(answer, add_special_tokens=False)["input_ids"] + [eos]
        seqs.append((prompt, reply))
    width = max(len(p) + len(r) for p, r in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    targets = torch.full_like(ids, IGNORE)
    for row, (prompt, reply) in enumerate(seqs):
        n = len(prompt) + len(reply)
        ids[row, :n] = torch.tensor(prompt + reply)
        mask[row, :n] = 1
        # position t predicts token t+1: the answer's tokens are predicted from len(prompt)-1 on
        targets[row, len(prompt) - 1 : n - 1] = torch.tensor(reply)
    return ids, mask, targets


def answer_loss(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens; logits only where a target is."""
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    where = targets != IGNORE
    logits = model.lm_head(hidden[where])
    return F.cross_entropy(logits.float(), targets[where])


def _lr_factor(plan: FineTunePlan, step: int) -> float:
    if step < plan.warmup:
        return (step + 1) / plan.warmup
    return max(0.0, (plan.steps - step) / max(1, plan.steps - plan.warmup))


def fine_tune(
    model: Any,
    tokenizer: Any,
    skill: str,
    plan: FineTunePlan,
    seed: int,
    *,
    checkpoint: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> float:
    """Train `model` in place on `skill` (AdamW, no weight decay, warm-up then linear decay,
    clip 1.0); return the mean loss of the last tenth of the steps run here.

    With `checkpoint`, the model, optimizer and step are saved there every
    ``plan.checkpoint_every`` steps, and a checkpoint found there at the start is resumed.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=plan.lr, betas=(0.9, 0.98), weight_decay=0.0)
    start = 0
    if checkpoint is not None and Path(checkpoint).is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        start = int(saved["step"])
        if log:
            log(f"{skill}: resuming at step {start}/{plan.steps}")
    model.train()
    tail: list[float] = []
    t0 = time.perf_counter()
    every = max(1, plan.steps // 10)
    for step in range(start, plan.steps):
        for group in opt.param_groups:
            group["lr"] = plan.lr * _lr_factor(plan, step)
        batch = collate(tokenizer, training_pairs(skill, seed, step, plan.batch_size))
        value = optimizer_step(model, opt, answer_loss(model, *batch), skill, step)
        if step >= plan.steps - max(1, plan.steps // 10):
            tail.append(value)
        done = step + 1
        if checkpoint is not None and (done % plan.checkpoint_every == 0) and done < plan.steps:
            _save_checkpoint(Path(checkpoint), model, opt, done)
        if log and (done % every == 0 or done == plan.steps):
            elapsed = time.perf_counter() - t0
            log(f"{skill} step {done}/{plan.steps} loss {value:.4f} ({elapsed:.0f}s)")
    model.eval()
    return sum(tail) / len(tail) if tail else float("nan")


def _save_checkpoint(path: Path, model: Any, opt: torch.optim.Optimizer, step: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)
    os.replace(tmp, path)

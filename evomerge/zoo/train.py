"""Model shape and the training loop of the zoo (CPU, seeded, loss on the answer tokens only)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from evomerge.zoo.skills import sample_mixture
from evomerge.zoo.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB

_CHAR_IDS = {tok: i for i, tok in enumerate(VOCAB)}
IGNORE = -100


@dataclass(frozen=True)
class ModelShape:
    """The Llama hyper-parameters that matter at this size."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256
    max_positions: int = 64


@dataclass(frozen=True)
class TrainPlan:
    """One training run: which tasks in which shares, for how long, how fast."""

    weights: Mapping[str, float]
    steps: int
    lr: float
    batch_size: int = 64
    warmup: int = 50


ARCHES = ("llama", "qwen2")


def new_model(shape: ModelShape, seed: int, arch: str = "llama") -> PreTrainedModel:
    """A freshly initialised model of family ``arch`` for the zoo's vocabulary.

    - ``llama``: LlamaForCausalLM, untied embeddings (as Llama 2/3 7B+ checkpoints).
    - ``qwen2``: Qwen2ForCausalLM (q/k/v projections carry biases), **tied** embeddings: the
      small Qwen2 checkpoints people merge (0.5B, 1.5B) tie theirs, and the Llama zoo already
      covers the untied case, so this family exercises one tensor under two names (the
      transformers engine's aliases, vLLM skipping ``lm_head.weight``, merged checkpoints
      that store it once) on top of the biases.
    """
    common = dict(
        vocab_size=len(VOCAB),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        max_position_embeddings=shape.max_positions,
        rms_norm_eps=1e-5,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    if arch == "llama":
        config: LlamaConfig | Qwen2Config = LlamaConfig(**common, tie_word_embeddings=False)
        cls: type[PreTrainedModel] = LlamaForCausalLM
    elif arch == "qwen2":
        config = Qwen2Config(**common, tie_word_embeddings=True, use_sliding_window=False)
        cls = Qwen2ForCausalLM
    else:
        raise ValueError(f"unknown zoo architecture {arch!r}; choose one of {list(ARCHES)}")
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = cls(config)
    model.generation_config = generation_config()
    return model.float()


def generation_config() -> GenerationConfig:
    """Greedy decoding that stops at eos; answers are short."""
    return GenerationConfig(
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        do_sample=False,
        max_new_tokens=24,
    )


def encode(text: str) -> list[int]:
    """Character ids, identical to the saved tokenizer's (checked by the tests), but faster."""
    return [_CHAR_IDS[c] for c in text]


def collate(pairs: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded `prompt answer </s>` ids and next-token targets (-100 except on the answer).

    Right padding needs no attention mask in a causal model: pads only follow real tokens.
    """
    seqs = [encode(p) + encode(a) + [EOS_ID] for p, a in pairs]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    targets = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for row, ((prompt, _), seq) in enumerate(zip(pairs, seqs, strict=True)):
        ids[row, : len(seq)] = torch.tensor(seq)
        start = len(prompt) - 1  # position whose next token is the answer's first
        targets[row, start : len(seq) - 1] = ids[row, start + 1 : len(seq)]
    return ids, targets


def optimizer_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, label: str, step: int
) -> float:
    """One step with the gradient clipped to norm 1; the loss, which must be finite (a
    diverging run stops at the step that diverged, not after its expert is written)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"{label}: loss is {value} at step {step}")
    return value


def answer_loss(model: PreTrainedModel, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer (and eos) tokens of a batch."""
    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def train(
    model: PreTrainedModel,
    plan: TrainPlan,
    seed: int,
    log: Callable[[str], None] | None = None,
    label: str = "",
) -> float:
    """Train in place with AdamW (no weight decay), warm-up then linear decay, clip 1.0.

    Returns the mean loss of the last tenth of the steps. Data come from a torch.Generator seeded
    by `seed`, so a run is a pure function of (initial weights, plan, seed).
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=plan.lr, betas=(0.9, 0.98), weight_decay=0.0)

    def factor(step: int) -> float:
        if step < plan.warmup:
            return (step + 1) / plan.warmup
        return max(0.0, (plan.steps - step) / max(1, plan.steps - plan.warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    tail: list[float] = []
    t0 = time.perf_counter()
    report_every = max(1, plan.steps // 5)
    for step in range(plan.steps):
        ids, targets = collate(sample_mixture(plan.weights, plan.batch_size, g))
        value = optimizer_step(model, opt, answer_loss(model, ids, targets), label, step)
        sched.step()
        if step >= plan.steps - max(1, plan.steps // 10):
            tail.append(value)
        if log and ((step + 1) % report_every == 0 or step + 1 == plan.steps):
            elapsed = time.perf_counter() - t0
            log(f"{label} step {step + 1}/{plan.steps} loss {value:.4f} ({elapsed:.1f}s)")
    model.eval()
    return sum(tail) / len(tail)

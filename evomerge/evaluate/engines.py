"""The engine protocol: what every scoring backend offers, and the error it raises.

An engine stays resident: it is built once, candidate weights are swapped into it in place
(``load_weights``), and it answers batched, deterministic requests. The transformers engine
(:mod:`evomerge.evaluate.hf`) is the embedded default; vLLM (:mod:`evomerge.evaluate.vllm`) is the
GPU one. Scoring a task through any engine is :mod:`evomerge.evaluate.scoring`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from evomerge.errors import EvomergeError
from evomerge.evaluate.tasks import GenerationRequest, LoglikelihoodRequest, LoglikelihoodResult


class EngineError(EvomergeError):
    """Weights or requests do not fit the resident model, or the engine failed on them."""


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


def finish_text(token_ids: Sequence[int], tokenizer: Any, stop: Sequence[str]) -> str:
    """A greedy completion as every engine returns it: cut at eos, decoded without special
    tokens, cut at the first stop string. One definition, so engines agree to the character."""
    new = list(token_ids)
    eos = tokenizer.eos_token_id
    if eos is not None and eos in new:
        new = new[: new.index(eos)]
    text = tokenizer.decode(new, skip_special_tokens=True)
    for s in stop:
        if s and s in text:
            text = text[: text.index(s)]
    return text

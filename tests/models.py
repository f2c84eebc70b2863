"""Tiny random-init Hugging Face checkpoints for tests (the plugin kit's, evomerge.testing), built
from real transformers configs, and the real zoo's smallest preset (its code paths in seconds)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoConfig, AutoModelForCausalLM

# the plugin kit's tiny Llama family is the suite's: one builder of random-init checkpoints
from evomerge.testing.methods import LLAMA
from evomerge.testing.methods import tiny_family as make_family
from evomerge.testing.methods import tiny_model as make_model

if TYPE_CHECKING:
    from evomerge.zoo.real import RealPreset

__all__ = ["SMALL", "make_family", "make_model", "save_initial", "unit_real_preset"]

# 2 layers of width 32 (the kit's Llama, shorter): each family's checkpoint layout is built from it
SMALL = {
    **{k: v for k, v in LLAMA.items() if k not in ("model_type", "tie_word_embeddings")},
    "num_hidden_layers": 2,
    "vocab_size": 50,
    "max_position_embeddings": 32,
}


def save_initial(model_type: str, path: Path, **config: object) -> Path:
    """A ``model_type`` model from ``config`` as transformers initializes it (seed 0, no
    tokenizer): for tests of tensor names, kinds and shapes, not of weights."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config))
    model.save_pretrained(path)
    return path


def unit_real_preset(held_out: int) -> RealPreset:
    """The real zoo's preset cut to 2 training steps per skill, batches of 2 and 3 scored items:
    its layout and code paths in seconds (its figures mean nothing)."""
    from evomerge.zoo.chat_skills import CHAT_SKILLS
    from evomerge.zoo.real import RealPreset

    return RealPreset(
        steps=dict.fromkeys(CHAT_SKILLS, 2),
        batch_size=2,
        warmup=1,
        held_out=held_out,
        eval_items=3,
        eval_batch_size=3,
    )

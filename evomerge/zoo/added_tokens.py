"""A zoo model whose tokenizer has a few more tokens (as a chat or language fine-tune adds): the
other half of a pair of sources with different vocabularies, for ``tokenizer_source``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.zoo.tokenizer import save_tokenizer


def with_added_tokens(
    src: str | Path, dst: str | Path, tokens: Sequence[str], *, seed: int = 0
) -> Path:
    """Copy checkpoint ``src`` to ``dst`` with ``tokens`` added to its tokenizer and its input
    embeddings and LM head resized by transformers' ``resize_token_embeddings`` (new rows drawn
    around the old rows' mean, seeded); a real Hugging Face checkpoint."""
    tok = AutoTokenizer.from_pretrained(src)
    added = tok.add_tokens(list(tokens))
    if added != len(tokens):
        raise ValueError(f"{len(tokens) - added} of {list(tokens)} are already tokens of {src}")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    torch.manual_seed(seed)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(dst, safe_serialization=True)
    save_tokenizer(tok, Path(dst))
    return Path(dst)

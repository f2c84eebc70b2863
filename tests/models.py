"""Tiny random-init Hugging Face checkpoints for tests, built from real transformers configs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

LLAMA = dict(
    model_type="llama",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=64,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)


def make_model(
    path: Path, seed: int, *, dtype: torch.dtype = torch.float32, **overrides: object
) -> Path:
    """Save a random model; ``seed`` picks the weights, ``overrides`` the config."""
    cfg = dict(LLAMA)
    cfg.update(overrides)
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    with torch.no_grad():  # norms start at exactly 1: make them differ across models
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, safe_serialization=True)
    _tokenizer(int(cfg["vocab_size"])).save_pretrained(path)
    return path


def _tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {
        "<pad>": 0,
        "</s>": 1,
        **{chr(97 + i % 26) + str(i // 26): i + 2 for i in range(vocab_size - 2)},
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


def make_family(root: Path, n: int = 3, **overrides: object) -> dict[str, Path]:
    """A base and ``n`` "fine-tunes": the base plus small random task vectors."""
    base = make_model(root / "base", 0, **overrides)
    out = {"base": base}
    from safetensors.torch import load_file, save_file

    for i in range(n):
        d = root / f"ft{i}"
        d.mkdir(parents=True)
        for f in base.iterdir():
            if f.suffix != ".safetensors":
                (d / f.name).write_bytes(f.read_bytes())
        state = load_file(base / "model.safetensors")
        g = torch.Generator().manual_seed(100 + i)
        state = {
            k: (v.float() + 0.05 * torch.randn(v.shape, generator=g)).to(v.dtype)
            for k, v in state.items()
        }
        save_file(state, d / "model.safetensors", metadata={"format": "pt"})
        out[f"ft{i}"] = d
    return out

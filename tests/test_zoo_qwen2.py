"""The tiny zoo in its second family, Qwen2 (q/k/v biases, tied embeddings): it builds, its
checkpoints are what the family table says, and its experts merge through the same paths as the
Llama zoo's (materialize, the resident engine, a written checkpoint). The routed export's logits
are checked in ``test_routing_fold.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from evomerge.architectures import ModuleKind, architecture_of
from evomerge.errors import EvomergeError
from evomerge.evaluate.hf import HFEngine
from evomerge.evaluate.scoring import score_task
from evomerge.evaluate.select import load_candidate
from evomerge.evaluate.tasks import load_task
from evomerge.merge.materialize import merge_to_dir
from evomerge.recipe import Recipe
from evomerge.zoo import build_zoo, load_zoo_report, zoo_is_built


def test_qwen2_zoo_layout_and_family(unit_zoo_qwen2: Path) -> None:
    assert zoo_is_built(unit_zoo_qwen2)
    report = load_zoo_report(unit_zoo_qwen2)
    assert (report.arch, report.preset) == ("qwen2", "unit")
    assert "Qwen2ForCausalLM" in (unit_zoo_qwen2 / "README.md").read_text()
    config = json.loads((unit_zoo_qwen2 / "base" / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["tie_word_embeddings"] is True
    with safe_open(unit_zoo_qwen2 / "experts/rev9/model.safetensors", "pt") as f:
        names = set(f.keys())
    assert "lm_head.weight" not in names  # tied: stored once, as the embedding
    arch = architecture_of(config)
    assert arch is not None
    biases = [n for n in names if n.endswith("_proj.bias")]
    assert len(biases) == 3 * config["num_hidden_layers"]
    assert {arch.kind(n) for n in biases} == {ModuleKind.attention}
    # the same preset and seed in the other family is another zoo: not reused in its place
    with pytest.raises(EvomergeError, match="another preset, seed or family"):
        build_zoo(unit_zoo_qwen2, preset="unit", seed=0, arch="llama")
    with pytest.raises(EvomergeError, match="unknown zoo architecture"):
        build_zoo(unit_zoo_qwen2.parent / "other", preset="unit", arch="gpt2")


def test_qwen2_experts_merge_in_memory_and_on_disk(unit_zoo_qwen2: Path, tmp_path: Path) -> None:
    zoo = unit_zoo_qwen2
    recipe = Recipe.from_dict(
        {
            "sources": {
                "base": str(zoo / "base"),
                **{s: {"path": str(zoo / "experts" / s)} for s in ("rev9", "shift3", "add1")},
            },
            "method": "ties",
            "base": "base",
            "parameters": {"weight": 0.8, "density": 0.6},
        }
    )
    engine = HFEngine(zoo / "base")
    load_candidate(engine, recipe)
    task = load_task("rev9", zoo=zoo)
    ids = task.item_ids[:32]
    merged = score_task(engine, task, ids)
    # the head follows the merged embedding (one tensor under two names)
    assert (
        engine.model.lm_head.weight.data_ptr() == engine.model.model.embed_tokens.weight.data_ptr()
    )
    out = merge_to_dir(recipe, tmp_path / "merged")
    saved = HFEngine(out)
    assert score_task(saved, task, ids).scores == merged.scores
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for name, p in engine.model.state_dict().items():
        assert torch.equal(p, reloaded.state_dict()[name]), name

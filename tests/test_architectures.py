"""Family tables: real checkpoints' tensors classified by table, unknown families refused where a
guessed classification could be wrong, and a registered table taking over."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from models import SMALL, make_model, save_initial

from evomerge import architectures
from evomerge.architectures import LLAMA, ModuleKind, architecture_of, register_architecture
from evomerge.checkpoint import ModelSource
from evomerge.errors import RecipeError
from evomerge.merge.materialize import plan
from evomerge.recipe import Recipe


def _save(model_type: str, path: Path, **extra: object) -> Path:
    return save_initial(model_type, path, **{**SMALL, **extra})


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_every_tensor_of_a_known_family_is_in_its_table(family: str, tmp_path: Path) -> None:
    src = ModelSource(_save(family, tmp_path / family, tie_word_embeddings=False))
    assert src.architecture is not None and src.architecture.model_type == family
    kinds = {n: t.kind for n, t in src.tensors.items()}
    assert ModuleKind.other not in kinds.values(), kinds
    # the table agrees with the name guesses on these families
    assert all(architectures.guess_kind(n) == k for n, k in kinds.items()), kinds
    folds = [n for n in src.layer_tensors(0) if src.architecture.is_fold_point(n)]
    assert sorted(folds) == [
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
    ]
    if family == "qwen2":
        assert kinds["model.layers.1.self_attn.q_proj.bias"] == ModuleKind.attention
    if family == "qwen3":
        assert kinds["model.layers.1.self_attn.q_norm.weight"] == ModuleKind.norm


def test_table_lookup_by_module_path() -> None:
    assert LLAMA.kind("model.layers.7.self_attn.v_proj.weight") == ModuleKind.attention
    assert LLAMA.kind("language_model.model.norm.weight") == ModuleKind.norm  # wrapped
    assert LLAMA.kind("model.layers.0.self_attn.rotary_emb.inv_freq") == ModuleKind.other
    assert LLAMA.is_fold_point("model.layers.3.mlp.down_proj.weight")
    assert not LLAMA.is_fold_point("model.layers.3.mlp.up_proj.weight")
    assert architecture_of({"model_type": "gpt2"}) is None


def _gpt2(path: Path) -> Path:
    return make_model(
        path, 0, model_type="gpt2", n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=64
    )


def test_unknown_family_merges_uniformly_but_refuses_per_module_values(tmp_path: Path) -> None:
    a = _gpt2(tmp_path / "a")
    recipe = {"sources": {"a": str(a), "b": str(a)}, "method": "linear"}
    assert plan(Recipe.model_validate({**recipe, "parameters": {"weight": [0.2, 0.8]}})).jobs
    per_module = {**recipe, "parameters": {"weight": {"attention": 0.3, "default": 0.5}}}
    with pytest.raises(RecipeError, match=r"parameters\.weight: per-module.*model_type 'gpt2'"):
        plan(Recipe.model_validate(per_module))
    # a lone default is not per-module
    only_default = {**recipe, "parameters": {"weight": {"default": 0.5}}}
    assert plan(Recipe.model_validate(only_default)).jobs


def test_a_registered_table_makes_a_family_known(tmp_path: Path) -> None:
    path = _save("llama", tmp_path / "m")
    cfg = path / "config.json"
    cfg.write_text(cfg.read_text().replace('"llama"', '"my_llama"'))
    assert ModelSource(path).architecture is None
    table = register_architecture(dataclasses.replace(LLAMA, model_type="my_llama"))
    try:
        src = ModelSource(path)
        assert src.architecture is table
        with pytest.raises(ValueError, match="already registered"):
            register_architecture(table)
        routed = Recipe.model_validate(
            {
                "sources": {"a": str(path)},
                "method": "linear",
                "routing": [{"layer": 0, "source": "a"}, {"layer": 1, "source": "a", "scale": 2}],
            }
        )
        mp = plan(routed)
        assert {j.out_name for j in mp.jobs if j.scale != 1.0} == {
            "model.layers.1.self_attn.o_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
        }
    finally:
        architectures._TABLES.pop("my_llama")

"""Layer discovery, lazy reads, compatibility checks and atomic writes on real HF checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from models import SMALL, save_initial
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from evomerge.checkpoint import (
    CheckpointWriter,
    ModelSource,
    ModuleKind,
    check_compatible,
    layer_index,
    rename_layer,
)
from evomerge.errors import CheckpointError, IncompatibleSourcesError, OutputExistsError

ARCHS = {
    "llama": dict(SMALL, tie_word_embeddings=False),
    "llama_tied": dict(SMALL, tie_word_embeddings=True),
    "mistral": dict(SMALL),
    "qwen2": dict(SMALL),
    "gemma": dict(SMALL, head_dim=8),
    "phi3": dict(SMALL, pad_token_id=0),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=32),
    "gpt_neox": {k: v for k, v in SMALL.items() if k != "num_key_value_heads"},
}


def _save(arch: str, path: Path) -> Path:
    return save_initial("llama" if arch == "llama_tied" else arch, path, **ARCHS[arch])


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_layer_discovery(arch: str, tmp_path: Path) -> None:
    src = ModelSource(_save(arch, tmp_path / arch))
    assert src.num_layers == 2
    kinds = {t.kind for t in src.tensors.values()}
    assert {ModuleKind.attention, ModuleKind.mlp, ModuleKind.norm, ModuleKind.embedding} <= kinds
    for layer in (0, 1):
        names = src.layer_tensors(layer)
        assert {src.tensors[n].kind for n in names} >= {
            ModuleKind.attention,
            ModuleKind.mlp,
            ModuleKind.norm,
        }
    assert ModuleKind.other not in kinds, [
        n for n, t in src.tensors.items() if t.kind == ModuleKind.other
    ]
    tied = arch in ("llama_tied", "gpt2", "gemma")
    has_head = any(t.kind == ModuleKind.head for t in src.tensors.values())
    assert has_head != tied
    non_layer = src.non_layer_tensors()
    assert all(
        src.tensors[n].kind in (ModuleKind.embedding, ModuleKind.norm, ModuleKind.head)
        for n in non_layer
    )


def test_specific_names() -> None:
    assert layer_index("model.layers.12.self_attn.q_proj.weight") == 12
    assert layer_index("transformer.h.3.attn.c_attn.weight") == 3
    assert layer_index("gpt_neox.layers.0.attention.query_key_value.bias") == 0
    assert layer_index("model.norm.weight") is None
    assert (
        rename_layer("model.layers.12.mlp.up_proj.weight", 3) == "model.layers.3.mlp.up_proj.weight"
    )
    assert rename_layer("transformer.h.1.ln_1.weight", 10) == "transformer.h.10.ln_1.weight"
    src_kinds = {
        "model.layers.0.post_attention_layernorm.weight": ModuleKind.norm,
        "model.layers.0.self_attn.qkv_proj.weight": ModuleKind.attention,  # phi-3 fused
        "model.layers.0.mlp.gate_up_proj.weight": ModuleKind.mlp,  # phi-3 fused
        "model.layers.0.self_attn.q_proj.bias": ModuleKind.attention,  # qwen2 bias
        "gpt_neox.embed_in.weight": ModuleKind.embedding,
        "embed_out.weight": ModuleKind.head,
    }
    from evomerge.checkpoint import module_kind

    for name, kind in src_kinds.items():
        assert module_kind(name) == kind, name


def test_sharded_read_and_missing_shard(tmp_path: Path) -> None:
    path = _save("llama", tmp_path / "m")
    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    save_file({k: state[k] for k in names[:half]}, path / "a.safetensors")
    save_file({k: state[k] for k in names[half:]}, path / "b.safetensors")
    weight_map = {k: "a.safetensors" if i < half else "b.safetensors" for i, k in enumerate(names)}
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    src = ModelSource(path)
    for k, v in state.items():
        assert torch.equal(src.get(k), v)
    (path / "b.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"shard b\.safetensors .* is missing"):
        ModelSource(path)


def test_index_names_absent_tensor(tmp_path: Path) -> None:
    path = _save("llama", tmp_path / "m")
    state = load_file(path / "model.safetensors")
    weight_map = dict.fromkeys(state, "model.safetensors")
    weight_map["model.layers.0.mlp.extra.weight"] = "model.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=r"mlp\.extra\.weight"):
        ModelSource(path)


def test_pickle_refused_unless_opted_in(tmp_path: Path) -> None:
    path = _save("llama", tmp_path / "m")
    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        ModelSource(path)
    src = ModelSource(path, allow_pickle=True)
    assert torch.equal(src.get("model.norm.weight"), state["model.norm.weight"])


def test_compatibility_errors(tmp_path: Path) -> None:
    a = ModelSource(_save("llama", tmp_path / "a"), name="a")
    b_path = _save("llama", tmp_path / "b")
    state = load_file(b_path / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(63, 32)
    save_file(state, b_path / "model.safetensors")
    b = ModelSource(b_path, name="b")
    with pytest.raises(
        IncompatibleSourcesError, match=r"model.layers.1.mlp.up_proj.weight.*\[64, 32\].*\[63, 32\]"
    ):
        check_compatible({"a": a, "b": b})
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, b_path / "model.safetensors")
    with pytest.raises(IncompatibleSourcesError, match=r"up_proj\.weight.*absent from source 'b'"):
        check_compatible({"a": a, "b": ModelSource(b_path, name="b")})
    q = ModelSource(_save("qwen2", tmp_path / "q"), name="q")
    with pytest.raises(IncompatibleSourcesError, match="source 'q'"):
        check_compatible({"a": a, "q": q})


def test_writer_shards_and_atomicity(tmp_path: Path) -> None:
    src = ModelSource(_save("llama", tmp_path / "m"))
    out = tmp_path / "out"
    with CheckpointWriter(out, config=src.config, max_shard_size=20_000) as w:
        for name in src.tensors:
            w.add(name, src.get(name))
        w.finish(num_layers=2, tokenizer_from=None, model_card="card")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    back = ModelSource(out)
    for name in src.tensors:
        assert torch.equal(back.get(name), src.get(name))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    with pytest.raises(OutputExistsError, match=str(out)):
        CheckpointWriter(out, config=src.config)
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError), CheckpointWriter(crashed, config=src.config) as w:
        w.add("x", torch.zeros(3))
        raise RuntimeError("boom")
    assert not crashed.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".crashed")]


def test_writer_overwrites_by_renames_with_normal_permissions(tmp_path: Path) -> None:
    import os
    import stat

    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old checkpoint")
    with CheckpointWriter(out, config={"model_type": "llama"}, overwrite=True) as w:
        w.add("x", torch.zeros(3))
        w.finish()
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or .old- leftovers
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f

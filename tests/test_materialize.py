"""Whole-model merges: tensors against formulas, routing, reproducibility, and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from evomerge.checkpoint import ModelSource
from evomerge.errors import (
    IncompatibleSourcesError,
    MergeError,
    OutputExistsError,
    RecipeError,
)
from evomerge.merge.materialize import materialize, merge_to_dir, plan
from evomerge.recipe import Recipe


def _recipe(family: dict[str, Path], method: str = "task_arithmetic", **kw: object) -> Recipe:
    data = {
        "sources": {
            "base": str(family["base"]),
            "ft0": {"path": str(family["ft0"]), "parameters": {"weight": 0.6}},
            "ft1": {"path": str(family["ft1"]), "parameters": {"weight": [0.2, 1.0]}},
        },
        "method": method,
        "base": "base",
        **kw,
    }
    return Recipe.from_dict(data)


def _reading(r: Recipe, name: str, path: Path) -> Recipe:
    """``r`` with source ``name`` read from ``path``: an edited copy of that checkpoint."""
    source = r.sources[name].model_copy(update={"path": str(path)})
    return r.model_copy(update={"sources": {**r.sources, name: source}})


def _load(d: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in d.glob("*.safetensors") for k, v in load_file(f).items()}


def test_task_arithmetic_matches_formula(family: dict[str, Path], tmp_path: Path) -> None:
    r = _recipe(family, parameters={"lambda": 0.5})
    out = _load(merge_to_dir(r, tmp_path / "o"))
    base, a, b = (_load(family[k]) for k in ("base", "ft0", "ft1"))
    for name, t in out.items():
        layer = ModelSource(family["base"]).tensors[name].layer
        wb = 0.2 + 0.8 * (layer / 2) if layer is not None else 0.2  # gradient over 3 layers
        expected = base[name] + 0.5 * (0.6 * (a[name] - base[name]) + wb * (b[name] - base[name]))
        assert torch.allclose(t, expected, atol=1e-6), name
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "o")
    assert model.generate(torch.tensor([[1, 2]]), max_new_tokens=3, do_sample=False).shape[1] == 5
    assert "task_arithmetic" in (tmp_path / "o" / "README.md").read_text()


def test_random_methods_are_reproducible(family: dict[str, Path]) -> None:
    r = _recipe(family, "dare_ties")
    r = r.model_copy(
        update={
            "sources": {
                k: v.model_copy(update={"parameters": {**v.parameters, "density": 0.5}})
                if k != "base"
                else v
                for k, v in r.sources.items()
            }
        }
    )
    one = dict(materialize(plan(r)))
    two = dict(materialize(plan(r)))
    other = dict(materialize(plan(r.model_copy(update={"seed": 1}))))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert any(not torch.equal(one[k], other[k]) for k in one)


def test_routing_renumbers_layers(family: dict[str, Path], tmp_path: Path) -> None:
    r = Recipe.from_dict(
        {
            **_recipe(family).model_dump(mode="json"),
            "routing": [
                {"layer": 0, "source": "ft0"},
                {"layer": 2},
                {"layer": 2, "source": "ft1"},
                {"layer": 1, "source": "base"},
            ],
        }
    )
    out = merge_to_dir(r, tmp_path / "routed")
    state = _load(out)
    ft0, ft1, base = (_load(family[k]) for k in ("ft0", "ft1", "base"))
    merged = dict(materialize(plan(_recipe(family))))
    n = "mlp.down_proj.weight"
    assert torch.equal(state[f"model.layers.0.{n}"], ft0[f"model.layers.0.{n}"])
    assert torch.equal(state[f"model.layers.1.{n}"], merged[f"model.layers.2.{n}"])
    assert torch.equal(state[f"model.layers.2.{n}"], ft1[f"model.layers.2.{n}"])
    assert torch.equal(state[f"model.layers.3.{n}"], base[f"model.layers.1.{n}"])
    assert torch.equal(state["model.embed_tokens.weight"], merged["model.embed_tokens.weight"])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 64)


def test_output_dtype(family: dict[str, Path]) -> None:
    out = dict(materialize(plan(_recipe(family, dtype="bfloat16"))))
    assert {t.dtype for t in out.values()} == {torch.bfloat16}


# -- bad input: each error names what is at fault, before work is wasted ----------------------
def test_unknown_method(family: dict[str, Path]) -> None:
    with pytest.raises(RecipeError, match="unknown merge method 'averge'"):
        plan(_recipe(family, "averge"))


@pytest.mark.parametrize("density", [0.0, 1.5, -0.1])
def test_density_out_of_range(family: dict[str, Path], density: float) -> None:
    r = _recipe(family, "ties", parameters={"density": density})
    with pytest.raises(RecipeError, match=rf"parameters\.density: density={density} is outside"):
        plan(r)


def test_negative_weight_where_not_allowed(family: dict[str, Path]) -> None:
    r = Recipe.from_dict(
        {
            "sources": {
                "a": str(family["ft0"]),
                "b": {"path": str(family["ft1"]), "parameters": {"weight": -0.5}},
            },
            "method": "linear",
        }
    )
    with pytest.raises(RecipeError, match=r"sources\.b\.parameters\.weight: negative weight"):
        plan(r)
    plan(_recipe(family, parameters={"weight": -0.5}))  # task vectors may be negated


def test_unknown_parameter_and_missing_required(family: dict[str, Path]) -> None:
    with pytest.raises(RecipeError, match=r"parameters\.densty: not a parameter of 'ties'"):
        plan(_recipe(family, "ties", parameters={"densty": 0.5}))
    r = Recipe.from_dict(
        {
            "sources": {"base": str(family["base"]), "a": str(family["ft0"])},
            "method": "slerp",
            "base": "base",
        }
    )
    with pytest.raises(RecipeError, match=r"parameters\.t: required by 'slerp'"):
        plan(r)
    with pytest.raises(RecipeError, match="needs a base"):
        plan(Recipe.from_dict({"sources": {"a": str(family["ft0"])}, "method": "ties"}))


def test_incompatible_sources(family: dict[str, Path], tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    shutil.copytree(family["ft1"], odd)
    state = load_file(odd / "model.safetensors")
    state["model.layers.1.self_attn.o_proj.weight"] = torch.zeros(32, 16)
    save_file(state, odd / "model.safetensors")
    r = _reading(_recipe(family), "ft1", odd)
    with pytest.raises(IncompatibleSourcesError, match=r"o_proj.weight.*\[32, 32\].*\[32, 16\]"):
        plan(r)
    del state["model.layers.1.self_attn.o_proj.weight"]
    save_file(state, odd / "model.safetensors")
    with pytest.raises(IncompatibleSourcesError, match="absent from source 'ft1'"):
        plan(r)


def test_nan_in_a_source_tensor(family: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(family["ft0"], bad)
    state = load_file(bad / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"][3, 4] = float("nan")
    save_file(state, bad / "model.safetensors")
    r = _reading(_recipe(family), "ft0", bad)
    with pytest.raises(MergeError, match=r"'model.layers.1.mlp.up_proj.weight' of source 'ft0'"):
        merge_to_dir(r, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad"]  # no temp directory left


def test_output_exists(family: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    with pytest.raises(OutputExistsError, match="o exists"):
        merge_to_dir(_recipe(family), tmp_path / "o")


def test_routing_out_of_range(family: dict[str, Path]) -> None:
    r = Recipe.from_dict(
        {**_recipe(family).model_dump(mode="json"), "routing": [{"layer": 7, "source": "ft0"}]}
    )
    with pytest.raises(RecipeError, match=r"routing\.0\.layer: 7 but the sources have 3 layers"):
        plan(r)

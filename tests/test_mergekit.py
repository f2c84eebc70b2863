"""Our operators against mergekit's on the same exported config (where mergekit is importable)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evomerge.merge.materialize import merge_to_dir
from evomerge.mergekit_yaml import from_mergekit, to_mergekit
from evomerge.recipe import Recipe

mergekit = pytest.importorskip("mergekit", reason="mergekit not installed (dev extra)")


def _run_mergekit(config: dict, out: Path) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(
        MergeConfiguration.model_validate(config),
        str(out),
        MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True, random_seed=0),
    )
    state: dict[str, torch.Tensor] = {}
    for f in sorted(out.glob("*.safetensors")):
        state.update(load_file(f))
    return state


def _ours(recipe: Recipe, out: Path) -> dict[str, torch.Tensor]:
    merge_to_dir(recipe, out)
    state: dict[str, torch.Tensor] = {}
    for f in sorted(out.glob("*.safetensors")):
        state.update(load_file(f))
    return state


def _fam(family: dict[str, Path], models: dict[str, dict]) -> dict:
    return {
        "base": str(family["base"]),
        **{k: {"path": str(family[k]), "parameters": v} for k, v in models.items()},
    }


def _weights_only(method: str) -> dict:
    """A case merging ft0 and ft1 at weights 0.7 and 0.5, nothing else set: the linear
    variants of DARE and DELLA, which share it."""
    models = {"ft0": {"weight": 0.7}, "ft1": {"weight": 0.5}}
    return dict(method=method, base="base", models=models, parameters={})


CASES = {
    "linear": dict(
        method="linear",
        base=None,
        models={"ft0": {"weight": 0.5}, "ft1": {"weight": [0.2, 0.9]}, "ft2": {"weight": 1.3}},
        parameters={},
    ),
    "slerp": dict(
        method="slerp", base="base", models={"ft0": {}}, parameters={"t": [0.1, 0.7, 0.4]}
    ),
    "task_arithmetic": dict(
        method="task_arithmetic",
        base="base",
        models={
            "ft0": {"weight": 0.7},
            "ft1": {"weight": [0.3, -0.2]},
            "ft2": {"weight": {"attention": 0.4, "mlp": 0.9, "default": 0.5}},
        },
        parameters={"lambda": 0.8},
    ),
    "ties": dict(
        method="ties",
        base="base",
        models={
            "ft0": {"weight": 0.7, "density": 0.4},
            "ft1": {"weight": 0.5, "density": [0.2, 0.9]},
            "ft2": {"weight": 1.0, "density": 0.6},
        },
        parameters={"lambda": 1.1},
    ),
    "breadcrumbs": dict(
        method="breadcrumbs",
        base="base",
        models={
            "ft0": {"weight": 0.7, "density": 0.5, "gamma": 0.05},
            "ft1": {"weight": 0.5, "density": 0.8},
        },
        parameters={},
    ),
    "breadcrumbs_ties": dict(
        method="breadcrumbs_ties",
        base="base",
        models={
            "ft0": {"weight": 0.7, "density": 0.5},
            "ft1": {"weight": 0.5, "density": 0.8, "gamma": 0.1},
        },
        parameters={},
    ),
    "dare_ties": dict(
        method="dare_ties",
        base="base",
        models={"ft0": {"weight": 0.7, "density": 0.4}, "ft1": {"weight": 0.5, "density": 0.7}},
        parameters={},
    ),
    "dare_ties_rescaled": dict(
        method="dare_ties",
        base="base",
        models={"ft0": {"weight": 0.7, "density": 0.3}, "ft1": {"weight": 0.5, "density": 0.6}},
        parameters={"rescale": True},
    ),
    "dare_linear": _weights_only("dare_linear"),
    "della": dict(
        method="della",
        base="base",
        models={
            "ft0": {"weight": 0.7, "density": 0.5, "epsilon": 0.2},
            "ft1": {"weight": 0.5, "density": 0.6, "epsilon": 0.1},
        },
        parameters={"lambda": 0.9},
    ),
    "della_linear": _weights_only("della_linear"),
    "nearswap": dict(
        method="nearswap", base="base", models={"ft0": {}}, parameters={"t": [0.001, 0.01]}
    ),
    "model_stock": dict(
        method="model_stock", base="base", models={"ft0": {}, "ft1": {}, "ft2": {}}, parameters={}
    ),
}


def _key(delta: torch.Tensor) -> tuple:
    t = delta.detach().float().contiguous()
    return tuple(t.shape), hashlib.sha256(t.numpy().tobytes()).hexdigest()


def _share_masks(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """mergekit draws DARE/DELLA masks with torch.bernoulli, we with a seeded hash: for the
    comparison, mergekit's draw for a task vector is replaced by ours for that same vector
    (found by its content), so the rescale and the sign election are compared too. Our merge
    runs unchanged; it is only watched, to record each task vector and its draws."""
    from mergekit.merge_methods import generalized_task_arithmetic as gta

    from evomerge.merge import chunked, materialize, methods

    draws: dict[tuple, torch.Tensor] = {}
    used: list[tuple] = []
    real_merge, real_sparsify = materialize.merge_chunked, gta.sparsify

    def merge_chunked(kernel, tensors, base, p, **kw):  # type: ignore[no-untyped-def]
        shape = chunked.as_rows(base.shape)  # DELLA ranks a vector as one row, as mergekit
        for i, t in enumerate(tensors):
            delta = t.float() - base.float()
            draws[_key(delta)] = methods.uniform(shape, methods.task_seed(p, i), t.device)
        return real_merge(kernel, tensors, base, p, **kw)

    def sparsify(tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
        mine = draws.get(_key(tensor))
        if mine is None:  # magnitude methods draw nothing
            return real_sparsify(tensor, *args, **kwargs)
        used.append(_key(tensor))
        real = torch.bernoulli
        torch.bernoulli = lambda p: (mine.reshape(p.shape) < p).to(p.dtype)  # type: ignore[assignment]
        try:
            return real_sparsify(tensor, *args, **kwargs)
        finally:
            torch.bernoulli = real

    monkeypatch.setattr(materialize, "merge_chunked", merge_chunked)
    monkeypatch.setattr(gta, "sparsify", sparsify)
    return used


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_tensors_as_mergekit(
    case: str, family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = CASES[case]
    recipe = Recipe.from_dict(
        {
            "sources": _fam(family, c["models"]),
            "method": c["method"],
            "base": c["base"],
            "parameters": c["parameters"],
            "dtype": "float32",
        }
    )
    if c["base"] is None:  # linear has no base: drop it from the sources
        recipe = recipe.model_copy(
            update={"sources": {k: v for k, v in recipe.sources.items() if k != "base"}}
        )
    config = to_mergekit(recipe)
    random = case.startswith(("dare", "della"))
    if random:
        used = _share_masks(monkeypatch)
    ours = _ours(recipe, tmp_path / "ours")  # first: it records the masks mergekit reuses
    theirs = _run_mergekit(config, tmp_path / "mk")
    assert set(ours) == set(theirs)
    if random:  # every task vector of every tensor went through a shared mask, at density < 1
        assert len(used) == 2 * len(ours), (len(used), len(ours))
    for name in ours:
        diff = (ours[name].float() - theirs[name].float()).abs().max().item()
        assert diff <= 1e-5, f"{case}: {name} differs by {diff}"


def test_import_roundtrip(family: dict[str, Path]) -> None:
    c = CASES["ties"]
    recipe = Recipe.from_dict(
        {
            "sources": _fam(family, c["models"]),
            "method": "ties",
            "base": "base",
            "parameters": c["parameters"],
        }
    )
    back = from_mergekit(to_mergekit(recipe))
    assert back.method == "ties" and back.base == "base"
    assert {s.path for s in back.sources.values()} == {s.path for s in recipe.sources.values()}

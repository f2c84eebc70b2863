"""Routing scales fold into output projections: an exported routed checkpoint computes the same
logits as the routed model run layer by layer with its input scales.

The fold is exact up to the norms' epsilon: RMSNorm(c·x) = RMSNorm(x) only when eps ≪ mean(x²).
With eps = 0 the two agree to float32 round-off (< 1e-5); with the models' eps = 1e-6 and these
random-init models' small activations (mean x² ≈ 4e-4), to < 1e-3 for scales in [0.5, 2].
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from models import make_model
from transformers import AutoConfig, AutoModelForCausalLM

from evomerge.errors import RecipeError
from evomerge.merge.materialize import merge_to_dir, plan
from evomerge.recipe import Recipe

ROUTE = [
    ("ft0", 0, 1.0),
    ("ft1", 0, 0.6),
    (None, 1, 1.7),
    ("ft0", 2, 1.0),
    ("ft1", 1, 0.5),
    ("ft1", 2, 2.0),
]
EXACT_TOL = 1e-5  # eps = 0: only float32 round-off
LOGIT_TOL = 1e-3  # eps = 1e-6 as configured


def _recipe(family: dict[str, Path]) -> Recipe:
    return Recipe.model_validate(
        {
            "sources": {k: str(v) for k, v in family.items()},
            "method": "task_arithmetic",
            "base": "base",
            "parameters": {"weight": 0.5},
            "routing": [{"layer": la, "source": s, "scale": c} for s, la, c in ROUTE],
        }
    )


@torch.no_grad()
def _routed_reference(
    family: dict[str, Path], recipe: Recipe, ids: torch.Tensor, eps: float | None = None
) -> torch.Tensor:
    """The routed model as Sakana defines it: each slot's layer reads ``scale × stream``.
    Built from unscaled layers (scales all 1 in a copy of the recipe) with forward pre-hooks."""
    unscaled = recipe.model_copy(
        update={"routing": [s.model_copy(update={"scale": 1.0}) for s in recipe.routing or []]}
    )
    mp = plan(unscaled)
    from evomerge.merge.materialize import materialize

    state = dict(materialize(mp))
    config = AutoConfig.from_pretrained(family["base"])
    config.num_hidden_layers = len(ROUTE)
    if getattr(config, "layer_types", None):  # Qwen2: one entry per layer
        config.layer_types = [config.layer_types[0]] * len(ROUTE)
    model = AutoModelForCausalLM.from_config(config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    assert (set(missing), unexpected) == (tied, [])  # a tied head is the embedding itself
    _set_eps(model, eps)
    for layer, (_, _, scale) in zip(model.model.layers, ROUTE, strict=True):

        def hook(module, args, kwargs, s=scale):  # type: ignore[no-untyped-def]
            hidden = kwargs.pop("hidden_states", None)
            if hidden is None:
                return (args[0] * s, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden * s}

        layer.register_forward_pre_hook(hook, with_kwargs=True)
    return model(ids).logits


def _set_eps(model: torch.nn.Module, eps: float | None) -> None:
    if eps is not None:
        for m in model.modules():
            if hasattr(m, "variance_epsilon"):
                m.variance_epsilon = eps


@pytest.fixture(params=["llama", "qwen2"])
def routed_family(request: pytest.FixtureRequest) -> dict[str, Path]:
    """Llama: random-init fine-tunes; Qwen2: the unit zoo's base and two experts (q/k/v
    biases, tied embeddings)."""
    if request.param == "llama":
        return request.getfixturevalue("family")
    zoo = request.getfixturevalue("unit_zoo_qwen2")
    return {"base": zoo / "base", "ft0": zoo / "experts/rev9", "ft1": zoo / "experts/add1"}


def test_exported_routed_checkpoint_matches_scaled_routing(
    routed_family: dict[str, Path], tmp_path: Path
) -> None:
    family = routed_family
    recipe = _recipe(family)
    out = merge_to_dir(recipe, tmp_path / "routed")
    vocab = AutoConfig.from_pretrained(family["base"]).vocab_size
    ids = torch.randint(2, vocab, (3, 17), generator=torch.Generator().manual_seed(0))
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert exported.config.num_hidden_layers == len(ROUTE)
    with torch.no_grad():
        got = exported(ids).logits
    want = _routed_reference(family, recipe, ids)
    err = (got - want).abs().max().item()
    # the eps error grows with eps: the Qwen2 zoo's norms use 1e-5, the random family's 1e-6
    eps = float(AutoConfig.from_pretrained(family["base"]).rms_norm_eps)
    assert err < LOGIT_TOL * max(1.0, eps / 1e-6), err
    _set_eps(exported, 0.0)
    with torch.no_grad():
        got0 = exported(ids).logits
    err0 = (got0 - _routed_reference(family, recipe, ids, eps=0.0)).abs().max().item()
    assert err0 < EXACT_TOL, err0
    # …and the scales matter: ignoring them changes the logits far beyond the tolerance.
    plain = recipe.model_copy(
        update={"routing": [s.model_copy(update={"scale": 1.0}) for s in recipe.routing or []]}
    )
    plain_out = merge_to_dir(plain, tmp_path / "plain")
    with torch.no_grad():
        unscaled = AutoModelForCausalLM.from_pretrained(plain_out).eval()(ids).logits
    assert (unscaled - want).abs().max().item() > 100 * LOGIT_TOL


def test_fold_divides_output_projections_by_the_cumulative_scale(family: dict[str, Path]) -> None:
    mp = plan(_recipe(family))
    scales = {j.out_name: j.scale for j in mp.jobs}
    cumulative = 1.0
    for i, (_, _, s) in enumerate(ROUTE):
        cumulative *= s
        assert scales[f"model.layers.{i}.self_attn.o_proj.weight"] == pytest.approx(1 / cumulative)
        assert scales[f"model.layers.{i}.mlp.down_proj.weight"] == pytest.approx(1 / cumulative)
        assert scales[f"model.layers.{i}.self_attn.q_proj.weight"] == 1.0
        assert scales[f"model.layers.{i}.input_layernorm.weight"] == 1.0
    assert scales["model.embed_tokens.weight"] == 1.0


def test_scales_rejected_where_the_fold_is_not_exact(tmp_path: Path) -> None:
    a = make_model(
        tmp_path / "a",
        0,
        model_type="gpt2",
        n_embd=32,
        n_layer=2,
        n_head=4,
        vocab_size=64,
        n_positions=64,
    )
    recipe = Recipe.model_validate(
        {
            "sources": {"a": str(a)},
            "method": "linear",
            "parameters": {"weight": 1.0},
            "routing": [{"layer": 0, "source": "a"}, {"layer": 1, "source": "a", "scale": 1.5}],
        }
    )
    with pytest.raises(RecipeError, match=r"model_type 'gpt2'"):
        plan(recipe)
    # scale 1 everywhere needs no fold: any family routes
    ok = recipe.model_copy(
        update={"routing": [s.model_copy(update={"scale": 1.0}) for s in recipe.routing or []]}
    )
    assert plan(ok).num_layers == 2

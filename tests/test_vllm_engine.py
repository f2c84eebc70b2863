"""The vLLM engine's own logic, without vLLM: request building and refusal, prompt-logprob
parsing (greediness with ties), recipe transport, depth overrides, the extension's naming and
bookkeeping. What vLLM does with them is tested against real vLLM in ``test_vllm_real.py``."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from evomerge.checkpoint import ModelSource
from evomerge.evaluate.engines import EngineError
from evomerge.evaluate.tasks import GenerationRequest, LoglikelihoodRequest
from evomerge.evaluate.vllm import engine as ve
from evomerge.evaluate.vllm import extension as vx
from evomerge.evaluate.vllm import transport as vt
from evomerge.recipe import Recipe


@dataclass
class Lp:
    """Stands in for vllm's ``Logprob`` (the fields the parser reads)."""

    logprob: float
    rank: int | None = None


# -- requests ----------------------------------------------------------------------------------
def test_loglikelihood_prompts_concatenate_and_refuse_by_index() -> None:
    reqs = [LoglikelihoodRequest((1, 2), (3,)), LoglikelihoodRequest((4,), (5, 6))]
    assert vt.loglikelihood_prompts(reqs, 3) == [
        {"prompt_token_ids": [1, 2, 3]},
        {"prompt_token_ids": [4, 5, 6]},
    ]
    long = [*reqs, LoglikelihoodRequest((1, 2, 3), (4,))]
    with pytest.raises(EngineError, match=r"request 2 of 3: 4 tokens.* is 3 \(max_model_len - 1"):
        vt.loglikelihood_prompts(long, 3)
    with pytest.raises(EngineError, match="request 0: needs a context"):
        vt.loglikelihood_prompts([LoglikelihoodRequest((), (1,))], 8)


def test_generation_prompts_count_the_new_tokens() -> None:
    reqs = [GenerationRequest((1, 2), 3), GenerationRequest((1, 2, 3), 3)]
    assert vt.generation_prompts(reqs[:1], 5) == [{"prompt_token_ids": [1, 2]}]
    with pytest.raises(EngineError, match="generation request 1 of 2: 3 prompt tokens plus 3"):
        vt.generation_prompts(reqs, 5)


def test_sampling_settings_are_greedy_plain_data() -> None:
    ll = vt.loglikelihood_sampling()
    assert ll["temperature"] == 0.0 and ll["max_tokens"] == 1
    assert 1 <= ll["prompt_logprobs"] <= 20  # vLLM's default max_logprobs
    d = vt.generation_sampling(GenerationRequest((1, 2), 5, ("\n", "")))
    assert d == {"temperature": 0.0, "max_tokens": 5, "stop": ["\n"]}
    assert vt.generation_sampling(GenerationRequest((1,), 3))["stop"] is None
    json.dumps([ll, d])


# -- prompt log-probabilities --------------------------------------------------------------------
def test_parse_prompt_logprobs_sums_and_counts_greedy_positions() -> None:
    # prompt = [7, 8 | 9, 4]: context of 2, continuation (9, 4)
    out = [None, {8: Lp(-0.5, 1)}, {9: Lp(-0.25, 1)}, {4: Lp(-2.0, 3), 5: Lp(-0.1, 1)}]
    r = vt.parse_prompt_logprobs(out, 2, (9, 4))
    assert r.logprob == pytest.approx(-2.25)
    assert (r.n_tokens, r.n_greedy) == (2, 1)


def test_greedy_breaks_ties_like_argmax_not_like_vllm_rank() -> None:
    # vLLM gives rank 2 to both tied tokens; argmax picks the lower id.
    tie = {4: Lp(-0.7, 2), 9: Lp(-0.7, 2)}
    assert vt.parse_prompt_logprobs([None, tie], 1, (4,)).n_greedy == 1
    assert vt.parse_prompt_logprobs([None, tie], 1, (9,)).n_greedy == 0
    assert torch.tensor([0.0, 1.0, 1.0]).argmax().item() == 1  # the rule being mirrored


def test_parse_prompt_logprobs_rejects_short_or_missing_output() -> None:
    with pytest.raises(EngineError, match="no prompt log-probabilities"):
        vt.parse_prompt_logprobs(None, 1, (3,))
    with pytest.raises(EngineError, match="expected at least 3"):
        vt.parse_prompt_logprobs([None, {1: Lp(0.0, 1)}], 1, (1, 2))
    with pytest.raises(EngineError, match="token 2 at position 1"):
        vt.parse_prompt_logprobs([None, {5: Lp(0.0, 1)}], 1, (2,))


# -- recipe transport ----------------------------------------------------------------------------
def test_recipe_payload_round_trips_and_is_small(family: dict[str, Path]) -> None:
    weight = [{"filter": "mlp", "value": 0.3}, {"value": {"per_layer": [1, 2, 3]}}]
    r = Recipe.from_dict(
        {
            "sources": {
                "base": str(family["base"]),
                "ft0": {"path": str(family["ft0"]), "parameters": {"weight": {"gradient": [0, 1]}}},
                "ft1": {"path": str(family["ft1"]), "parameters": {"weight": weight}},
            },
            "method": "task_arithmetic",
            "base": "base",
            "parameters": {"lambda": {"attention": 0.8, "default": [0.5, 1.0]}},
            "routing": [{"layer": 0}, {"layer": 2, "source": "ft1"}, {"layer": 1}],
            "dtype": "bfloat16",
            "seed": 3,
        }
    )
    payload = vt.recipe_to_payload(r)
    assert isinstance(payload, str) and len(payload) < 2048
    back = vt.recipe_from_payload(payload)
    assert back == r and back.content_hash() == r.content_hash()
    assert vt.recipe_from_payload(json.loads(payload)) == r


def test_recipe_payload_makes_paths_absolute_and_refuses_zoo_paths(
    family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(family["base"].parent)
    rel = Recipe.from_dict({"sources": {"a": "ft0", "b": "ft1"}, "method": "linear"})
    back = vt.recipe_from_payload(vt.recipe_to_payload(rel))
    assert back.sources["a"].path == str(family["ft0"].resolve())
    zoo = Recipe.from_dict({"sources": {"a": "zoo:experts/x", "b": "ft1"}, "method": "linear"})
    with pytest.raises(EngineError, match="with_zoo"):
        vt.recipe_to_payload(zoo)


# -- engine shape --------------------------------------------------------------------------------
def test_depth_overrides_follow_the_layer_count() -> None:
    cfg = {"num_hidden_layers": 4, "layer_types": ["full", "sliding"] * 2}
    assert ve.depth_overrides(cfg, 3) == {
        "num_hidden_layers": 3,
        "layer_types": ["full", "sliding", "full"],
    }
    assert ve.depth_overrides({"n_layer": 2}, 5) == {"n_layer": 5}
    with pytest.raises(EngineError, match="no layer count"):
        ve.depth_overrides({}, 3)
    with pytest.raises(EngineError, match="at least one layer"):
        ve.depth_overrides(cfg, 0)
    assert ve.config_num_layers(cfg) == 4


def test_llm_kwargs_name_an_importable_extension() -> None:
    kw = ve.llm_kwargs("/m", dtype=torch.bfloat16, max_model_len=None, hf_overrides={"n": 1})
    assert kw["dtype"] == "bfloat16" and "max_model_len" not in kw
    assert kw["hf_overrides"] == {"n": 1} and kw["load_format"] == "auto"
    module, _, cls = kw["worker_extension_cls"].rpartition(".")
    assert getattr(importlib.import_module(module), cls) is vx.EvomergeWorkerExtension
    assert "hf_overrides" not in ve.llm_kwargs("/m")


def test_extension_names_cannot_clash_with_vllm_worker_attributes() -> None:
    # vLLM refuses an extension sharing an attribute name with its worker class.
    names = [a for a in dir(vx.EvomergeWorkerExtension) if not a.startswith("__")]
    assert names and all(a.startswith("evomerge_") for a in names)


def test_expected_names_cover_every_layer_of_the_resident_depth(family: dict[str, Path]) -> None:
    src = ModelSource(family["base"])
    assert vx.expected_names(src, src.num_layers) == set(src.tensors)
    deeper = vx.expected_names(src, src.num_layers + 2)
    assert "model.layers.4.mlp.up_proj.weight" in deeper
    assert len(deeper) == len(src.tensors) + 2 * len(src.layer_tensors(0))


def test_source_cache_opens_each_path_once(family: dict[str, Path]) -> None:
    cache = vx.SourceCache()
    a = cache.get(family["ft0"], "a")
    b = cache.get(str(family["ft0"]) + "/", "b")
    assert len(cache) == 1 and b.name == "b" and b.tensors is a.tensors
    cache.close()
    assert len(cache) == 0


def test_engine_without_vllm_says_how_to_install(
    family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(EngineError, match="install the vllm extra on a GPU machine"):
        ve.VLLMEngine(family["base"])

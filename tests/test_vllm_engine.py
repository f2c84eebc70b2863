"""The vLLM engine's parts that need neither vLLM nor a GPU: request building, output parsing,
recipe transport, the rebuild decision, and the worker-extension method run against a fake
worker on the CPU. The engine itself needs vLLM (a GPU-only extra) and is skipped without it."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import torch

from evomerge.checkpoint import ModelSource
from evomerge.evaluate import vllm as ve
from evomerge.evaluate.engines import EngineError
from evomerge.evaluate.tasks import GenerationRequest, LoglikelihoodRequest
from evomerge.merge.materialize import materialize, plan
from evomerge.recipe import Recipe


@dataclass
class Lp:
    """Stands in for vllm's ``Logprob``."""

    logprob: float
    rank: int | None = None


def _recipe(family: dict[str, Path], **kw: Any) -> Recipe:
    data = {
        "sources": {
            "base": str(family["base"]),
            "ft0": {"path": str(family["ft0"]), "parameters": {"weight": 0.6, "density": 0.5}},
            "ft1": {"path": str(family["ft1"]), "parameters": {"weight": [0.2, 1.0]}},
        },
        "method": "dare_ties",
        "base": "base",
        "dtype": "float32",
        "seed": 7,
        **kw,
    }
    return Recipe.from_dict(data)


class FakeModel:
    """Records what ``load_weights`` got, as vLLM's model would consume it; returns the names it
    set, like vLLM's models do."""

    def __init__(self, names: list[str], skip: set[str] = frozenset()) -> None:
        self.names = names
        self.skip = skip
        self.got: dict[str, torch.Tensor] = {}
        self.calls = 0

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, torch.nn.Parameter(torch.zeros(1))) for n in self.names]

    def load_weights(self, weights: Any) -> set[str]:
        self.calls += 1
        for name, t in weights:
            self.got[name] = t.clone()
        return set(self.got) - self.skip


def _worker(model: FakeModel) -> Any:
    class FakeWorker(ve.EvomergeWorkerExtension):
        def __init__(self) -> None:
            self.device = torch.device("cpu")
            self.model_runner = SimpleNamespace(model=model)

    return FakeWorker()


# -- requests and outputs --------------------------------------------------------------------
def test_loglikelihood_prompts_concatenate_and_validate() -> None:
    reqs = [LoglikelihoodRequest((1, 2), (3,)), LoglikelihoodRequest((4,), (5, 6))]
    assert ve.loglikelihood_prompts(reqs, 8) == [
        {"prompt_token_ids": [1, 2, 3]},
        {"prompt_token_ids": [4, 5, 6]},
    ]
    with pytest.raises(EngineError, match="exceeds the context 2"):
        ve.loglikelihood_prompts(reqs, 2)
    with pytest.raises(EngineError, match="needs a context"):
        ve.loglikelihood_prompts([LoglikelihoodRequest((), (1,))], 8)
    assert ve.LOGLIKELIHOOD_SAMPLING["prompt_logprobs"] in (0, 1)
    assert ve.LOGLIKELIHOOD_SAMPLING["temperature"] == 0.0
    assert ve.LOGLIKELIHOOD_SAMPLING["max_tokens"] == 1


def test_generation_sampling_is_greedy_and_drops_empty_stops() -> None:
    d = ve.generation_sampling(GenerationRequest((1, 2), 5, ("\n", "")))
    assert d == {"temperature": 0.0, "max_tokens": 5, "stop": ["\n"]}
    assert ve.generation_sampling(GenerationRequest((1,), 3))["stop"] is None
    json.dumps(d)  # plain data


def test_finish_text_matches_hf_post_processing(family: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(family["base"])
    ids = tok("a0 b0 c0", add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    assert ve.finish_text([*ids, eos, *ids], tok, ()) == tok.decode(ids)
    full = tok.decode(ids, skip_special_tokens=True)
    stop = full.split()[1]
    assert ve.finish_text(ids, tok, (stop, "")) == full[: full.index(stop)]


def test_parse_prompt_logprobs_sums_and_counts_greedy_positions() -> None:
    # prompt = [7, 8 | 9, 4]: context of 2, continuation (9, 4)
    out = [
        None,
        {8: Lp(-0.5, 1)},
        {9: Lp(-0.25, 1)},
        {4: Lp(-2.0, 3), 5: Lp(-0.1, 1)},
    ]
    r = ve.parse_prompt_logprobs(out, 2, (9, 4))
    assert r.logprob == pytest.approx(-2.25)
    assert (r.n_tokens, r.n_greedy) == (2, 1)
    assert not r.is_greedy


def test_parse_prompt_logprobs_without_rank_uses_the_top1_entry() -> None:
    out = [None, {3: Lp(-0.2)}, {4: Lp(-1.5), 6: Lp(-0.3)}]
    r = ve.parse_prompt_logprobs(out, 1, (3, 4))
    assert (r.n_greedy, r.logprob) == (1, pytest.approx(-1.7))


def test_parse_prompt_logprobs_rejects_short_or_missing_output() -> None:
    with pytest.raises(EngineError, match="no prompt log-probabilities"):
        ve.parse_prompt_logprobs(None, 1, (3,))
    with pytest.raises(EngineError, match="expected at least 3"):
        ve.parse_prompt_logprobs([None, {1: Lp(0.0, 1)}], 1, (1, 2))
    with pytest.raises(EngineError, match="token 2 at position 1"):
        ve.parse_prompt_logprobs([None, {5: Lp(0.0, 1)}], 1, (2,))


# -- recipe transport --------------------------------------------------------------------------
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
    payload = ve.recipe_to_payload(r)
    assert isinstance(payload, str) and len(payload) < 2048
    json.loads(payload)
    back = ve.recipe_from_payload(payload)
    assert back == r
    assert back.content_hash() == r.content_hash()
    assert ve.recipe_from_payload(json.loads(payload)) == r


def test_recipe_payload_makes_paths_absolute_and_refuses_zoo_paths(
    family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(family["base"].parent)
    rel = Recipe.from_dict({"sources": {"a": "ft0", "b": "ft1"}, "method": "linear"})
    back = ve.recipe_from_payload(ve.recipe_to_payload(rel))
    assert back.sources["a"].path == str(family["ft0"].resolve())
    zoo = Recipe.from_dict({"sources": {"a": "zoo:experts/x", "b": "ft1"}, "method": "linear"})
    with pytest.raises(EngineError, match="with_zoo"):
        ve.recipe_to_payload(zoo)


# -- engine shape ------------------------------------------------------------------------------
def test_rebuild_only_when_the_depth_changes() -> None:
    cfg = {"num_hidden_layers": 4, "layer_types": ["full", "sliding"] * 2}
    assert ve.rebuild_overrides(cfg, 4, 4) is None
    assert ve.rebuild_overrides(cfg, 4, 3) == {
        "num_hidden_layers": 3,
        "layer_types": ["full", "sliding", "full"],
    }
    assert ve.rebuild_overrides({"n_layer": 2}, 2, 5) == {"n_layer": 5}
    with pytest.raises(EngineError, match="no layer count"):
        ve.rebuild_overrides({}, 2, 3)
    with pytest.raises(EngineError, match="at least one layer"):
        ve.rebuild_overrides(cfg, 4, 0)
    assert ve.config_num_layers(cfg) == 4


def test_routed_recipe_depth_is_what_the_engine_compares(family: dict[str, Path]) -> None:
    routed = _recipe(family, routing=[{"layer": i % 3} for i in range(5)])
    assert plan(routed).num_layers == 5
    assert plan(_recipe(family)).num_layers == 3


def test_llm_kwargs_name_an_importable_extension() -> None:
    kw = ve.llm_kwargs("/m", dtype=torch.bfloat16, max_model_len=None, hf_overrides={"n": 1})
    assert kw["dtype"] == "bfloat16" and "max_model_len" not in kw
    assert kw["hf_overrides"] == {"n": 1} and kw["load_format"] == "auto"
    module, _, cls = kw["worker_extension_cls"].rpartition(".")
    assert getattr(importlib.import_module(module), cls) is ve.EvomergeWorkerExtension
    assert "hf_overrides" not in ve.llm_kwargs("/m")


def test_extension_names_cannot_clash_with_vllm_worker_attributes() -> None:
    # vLLM refuses an extension sharing an attribute name with its worker class.
    names = [a for a in dir(ve.EvomergeWorkerExtension) if not a.startswith("__")]
    assert names and all(a.startswith("evomerge_") for a in names)


# -- the worker extension, on a fake worker -------------------------------------------------
def test_worker_loads_the_materialized_recipe(family: dict[str, Path]) -> None:
    r = _recipe(family)
    expected = dict(materialize(plan(r), "cpu"))
    model = FakeModel(list(expected))
    worker = _worker(model)
    reply = worker.evomerge_load_recipe(ve.recipe_to_payload(r))
    assert model.calls == 1  # one load_weights call, not one per tensor
    assert list(model.got) == list(expected)
    for name, t in expected.items():
        assert model.got[name].shape == t.shape
        assert torch.equal(model.got[name], t), name
    assert reply["tensors"] == len(expected)
    assert reply["bytes"] == sum(t.numel() * t.element_size() for t in expected.values())
    assert reply["device"] == "cpu"
    json.dumps(reply)  # travels back as plain data


def test_worker_opens_sources_once(family: dict[str, Path]) -> None:
    r = _recipe(family)
    names = [n for n, _ in materialize(plan(r), "cpu")]
    worker = _worker(FakeModel(names))
    worker.evomerge_load_recipe(ve.recipe_to_payload(r))
    cache = worker._evomerge_sources
    opened = dict(cache._by_path)
    assert len(opened) == 3
    renamed = r.model_copy(
        update={"sources": {("other" if k == "ft0" else k): v for k, v in r.sources.items()}}
    )
    worker.evomerge_load_recipe(ve.recipe_to_payload(renamed))
    assert cache._by_path == opened and all(cache._by_path[k] is v for k, v in opened.items())
    assert worker.evomerge_close_sources() == 3 and len(cache) == 0


def test_worker_loads_routed_recipe_layers_under_new_names(family: dict[str, Path]) -> None:
    r = _recipe(family, routing=[{"layer": 2, "source": "ft1"}, {"layer": 0}])
    expected = dict(materialize(plan(r), "cpu"))
    model = FakeModel(list(expected))
    _worker(model).evomerge_load_recipe(ve.recipe_to_payload(r))
    assert set(model.got) == set(expected)
    layer2_of_ft1 = ModelSource(family["ft1"]).get("model.layers.2.mlp.up_proj.weight")
    assert torch.equal(model.got["model.layers.0.mlp.up_proj.weight"], layer2_of_ft1)


def test_worker_refuses_a_recipe_of_another_depth(family: dict[str, Path]) -> None:
    names = [n for n, _ in materialize(plan(_recipe(family)), "cpu")]
    worker = _worker(FakeModel(names))
    routed = _recipe(family, routing=[{"layer": 0}, {"layer": 1}])
    with pytest.raises(EngineError, match="makes 2 layers but this vLLM engine holds 3"):
        worker.evomerge_load_recipe(ve.recipe_to_payload(routed))


def test_worker_reports_unset_parameters(family: dict[str, Path]) -> None:
    r = _recipe(family)
    names = [n for n, _ in materialize(plan(r), "cpu")]
    worker = _worker(FakeModel(names, skip={"lm_head.weight"}))
    with pytest.raises(EngineError, match=r"1 parameter.*'lm_head.weight'.*partial swap"):
        worker.evomerge_load_recipe(ve.recipe_to_payload(r))


def test_worker_load_tensors_slow_path() -> None:
    model = FakeModel(["model.layers.0.w", "lm_head.weight"])
    reply = _worker(model).evomerge_load_tensors(
        [["model.layers.0.w", torch.ones(2, 3)], ("lm_head.weight", torch.zeros(4))]
    )
    assert reply["tensors"] == 2 and torch.equal(model.got["model.layers.0.w"], torch.ones(2, 3))


def test_worker_finds_model_through_get_model_and_explains_when_it_cannot() -> None:
    model = FakeModel(["x.weight"])

    class Runner:
        def get_model(self) -> FakeModel:
            return model

    class Worker(ve.EvomergeWorkerExtension):
        model_runner = Runner()
        device = "cpu"

    Worker().evomerge_load_tensors([("x.weight", torch.ones(1))])
    assert model.calls == 1

    class Bare(ve.EvomergeWorkerExtension):
        model_runner = SimpleNamespace()
        device = "cpu"

    with pytest.raises(EngineError, match=r"load_weights method, as in vLLM 0\.33"):
        Bare().evomerge_load_tensors([])


# -- the engine itself -------------------------------------------------------------------------
def test_engine_without_vllm_says_how_to_install(
    family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(EngineError, match="install the vllm extra on a GPU machine"):
        ve.VLLMEngine(family["base"])


class FakeLLM:
    """A CPU stand-in for ``vllm.LLM`` with the surface VLLMEngine uses: a transformers model
    inside one fake worker (reached through ``collective_rpc``), prompt log-probabilities with
    ranks, greedy token ids, and ``reset_prefix_cache``."""

    built: ClassVar[list[dict[str, Any]]] = []
    reset_result: Any = True

    def __init__(self, **kw: Any) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        FakeLLM.built.append(kw)
        assert kw["worker_extension_cls"] == ve.WORKER_EXTENSION
        cfg = AutoConfig.from_pretrained(kw["model"])
        for k, v in kw.get("hf_overrides", {}).items():
            setattr(cfg, k, v)
        if kw["load_format"] == "dummy":
            self.model = AutoModelForCausalLM.from_config(cfg)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(kw["model"])
        self.model.eval()
        self.llm_engine = SimpleNamespace(
            model_config=SimpleNamespace(max_model_len=cfg.max_position_embeddings)
        )
        model = self.model

        class Adapter:  # vLLM's model API: HF names in, names set out
            def named_parameters(self) -> Any:
                return model.named_parameters()

            def load_weights(self, weights: Any) -> set[str]:
                params, seen = dict(model.named_parameters()), set()
                for name, t in weights:
                    params[name].data.copy_(t)
                    seen.add(name)
                return seen

        self.worker = _worker(Adapter())  # type: ignore[arg-type]

    def collective_rpc(self, method: str, args: tuple = ()) -> list[Any]:
        return [getattr(self.worker, method)(*args)]

    def reset_prefix_cache(self) -> Any:
        return FakeLLM.reset_result

    @torch.inference_mode()
    def generate(self, prompts: list[dict], params: Any, use_tqdm: bool = True) -> list[Any]:
        outs = []
        for i, p in enumerate(prompts):
            sp = params[i] if isinstance(params, list) else params
            ids = torch.tensor([p["prompt_token_ids"]])
            if getattr(sp, "prompt_logprobs", None) is not None:
                lp = torch.log_softmax(self.model(ids).logits[0].float(), -1)
                plp: list[Any] = [None]
                for pos in range(1, ids.shape[1]):
                    row, tok = lp[pos - 1], int(ids[0, pos])
                    rank = int((row > row[tok]).sum()) + 1
                    top = int(row.argmax())
                    plp.append({tok: Lp(float(row[tok]), rank), top: Lp(float(row[top]), 1)})
                outs.append(SimpleNamespace(prompt_logprobs=plp, outputs=[]))
            else:
                gen = self.model.generate(ids, max_new_tokens=sp.max_tokens, do_sample=False)
                new = gen[0, ids.shape[1] :].tolist()
                outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=new)]))
        return outs


class FakeSamplingParams:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[FakeLLM]:
    FakeLLM.built = []
    FakeLLM.reset_result = True
    fake = SimpleNamespace(LLM=FakeLLM, SamplingParams=FakeSamplingParams)
    monkeypatch.setattr(ve, "_import_vllm", lambda: fake)
    return FakeLLM


def test_engine_driver_swaps_recipes_and_scores_like_hf(
    family: dict[str, Path], fake_vllm: type[FakeLLM], caplog: pytest.LogCaptureFixture
) -> None:
    from evomerge.evaluate.hf import HFEngine

    eng = ve.VLLMEngine(family["base"], dtype=torch.float32, enforce_eager=True)
    assert fake_vllm.built[0]["dtype"] == "float32" and eng.max_length == 64
    hf = HFEngine(family["base"])
    reqs = [LoglikelihoodRequest((2, 3, 4), (5, 6)), LoglikelihoodRequest((9,), (10, 11, 12))]
    gen = [GenerationRequest((2, 3, 4), 5), GenerationRequest((7,), 3, ("x",))]
    for r in (_recipe(family), _recipe(family, routing=[{"layer": 2}, {"layer": 0}])):
        mp = plan(r)
        hf.load_weights(materialize(mp, "cpu"), num_layers=mp.num_layers)
        with caplog.at_level("INFO", logger=ve.__name__):
            eng.load_recipe(r)
        assert eng.num_layers == mp.num_layers
        assert eng.last_load["workers"][0]["tensors"] == len(mp.jobs)
        for a, b in zip(hf.loglikelihood(reqs), eng.loglikelihood(reqs), strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
            assert (a.n_tokens, a.n_greedy) == (b.n_tokens, b.n_greedy)
        assert eng.generate(gen) == hf.generate(gen)
    # Only the routed recipe rebuilt the engine, from the same checkpoint at the new depth.
    assert len(fake_vllm.built) == 2
    assert fake_vllm.built[1]["hf_overrides"] == {"num_hidden_layers": 2}
    assert fake_vllm.built[1]["load_format"] == "dummy"
    assert "rebuilding the vLLM engine: 3 → 2 layers" in caplog.text
    assert eng.loglikelihood([]) == [] and eng.generate([]) == []


def test_engine_load_weights_slow_path_and_prefix_cache_check(
    family: dict[str, Path], fake_vllm: type[FakeLLM]
) -> None:
    eng = ve.VLLMEngine(family["base"], load_weights=False)
    assert fake_vllm.built[0]["load_format"] == "dummy"
    src = ModelSource(family["ft0"])
    state = {n: src.get(n) for n in src.tensors}
    eng.load_weights(state.items())
    got = dict(eng.llm.model.named_parameters())
    assert all(torch.equal(got[n], t) for n, t in state.items())
    fake_vllm.reset_result = False
    with pytest.raises(EngineError, match="could not reset its prefix cache"):
        eng.load_recipe(_recipe(family))
    eng.close()
    assert eng.llm is None


def test_engine_agrees_with_transformers(tmp_path: Path) -> None:
    pytest.importorskip(
        "vllm", reason="vLLM is a GPU-only extra (pip install 'evomerge[vllm]' on a CUDA machine)"
    )
    if not torch.cuda.is_available():
        pytest.skip("vLLM is installed but no CUDA GPU is visible")
    from models import make_family

    from evomerge.evaluate.hf import HFEngine

    # vLLM's attention kernels want a common head size: 256 / 4 heads = 64.
    family = make_family(tmp_path, 2, hidden_size=256, intermediate_size=512)
    r = _recipe(family)
    hf = HFEngine(family["base"], device="cuda")
    hf.load_weights(materialize(plan(r), "cuda"))
    eng = ve.VLLMEngine(
        family["base"], dtype="float32", gpu_memory_utilization=0.2, enforce_eager=True
    )
    try:
        eng.load_recipe(r)
        reqs = [LoglikelihoodRequest((2, 3, 4), (5, 6)), LoglikelihoodRequest((9,), (10, 11, 12))]
        for a, b in zip(hf.loglikelihood(reqs), eng.loglikelihood(reqs), strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
            assert a.n_greedy == b.n_greedy
        gen = [GenerationRequest((2, 3, 4), 6)]
        assert hf.generate(gen) == eng.generate(gen)
    finally:
        eng.close()

"""The vLLM engine against real vLLM (the CPU build, ``make test-vllm``) and the transformers
engine, on the unit tiny zoo in both families: Llama (untied) and Qwen2 (q/k/v biases, tied
embeddings). One vLLM engine per family for the module (two depths resident), since each start
costs half a minute or more on a small CPU; the families run one after the other.

Without vLLM the module is skipped, with the reason; ``make test-vllm`` sets
``EVOMERGE_REQUIRE_VLLM=1`` so that a broken vLLM install fails instead of skipping.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import evomerge
from evomerge.evaluate.engines import EngineError
from evomerge.evaluate.hf import HFEngine
from evomerge.evaluate.scoring import prepare, score_prepared
from evomerge.evaluate.tasks import GenerationRequest, LoglikelihoodRequest, load_task
from evomerge.evaluate.vllm import VLLMEngine
from evomerge.evaluate.vllm.transport import recipe_to_payload
from evomerge.merge.materialize import materialize, plan
from evomerge.recipe import Recipe

pytestmark = pytest.mark.vllm

if os.environ.get("EVOMERGE_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401  (fail loudly: this run exists to test vLLM)
else:
    pytest.importorskip("vllm", reason="vLLM is not installed here: run `make test-vllm`")

ITEMS = 24  # per task: enough to see disagreements, cheap on 2 cores
LOGPROB_ATOL = 1e-4  # float32, sums over ~10 tokens: kernel-order noise is ~1e-6


def _recipe(zoo: Path, method: str, **kw: Any) -> Recipe:
    experts = {n: str(zoo / "experts" / n) for n in ("rev9", "shift3", "add1")}
    params = {
        "linear": {"rev9": {"weight": 0.7}, "shift3": {"weight": 0.3}},
        "ties": {"rev9": {"weight": 0.8, "density": 0.6}, "add1": {"weight": 0.5, "density": 0.7}},
        "dare_ties": {
            "shift3": {"weight": [0.4, 1.0], "density": 0.5},
            "add1": {"weight": 0.6, "density": 0.8},
        },
        "task_arithmetic": {"rev9": {"weight": 0.9}, "add1": {"weight": 0.4}},
    }[method]
    sources: dict[str, Any] = {n: {"path": experts[n], "parameters": p} for n, p in params.items()}
    data: dict[str, Any] = {"sources": sources, "method": method, "dtype": "float32", "seed": 5}
    if method != "linear":
        sources["base"] = str(zoo / "base")
        data["base"] = "base"
    data.update(kw)
    return Recipe.from_dict(data)


def _single(zoo: Path, expert: str) -> Recipe:
    """One expert, copied as it is (linear with a single source)."""
    return Recipe.from_dict(
        {"sources": {expert: str(zoo / "experts" / expert)}, "method": "linear"}
    )


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def zoo(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("unit_zoo" if request.param == "llama" else "unit_zoo_qwen2")


@pytest.fixture(scope="module")
def engines(zoo: Path) -> Iterator[tuple[VLLMEngine, HFEngine]]:
    vl = VLLMEngine(
        zoo / "base",
        dtype="float32",
        enforce_eager=True,
        gpu_memory_utilization=0.1,  # on CPU: the share of host RAM vLLM may take
        max_engines=2,  # the routed depth and the native one stay resident
        block_size=32,  # CPU default 128 > max_model_len 64: prefix caching would never hit
    )
    hf = HFEngine(zoo / "base")
    try:
        yield vl, hf
    finally:
        vl.close()


def _load_both(vl: VLLMEngine, hf: HFEngine, recipe: Recipe) -> None:
    mp = plan(recipe)
    hf.load_weights(materialize(mp, "cpu"), num_layers=mp.num_layers)
    vl.load_recipe(recipe)


def _compare(vl: VLLMEngine, hf: HFEngine, zoo: Path, where: str) -> dict[str, float]:
    """Same per-item scores on a log-likelihood and a generation task, and per-request
    log-likelihoods within float32 tolerance with the same greedy counts."""
    out = {}
    for name in ("rev9", "rev9-exact"):
        task = load_task(name, zoo=zoo)
        ids = task.item_ids[:ITEMS]
        p_hf, p_vl = prepare(hf, task, ids), prepare(vl, task, ids)
        r_hf, r_vl = score_prepared(hf, p_hf), score_prepared(vl, p_vl)
        assert r_vl.scores == r_hf.scores, f"{where}: {name} per-item scores differ"
        out[name] = r_vl.value
        if p_hf.loglikelihood:
            a, b = hf.loglikelihood(p_hf.loglikelihood), vl.loglikelihood(p_hf.loglikelihood)
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                assert y.logprob == pytest.approx(x.logprob, abs=LOGPROB_ATOL), (where, i)
                assert (y.n_tokens, y.n_greedy) == (x.n_tokens, x.n_greedy), (where, i)
            out["max_dlogprob"] = max(abs(x.logprob - y.logprob) for x, y in zip(a, b, strict=True))
        if p_hf.generation:  # the completions themselves, not only their scores
            assert vl.generate(p_hf.generation) == hf.generate(p_hf.generation), where
    return out


def test_recipes_agree_with_transformers_across_swaps_and_depths(
    engines: tuple[VLLMEngine, HFEngine], zoo: Path
) -> None:
    vl, hf = engines
    a = _recipe(zoo, "linear")
    b = _recipe(zoo, "ties")
    c = _recipe(zoo, "dare_ties", dtype="bfloat16")  # cast to the engine's float32
    routed = _recipe(zoo, "task_arithmetic", routing=[{"layer": i} for i in (0, 1, 1, 2, 3)])
    seen: dict[str, dict[str, float]] = {}
    for step, (label, recipe) in enumerate(
        [
            ("A", a),
            ("B", b),
            ("A", a),
            ("C", c),
            ("expert", _single(zoo, "rev9")),
            ("routed", routed),
            ("A", a),
        ]
    ):
        _load_both(vl, hf, recipe)
        got = _compare(vl, hf, zoo, f"step {step} ({label}, {recipe.method})")
        if label in seen:  # A → B → A: the same scores as the first time
            assert got == pytest.approx(seen[label], abs=1e-6)
        seen[label] = got
        if label == "routed":
            assert (vl.num_layers, vl.rebuilds) == (5, 1)
    # back to the native depth: the first engine was kept, nothing rebuilt
    assert (vl.num_layers, vl.rebuilds) == (4, 1)
    assert vl.last_load["workers"][0]["tensors"] == len(list(plan(a).jobs))
    family = json.loads((zoo / "base" / "config.json").read_text())["model_type"]
    print(f"agreement {family}:", json.dumps(seen))


def test_workers_run_this_checkout(engines: tuple[VLLMEngine, HFEngine]) -> None:
    """vLLM's worker processes import the same evomerge as this process (PYTHONPATH is
    inherited by the spawned workers): the code under test is the code that runs there."""
    (where,) = engines[0]._rpc("evomerge_where")
    assert where["evomerge"] == str(Path(evomerge.__file__).resolve())
    assert where["device"] == "cpu"


def test_generate_sees_the_new_weights_after_a_swap(
    engines: tuple[VLLMEngine, HFEngine], zoo: Path
) -> None:
    """Same prompt, new weights, new answer: the prefix cache is reset by every swap. Without
    the reset, vLLM reuses the previous model's cached key/values (shown by the control)."""
    vl, hf = engines
    assert vl.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
    tok = vl.tokenizer
    old, new = _single(zoo, "rev9"), _single(zoo, "add1")
    # a prompt on which the two experts answer differently (the transformers engine decides;
    # the unit zoo's models are weak, so not every prompt tells them apart)
    texts = [
        "rev:abcdefgh=hgfedcba rev:ijklmnop=ponmlkji rev:qrstuv=",
        "add:3+4=7 add:2+5=7 add:1+1=2 add:6+2=8 add:4+4=8 add:3+3=",
    ]
    reqs = [
        [GenerationRequest(tuple(tok(t, add_special_tokens=False)["input_ids"]), 8)] for t in texts
    ]
    by_recipe = []
    for recipe in (old, new):
        hf.load_weights(materialize(plan(recipe), "cpu"), num_layers=plan(recipe).num_layers)
        by_recipe.append([hf.generate(r)[0] for r in reqs])
    pick = next(i for i, (a, b) in enumerate(zip(*by_recipe, strict=True)) if a != b)
    req = reqs[pick]
    ids = req[0].prompt
    assert 32 <= len(ids) <= vl.max_length - 8  # a full 32-token block gets cached
    answers = {}
    for label, recipe in (("old", old), ("new", new)):
        _load_both(vl, hf, recipe)
        answers[label] = hf.generate(req)[0]
        assert vl.generate(req) == [answers[label]], label
        assert vl.generate(req) == [answers[label]], label  # now served from the prefix cache
    assert answers["old"] != answers["new"]
    # Control: swap back without the reset: the cached blocks of "new" leak into "old".
    _load_both(vl, hf, old)
    vl.generate(req)  # cache "old"'s blocks
    vl._rpc("evomerge_load_recipe", recipe_to_payload(new))  # no reset_prefix_cache
    hf.load_weights(materialize(plan(new), "cpu"))
    stale = vl.generate(req)[0]
    assert vl.llm.reset_prefix_cache() is True
    assert vl.generate(req) == [answers["new"]]
    assert stale != answers["new"], "a stale prefix cache went unnoticed"


def test_worker_error_reaches_the_caller_as_engine_error(
    engines: tuple[VLLMEngine, HFEngine], zoo: Path
) -> None:
    vl, _ = engines
    with pytest.raises(EngineError, match="boom in the worker"):
        vl._rpc("evomerge_fail", "boom in the worker")
    # A recipe of another depth sent past the engine's own check: the worker refuses it.
    routed = _recipe(zoo, "linear", routing=[{"layer": 0}, {"layer": 1}])
    with pytest.raises(EngineError, match="makes 2 layers but this vLLM engine holds 4"):
        vl._rpc("evomerge_load_recipe", recipe_to_payload(routed))
    # The engine still works afterwards.
    _load_both(vl, engines[1], _recipe(zoo, "linear"))
    assert vl.loglikelihood([LoglikelihoodRequest((3, 4), (5,))])


def test_prompt_of_max_model_len_is_refused_before_vllm(
    engines: tuple[VLLMEngine, HFEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    vl, hf = engines
    n = vl.max_model_len
    assert vl.max_length == n - 1
    longest = LoglikelihoodRequest(tuple([5] * (n - 2)), (6,))
    ok = vl.loglikelihood([longest])[0]
    assert ok.logprob == pytest.approx(hf.loglikelihood([longest])[0].logprob, abs=LOGPROB_ATOL)
    # vLLM itself rejects a prompt of max_model_len tokens (why our limit is one less) ...
    params = vl._vllm.SamplingParams(max_tokens=1, prompt_logprobs=0)
    with pytest.raises(Exception, match=str(n)):
        vl.llm.generate([{"prompt_token_ids": [5] * n}], params, use_tqdm=False)
    # ... and we refuse it first, naming the request, without calling vLLM.
    calls = []
    monkeypatch.setattr(vl.llm, "generate", lambda *a, **k: calls.append(a))
    too_long = LoglikelihoodRequest(tuple([5] * (n - 1)), (6,))
    with pytest.raises(EngineError, match=rf"request 1 of 2: {n} tokens.*{n - 1}"):
        vl.loglikelihood([longest, too_long])
    with pytest.raises(EngineError, match="generation request 0 of 1"):
        vl.generate([GenerationRequest(tuple([5] * (n - 4)), 4)])
    assert calls == []

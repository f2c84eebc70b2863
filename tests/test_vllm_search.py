"""A search through vLLM: the same experiment, seed and budget with ``workers.engine: vllm`` and
``hf`` gives the same archive (the same recipes in the same order, scores within float32
tolerance). Real vLLM (``make test-vllm``); one vLLM engine, a few evaluations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from unit_experiment import experiment, write_experiment

from evomerge.run import lifecycle as search

pytestmark = pytest.mark.vllm

if os.environ.get("EVOMERGE_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401
else:
    pytest.importorskip("vllm", reason="vLLM is not installed here: run `make test-vllm`")

BUDGET = 8
SCORE_ATOL = 1e-6  # token accuracy: a share of greedy-correct tokens, equal unless a tie flips


def _experiment(engine: str) -> dict[str, Any]:
    workers: dict[str, Any] = {"engine": engine, "dtype": "float32", "threads": 1}
    if engine == "vllm":
        workers["engine_options"] = {
            "enforce_eager": True,
            "gpu_memory_utilization": 0.1,  # on CPU: the share of host RAM
            "kv_cache_space_gb": 1,
        }
    return experiment(
        f"vllm-search-{engine}",
        objectives=[
            {"task": "rev9", "estimator": "subsample:16"},
            {"task": "shift3", "estimator": "subsample:16"},
        ],
        budget=BUDGET,
        workers=workers,
    )


def _run(engine: str, zoo: Path, tmp: Path) -> list[Any]:
    path = write_experiment(tmp, _experiment(engine), f"{engine}.yaml")
    s, budget = search.start(path, tmp / engine, zoo=zoo)
    try:
        out = s.run(budget)
    finally:
        s.close()
    assert out.status == "finished" and out.evaluations == BUDGET
    return s.archive.evaluations


def test_search_through_vllm_equals_the_transformers_run(unit_zoo: Path, tmp_path: Path) -> None:
    hf = _run("hf", unit_zoo, tmp_path)
    vl = _run("vllm", unit_zoo, tmp_path)
    assert [e.recipe_hash for e in vl] == [e.recipe_hash for e in hf]
    for a, b in zip(hf, vl, strict=True):
        assert a.ok and b.ok, (a.error, b.error)
        assert b.values == pytest.approx(a.values, abs=SCORE_ATOL), a.number
        assert "load" in b.timings and "merge" not in b.timings  # the merge ran in vLLM
        assert {"merge", "swap"} <= set(a.timings)
    info = search.summary(tmp_path / "vllm")
    assert (info["trials"], info["failed"], info["rebuilds"]) == (BUDGET, 0, 0)
    worst = max(
        abs(x - y)
        for a, b in zip(hf, vl, strict=True)
        for x, y in zip(a.values, b.values, strict=True)
    )
    print(f"search equality: {len(vl)} recipes in the same order, max |Δ score| {worst:.1e}")

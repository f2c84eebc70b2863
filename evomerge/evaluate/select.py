"""Choosing an engine by name, and loading a candidate into whichever was chosen.

:func:`make_engine` is the one place an engine is built from its name, dtype and options (the
search's worker, ``evomerge eval`` and calibration all come here); vLLM is imported only when
chosen. :func:`load_candidate` is the one "swap this recipe in" path: the transformers engine
takes merged tensors (materialized here, on ``device``), the vLLM engine takes the recipe itself
and merges inside its workers (tensors cannot travel through its RPC).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from evomerge.evaluate.engines import Engine, EngineError
from evomerge.evaluate.options import ENGINES, HFOptions, VLLMOptions, engine_options
from evomerge.fileio import validate
from evomerge.killpoints import kill_point

if TYPE_CHECKING:
    from evomerge.checkpoint import ModelSource
    from evomerge.merge.materialize import MergePlan
    from evomerge.recipe import Recipe


@runtime_checkable
class RecipeEngine(Protocol):
    """An engine that takes candidates as recipes and merges them itself (vLLM)."""

    rebuilds: int

    def load_recipe(self, recipe: Recipe) -> None: ...


def make_engine(
    name: str,
    model_dir: str | Path,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 256,
    options: Mapping[str, Any] | HFOptions | VLLMOptions | None = None,
) -> Engine:
    """A resident engine on ``model_dir`` (its weights loaded: candidates are swapped in later).

    ``name``: ``hf`` (transformers, on ``device``) or ``vllm`` (its own devices: the GPUs it
    sees, or the CPU in the CPU build; ``batch_size`` does not apply). ``dtype``: ``float32``,
    ``bfloat16``, ``float16`` or ``auto`` (the checkpoint's). ``options``: that engine's
    (:mod:`evomerge.evaluate.options`)."""
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; choose one of {list(ENGINES)}")
    if isinstance(options, HFOptions | VLLMOptions):
        opts = options
    else:
        opts = validate(
            lambda d: engine_options(name, d),
            dict(options or {}),
            origin=f"{name} engine options",
            error=EngineError,
        )
    if name == "hf":
        from evomerge.evaluate.hf import HFEngine

        assert isinstance(opts, HFOptions)
        return HFEngine(
            model_dir,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            share_prefix=opts.share_prefix,
        )
    from evomerge.evaluate.vllm.engine import VLLMEngine

    assert isinstance(opts, VLLMOptions)
    kw = opts.model_dump(exclude={"kv_cache_space_gb", "block_size"})
    if opts.block_size is not None:
        kw["block_size"] = opts.block_size
    if opts.kv_cache_space_gb is not None:
        # the CPU build sizes its KV cache from this variable, read by the engine's processes
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(opts.kv_cache_space_gb)
    return VLLMEngine(model_dir, dtype=dtype, **kw)


class _Timed:
    """Wraps the tensor stream so merge time (inside the generator) and swap time (in the
    engine's copies) are told apart."""

    def __init__(self, stream: Iterator[tuple[str, torch.Tensor]]) -> None:
        self.stream, self.seconds = stream, 0.0

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        while True:
            t0 = time.perf_counter()
            try:
                item = next(self.stream)
            except StopIteration:
                self.seconds += time.perf_counter() - t0
                return
            self.seconds += time.perf_counter() - t0
            kill_point("merge")
            yield item


def load_candidate(
    engine: Engine,
    recipe: Recipe,
    *,
    plan: MergePlan | None = None,
    sources: Mapping[str, ModelSource] | None = None,
    device: str = "cpu",
    merged: list[tuple[str, torch.Tensor]] | None = None,
) -> dict[str, float]:
    """Swap ``recipe``'s merge into ``engine``, in place; returns timings in seconds.

    Tensor engines: the recipe is materialized on ``device`` (from ``plan`` if given, else
    planned over ``sources``) and streamed into ``load_weights``: ``merge`` and ``swap`` are
    timed apart. Recipe engines (vLLM): the recipe travels and is merged in the engine's
    workers: one ``load`` figure. A load that had to build a model of a new depth adds
    ``rebuilds`` (how many were built) and, for vLLM, ``rebuild`` (its seconds). ``merged``:
    the tensors of ``plan``, merged already (a worker's prefetch), streamed as they are."""
    before = getattr(engine, "rebuilds", 0)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if isinstance(engine, RecipeEngine):
        engine.load_recipe(recipe)
        load = time.perf_counter() - t0
        spent = float(getattr(engine, "last_load", {}).get("rebuild_seconds", 0.0))
        timings["load"] = load - spent
        if engine.rebuilds > before:
            timings["rebuild"] = spent
    else:
        from evomerge.merge.materialize import materialize
        from evomerge.merge.materialize import plan as make_plan

        mp = plan if plan is not None else make_plan(recipe, sources)
        stream = _Timed(iter(merged) if merged is not None else materialize(mp, device))
        load_weights: Any = engine.load_weights
        if hasattr(engine, "num_layers"):  # HFEngine: a new depth rebuilds its model
            load_weights(stream, num_layers=mp.num_layers)
        else:
            load_weights(stream)
        load = time.perf_counter() - t0
        timings["merge"], timings["swap"] = stream.seconds, load - stream.seconds
    rebuilt = getattr(engine, "rebuilds", 0) - before
    if rebuilt:
        timings["rebuilds"] = float(rebuilt)
    return timings

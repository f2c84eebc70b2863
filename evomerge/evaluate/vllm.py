"""The vLLM engine (GPU extra): one resident ``vllm.LLM``, candidate weights swapped in place.

vLLM runs its model in worker processes, so a candidate cannot be copied into it from here the
way :class:`~evomerge.evaluate.hf.HFEngine` does. The supported extension point is a *worker
extension*: :class:`EvomergeWorkerExtension` is mixed into every worker
(``LLM(worker_extension_cls=...)``) and :meth:`VLLMEngine.load_recipe` calls it through
``llm.collective_rpc``. Only the recipe travels, as a few hundred bytes of JSON; each worker
opens the sources itself (once, cached), merges on its own GPU and feeds the stream to the
model's ``load_weights``, which fuses q/k/v and gate/up and cuts tensor-parallel shards the way
vLLM's own loader does. Nothing is written to disk and vLLM is never restarted, except when a
routed recipe changes the depth: then the engine is rebuilt once at the new depth from the same
checkpoint's config (``hf_overrides``) with dummy weights, and the recipe is loaded into it.

Everything that needs neither vLLM nor a GPU (prompts and sampling settings as plain data,
parsing prompt log-probabilities, recipe transport, the rebuild decision, the extension method
itself) is a small module-level function or class, so CPU tests cover it. ``import vllm`` happens
only in :class:`VLLMEngine`'s constructor; this module imports without it.

Facts about vLLM this relies on (vLLM 0.33; the docstrings below say where each is used):
``collective_rpc(method, args=...)`` returns one result per worker; a worker holds
``model_runner`` (``get_model()`` / ``.model``) and ``device``; ``model.load_weights`` takes an
iterable of ``(hf_name, full_tensor)`` and returns the set of parameter names it set;
``reset_prefix_cache()`` returns a bool; ``RequestOutput.prompt_logprobs[i]`` maps token ids to
``Logprob(logprob, rank)`` with ``rank`` 1-based and element 0 empty.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from evomerge.checkpoint import ModelSource, layer_count_key, layer_index
from evomerge.evaluate.engines import EngineError, finish_text
from evomerge.evaluate.tasks import GenerationRequest, LoglikelihoodRequest, LoglikelihoodResult
from evomerge.recipe import Recipe

log = logging.getLogger(__name__)

WORKER_EXTENSION = "evomerge.evaluate.vllm.EvomergeWorkerExtension"
INSTALL_HINT = (
    "vLLM is not installed: install the vllm extra on a GPU machine "
    "(pip install 'evomerge[vllm]'); it needs CUDA and its own torch build"
)
# Log-likelihood scoring reads the prompt's log-probabilities and samples one throwaway token.
# prompt_logprobs=1 puts the top-1 token next to the actual one at every position, so greediness
# can be decided even where a vLLM build leaves ``rank`` unset; no text is needed.
LOGLIKELIHOOD_SAMPLING: dict[str, Any] = {
    "prompt_logprobs": 1,
    "max_tokens": 1,
    "temperature": 0.0,
    "detokenize": False,
}


# -- plain-data requests and outputs ---------------------------------------------------------
def loglikelihood_prompts(
    requests: Sequence[LoglikelihoodRequest], max_length: int
) -> list[dict[str, list[int]]]:
    """One token prompt (``TokensPrompt`` is a TypedDict, so a dict is one) per request: the
    context followed by the continuation, whose positions are then read back."""
    prompts = []
    for r in requests:
        if not r.context or not r.continuation:
            raise EngineError("a loglikelihood request needs a context and a continuation")
        ids = [*r.context, *r.continuation]
        if len(ids) > max_length:
            raise EngineError(f"request of {len(ids)} tokens exceeds the context {max_length}")
        prompts.append({"prompt_token_ids": ids})
    return prompts


def generation_sampling(request: GenerationRequest) -> dict[str, Any]:
    """Greedy decoding settings for one request, as keyword arguments of ``SamplingParams``.

    Stop strings let vLLM stop early; the text itself is rebuilt from the token ids by
    :func:`finish_text`, exactly as the transformers engine does, so both engines agree."""
    return {
        "temperature": 0.0,
        "max_tokens": request.max_new_tokens,
        "stop": [s for s in request.stop if s] or None,
    }


def parse_prompt_logprobs(
    prompt_logprobs: Sequence[Mapping[int, Any] | None] | None,
    context_len: int,
    continuation: Sequence[int],
) -> LoglikelihoodResult:
    """Sum the continuation's log-probabilities out of vLLM's ``prompt_logprobs`` and count the
    positions where the actual token was the top-1.

    ``prompt_logprobs[i]`` (element 0 is None: the first token has no context) maps token ids to
    objects with ``.logprob`` and ``.rank`` (1 = argmax). Only positions
    ``context_len .. context_len + len(continuation) - 1`` are read."""
    if prompt_logprobs is None:
        raise EngineError("vLLM returned no prompt log-probabilities (prompt_logprobs unset?)")
    if context_len < 1 or not continuation:
        raise EngineError("a loglikelihood request needs a context and a continuation")
    end = context_len + len(continuation)
    if len(prompt_logprobs) < end:
        raise EngineError(
            f"vLLM returned log-probabilities for {len(prompt_logprobs)} prompt positions, "
            f"expected at least {end}"
        )
    total, greedy = 0.0, 0
    for pos, token in zip(range(context_len, end), continuation, strict=True):
        entry = prompt_logprobs[pos]
        if not entry or token not in entry:
            raise EngineError(f"vLLM gave no log-probability for token {token} at position {pos}")
        total += float(entry[token].logprob)
        greedy += _is_top1(entry, token)
    return LoglikelihoodResult(logprob=total, n_tokens=len(continuation), n_greedy=greedy)


def _is_top1(entry: Mapping[int, Any], token: int) -> bool:
    rank = getattr(entry[token], "rank", None)
    if rank is not None:
        return int(rank) == 1
    # No rank: with prompt_logprobs=1 the entry also holds the top-1 token.
    return float(entry[token].logprob) >= max(float(lp.logprob) for lp in entry.values())


# -- recipe transport ------------------------------------------------------------------------
def recipe_to_payload(recipe: Recipe) -> str:
    """The recipe as compact JSON for ``collective_rpc``: plain data crosses vLLM's process
    boundary cheaply, tensors would be copied through host memory. Source paths are made
    absolute so the worker resolves them as we do."""
    fixed = {}
    for name, src in recipe.sources.items():
        if src.path.startswith("zoo:"):
            raise EngineError(
                f"source {name!r}: {src.path!r} is a zoo path; resolve it with "
                "recipe.with_zoo(ZOO_DIR) before loading the recipe"
            )
        fixed[name] = src.model_copy(update={"path": os.path.abspath(src.path)})
    data = recipe.model_copy(update={"sources": fixed}).model_dump(mode="json")
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def recipe_from_payload(payload: str | bytes | Mapping[str, Any]) -> Recipe:
    """Inverse of :func:`recipe_to_payload`, validated like any recipe."""
    data = json.loads(payload) if isinstance(payload, str | bytes) else dict(payload)
    return Recipe.from_dict(data, origin="recipe sent to the vLLM worker")


# -- engine shape ----------------------------------------------------------------------------
def config_num_layers(config: Mapping[str, Any]) -> int:
    key = layer_count_key(config)
    if key is None:
        raise EngineError("the model's config.json names no layer count (num_hidden_layers...)")
    return int(config[key])


def rebuild_overrides(
    config: Mapping[str, Any], current_layers: int, wanted_layers: int
) -> dict[str, Any] | None:
    """None while the resident engine has the wanted depth (weights are swapped in place);
    otherwise the ``hf_overrides`` that give the checkpoint's config that depth: the layer count
    and the per-layer lists that must follow it, as the checkpoint writer does for routed
    merges."""
    if wanted_layers == current_layers:
        return None
    if wanted_layers < 1:
        raise EngineError(f"a model needs at least one layer, the recipe gives {wanted_layers}")
    key = layer_count_key(config)
    if key is None:
        raise EngineError("the model's config.json names no layer count (num_hidden_layers...)")
    out: dict[str, Any] = {key: wanted_layers}
    for k in ("layer_types", "block_types"):
        if isinstance(config.get(k), list) and config[k]:
            out[k] = (list(config[k]) * wanted_layers)[:wanted_layers]
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


# -- inside the worker -------------------------------------------------------------------------
class SourceCache:
    """Open checkpoints by absolute path, once: a search merges the same sources thousands of
    times and their safetensors headers and memory maps are reused. A source opened under one
    recipe name and asked for under another is a shallow, renamed copy (same maps)."""

    def __init__(self) -> None:
        self._by_path: dict[str, ModelSource] = {}

    def __len__(self) -> int:
        return len(self._by_path)

    def get(self, path: str | Path, name: str) -> ModelSource:
        key = os.path.abspath(path)
        src = self._by_path.get(key)
        if src is None:
            src = self._by_path[key] = ModelSource(key, name=name)
        if src.name != name:
            src = copy.copy(src)
            src.name = name
        return src

    def for_recipe(self, recipe: Recipe) -> dict[str, ModelSource]:
        return {name: self.get(s.path, name) for name, s in recipe.sources.items()}

    def close(self) -> None:
        for src in self._by_path.values():
            src.close()
        self._by_path.clear()


class EvomergeWorkerExtension:
    """Mixed into each vLLM worker by ``LLM(worker_extension_cls=WORKER_EXTENSION)``; its
    methods run in the worker, called by ``llm.collective_rpc(name, args=...)``.

    vLLM refuses an extension whose attribute names clash with the worker's, and it never calls
    the extension's ``__init__``: every name here starts with ``evomerge_`` and state is created
    on first use."""

    def evomerge_load_recipe(self, payload: str) -> dict[str, Any]:
        """Merge the recipe on this worker's device and load it into the resident model."""
        from evomerge.merge.materialize import materialize, plan  # merging happens in the worker

        recipe = recipe_from_payload(payload)
        mp = plan(recipe, _worker_sources(self).for_recipe(recipe))
        model = _resident_model(self)
        resident = _model_layers(model)
        if resident is not None and resident != mp.num_layers:
            raise EngineError(
                f"the recipe makes {mp.num_layers} layers but this vLLM engine holds {resident}; "
                "rebuild the engine at the new depth (VLLMEngine.load_recipe does)"
            )
        return _load_into(model, materialize(mp, _worker_device(self, model)), self)

    def evomerge_load_tensors(self, tensors: Sequence[Sequence[Any]]) -> dict[str, Any]:
        """Load ``(name, tensor)`` pairs that were sent over RPC (the slow path)."""
        model = _resident_model(self)
        device = _worker_device(self, model)
        return _load_into(model, ((str(n), t.to(device)) for n, t in tensors), self)

    def evomerge_close_sources(self) -> int:
        """Drop the cached sources (their memory maps); returns how many were open."""
        cache = _worker_sources(self)
        n = len(cache)
        cache.close()
        return n


def _worker_sources(worker: Any) -> SourceCache:
    cache = getattr(worker, "_evomerge_sources", None)
    if cache is None:
        cache = SourceCache()
        worker._evomerge_sources = cache
    return cache


def _resident_model(worker: Any) -> Any:
    """The worker's ``nn.Module`` that owns ``load_weights``. vLLM 0.33's GPU worker holds it as
    ``model_runner.get_model()`` (unwrapped from CUDA-graph wrappers) or ``model_runner.model``."""
    runner = getattr(worker, "model_runner", None)
    model = None
    if runner is not None:
        get_model = getattr(runner, "get_model", None)
        model = get_model() if callable(get_model) else getattr(runner, "model", None)
    if model is not None and not hasattr(model, "load_weights") and hasattr(model, "unwrap"):
        model = model.unwrap()
    if model is None or not callable(getattr(model, "load_weights", None)):
        raise EngineError(
            f"cannot reach the model inside this vLLM worker ({type(worker).__name__}): "
            "expected worker.model_runner.get_model() or .model with a load_weights method, as "
            "in vLLM 0.33; this vLLM version moved it"
        )
    return model


def _worker_device(worker: Any, model: Any) -> torch.device:
    for dev in (
        getattr(worker, "device", None),
        getattr(getattr(worker, "model_runner", None), "device", None),
    ):
        if isinstance(dev, torch.device | str):
            return torch.device(dev)
    params = getattr(model, "parameters", None)
    if callable(params):
        first = next(iter(params()), None)
        if first is not None:
            return first.device
    raise EngineError("cannot tell which device this vLLM worker computes on")


def _model_layers(model: Any) -> int | None:
    named = getattr(model, "named_parameters", None)
    if not callable(named):
        return None
    layers = [i for n, _ in named() if (i := layer_index(n)) is not None]
    return max(layers) + 1 if layers else None


def _load_into(
    model: Any, tensors: Iterable[tuple[str, torch.Tensor]], worker: Any
) -> dict[str, Any]:
    """Feed the stream to ``model.load_weights`` in one call (vLLM fuses and shards as it reads)
    and check that every parameter was set, as vLLM's own loader checks."""
    tally = {"tensors": 0, "bytes": 0}

    def counted() -> Iterator[tuple[str, torch.Tensor]]:
        for name, t in tensors:
            tally["tensors"] += 1
            tally["bytes"] += t.numel() * t.element_size()
            yield name, t

    t0 = time.perf_counter()
    with torch.no_grad():
        loaded = model.load_weights(counted())
    device = _worker_device(worker, model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if isinstance(loaded, set | frozenset) and callable(getattr(model, "named_parameters", None)):
        missing = sorted({n for n, _ in model.named_parameters()} - set(loaded))
        if missing:
            raise EngineError(
                f"the state left {len(missing)} parameter(s) of the resident model unset "
                f"(first: {missing[0]!r}): a partial swap would mix two models"
            )
    return {**tally, "seconds": time.perf_counter() - t0, "device": str(device)}


# -- the engine --------------------------------------------------------------------------------
def _max_model_len(llm: Any) -> int:
    """The engine's context length (``llm.llm_engine.model_config`` in vLLM 0.33)."""
    for owner in (getattr(llm, "llm_engine", None), llm):
        cfg = getattr(owner, "model_config", None)
        if cfg is not None and getattr(cfg, "max_model_len", None):
            return int(cfg.max_model_len)
    raise EngineError("cannot read max_model_len from this vLLM engine")


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise EngineError(INSTALL_HINT) from e
    return vllm


class VLLMEngine:
    """The :class:`~evomerge.evaluate.engines.Engine` on vLLM, plus :meth:`load_recipe`.

    Built once from a checkpoint directory (the base or any source: it gives the architecture,
    config and tokenizer). Requests are tokenized with the checkpoint's Hugging Face tokenizer,
    the same one :class:`~evomerge.evaluate.hf.HFEngine` uses, so both engines score identical
    token ids. Tensor parallel is supported (each rank merges whole tensors and keeps its
    shard); quantized engines are not (``load_weights`` would need vLLM's layer-wise reload).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str | torch.dtype = "auto",
        seed: int = 0,
        gpu_memory_utilization: float = 0.5,
        enforce_eager: bool = False,
        enable_prefix_caching: bool = True,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        load_weights: bool = True,
        **llm_extra: Any,
    ):
        self._vllm = _import_vllm()
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        self.config: dict[str, Any] = json.loads((self.model_dir / "config.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self._settings: dict[str, Any] = dict(
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            **llm_extra,
        )
        self.num_layers = config_num_layers(self.config)
        self.llm: Any = self._vllm.LLM(
            **llm_kwargs(
                self.model_dir, load_format="auto" if load_weights else "dummy", **self._settings
            )
        )
        self.max_length = _max_model_len(self.llm)
        self.last_load: dict[str, Any] = {}  # timing and per-worker replies of the last swap
        self._sources = SourceCache()
        self._ll_params = self._vllm.SamplingParams(**LOGLIKELIHOOD_SAMPLING)

    # -- weights -------------------------------------------------------------------------------
    def load_recipe(self, recipe: Recipe) -> None:
        """Merge ``recipe`` inside the workers and swap it in (the fast path: only JSON crosses
        the process boundary). The recipe is planned here first, so a bad recipe fails in this
        process with evomerge's own error, and a change of depth is seen before any merge."""
        from evomerge.merge.materialize import plan

        mp = plan(recipe, self._sources.for_recipe(recipe))
        self._ensure_layers(mp.num_layers)
        t0 = time.perf_counter()
        replies = self.llm.collective_rpc("evomerge_load_recipe", args=(recipe_to_payload(recipe),))
        self._after_swap()
        self.last_load = {"seconds": time.perf_counter() - t0, "workers": replies}
        log.debug("recipe %s loaded: %s", recipe.content_hash(), self.last_load)

    def load_weights(
        self, tensors: Iterable[tuple[str, torch.Tensor]], *, num_layers: int | None = None
    ) -> None:
        """Load tensors the caller already holds. The slow path: every tensor is copied to host
        memory and serialized to each worker; prefer :meth:`load_recipe`. The depth is taken
        from the tensor names unless ``num_layers`` is given."""
        named = [(n, t.detach().to("cpu").contiguous()) for n, t in tensors]
        if num_layers is None:
            layers = [i for n, _ in named if (i := layer_index(n)) is not None]
            num_layers = max(layers) + 1 if layers else self.num_layers
        self._ensure_layers(num_layers)
        t0 = time.perf_counter()
        replies = self.llm.collective_rpc("evomerge_load_tensors", args=(named,))
        self._after_swap()
        self.last_load = {"seconds": time.perf_counter() - t0, "workers": replies}

    def _ensure_layers(self, wanted: int) -> None:
        overrides = rebuild_overrides(self.config, self.num_layers, wanted)
        if overrides is None:
            return
        log.info(
            "rebuilding the vLLM engine: %d → %d layers (a routed recipe changes the depth; "
            "weights cannot be swapped into a model of another shape)",
            self.num_layers,
            wanted,
        )
        self.close()
        self.llm = self._vllm.LLM(
            **llm_kwargs(
                self.model_dir, load_format="dummy", hf_overrides=overrides, **self._settings
            )
        )
        self.num_layers = wanted

    def _after_swap(self) -> None:
        # vLLM does not drop cached prefixes when weights change: without this, generation
        # would reuse key/values computed by the previous candidate.
        if self.llm.reset_prefix_cache() is not True:
            raise EngineError(
                "vLLM could not reset its prefix cache after the weight swap (requests still "
                "running?); cached prefixes of the previous model would leak into the scores"
            )

    def close(self) -> None:
        """Shut the engine down and free its GPU memory (also before a rebuild)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and callable(getattr(core, "shutdown", None)):
            core.shutdown()
        self.llm = None
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
        if not requests:
            return []
        prompts = [{"prompt_token_ids": list(r.prompt)} for r in requests]
        params = [self._vllm.SamplingParams(**generation_sampling(r)) for r in requests]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            finish_text(o.outputs[0].token_ids, self.tokenizer, r.stop)
            for o, r in zip(outs, requests, strict=True)
        ]

"""The worker extension: code that runs inside vLLM's worker processes.

``LLM(worker_extension_cls=WORKER_EXTENSION)`` mixes :class:`EvomergeWorkerExtension` into every
worker; the engine calls it with ``llm.collective_rpc("evomerge_load_recipe", args=(json,))``.
Only the recipe crosses the process boundary. The worker opens the sources (once, cached), merges
on its own device, casts to the engine's dtype and hands the stream to vLLM's own in-place reload,
``Worker.reload_weights(weights_iterator=...)`` (vLLM 0.32 CPU and 0.33 GPU alike): it runs
under ``set_current_vllm_config``, takes Hugging Face names and full tensors, fuses q/k/v and
gate/up, cuts tensor-parallel shards, re-runs the per-layer weight processing (the CPU backend
repacks linear weights, quantized layers re-quantize) and copies the result into the existing
storage, so captured CUDA graphs stay valid. A plain second ``model.load_weights`` does not:
on CPU it meets the repacked (empty) parameters and fails.

An exception raised here reaches the caller as ``Exception("Call to evomerge_load_recipe method
failed: <message>")``; the engine re-raises it as :class:`EngineError`.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from evomerge.checkpoint import ModelSource, layer_count_key, rename_layer
from evomerge.evaluate.engines import EngineError
from evomerge.evaluate.vllm.transport import recipe_from_payload
from evomerge.recipe import Recipe

WORKER_EXTENSION = "evomerge.evaluate.vllm.extension.EvomergeWorkerExtension"


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


def expected_names(checkpoint: ModelSource, depth: int) -> set[str]:
    """The Hugging Face tensor names a model of ``checkpoint``'s family at ``depth`` layers
    loads: its non-layer tensors, and its layer-0 tensors renamed to every layer."""
    names = set(checkpoint.non_layer_tensors())
    for name in checkpoint.layer_tensors(0):
        names.update(rename_layer(name, i) for i in range(depth))
    return names


class EvomergeWorkerExtension:
    """Mixed into each vLLM worker; its methods run there, called through ``collective_rpc``.

    vLLM refuses an extension whose attribute names clash with the worker's, and it never calls
    the extension's ``__init__``: every name here starts with ``evomerge_`` and state is created
    on first use."""

    def evomerge_load_recipe(self, payload: str) -> dict[str, Any]:
        """Merge the recipe on this worker's device and reload it into the resident model.
        Returns plain data: tensors and bytes loaded, seconds, device."""
        from evomerge.merge.materialize import materialize, plan  # merging happens here

        recipe = recipe_from_payload(payload)
        cache = self.evomerge_sources()
        mp = plan(recipe, cache.for_recipe(recipe))
        model_config = self.vllm_config.model_config
        text_config = model_config.hf_text_config.to_dict()
        resident = int(text_config[layer_count_key(text_config) or "num_hidden_layers"])
        if mp.num_layers != resident:
            raise EngineError(
                f"the recipe makes {mp.num_layers} layers but this vLLM engine holds {resident}; "
                "a new depth needs a new engine (VLLMEngine.load_recipe builds one)"
            )
        checkpoint = cache.get(model_config.model, "resident")
        want = expected_names(checkpoint, resident)
        dtype, device = model_config.dtype, torch.device(self.device)
        fed: set[str] = set()
        tally = {"tensors": 0, "bytes": 0}

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for name, t in materialize(mp, device):
                if name not in want:
                    raise EngineError(
                        f"the recipe makes tensor {name!r}, which the resident model "
                        f"({checkpoint.path}) has no place for"
                    )
                fed.add(name)
                t = t.to(dtype)
                tally["tensors"] += 1
                tally["bytes"] += t.numel() * t.element_size()
                yield name, t

        t0 = time.perf_counter()
        self.reload_weights(weights_iterator=stream())  # vLLM's Worker.reload_weights
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        retied = self.evomerge_refresh_tied_head()
        missing = sorted(want - fed)
        if missing:
            # vLLM only logs this ("Failed to load weights") and keeps the old values.
            raise EngineError(
                f"the recipe left {len(missing)} tensor(s) of the resident model unset "
                f"(first: {missing[0]!r}): the engine now mixes two models; load a full recipe"
            )
        return {
            **tally,
            "seconds": time.perf_counter() - t0,
            "device": str(device),
            "retied_head": retied,
        }

    def evomerge_refresh_tied_head(self) -> bool:
        """Re-derive a tied output head from the reloaded embedding; True if there was one.

        A tied head shares the embedding's tensor but gets no weights of its own in a reload,
        so vLLM's layer-wise reload leaves it unprocessed ("ParallelLMHead: Failed to load
        weights" in the log) and keeps what its processing derived from the *old* values: on
        the CPU backend a prepacked GEMM weight, so logits came from the previous candidate's
        embedding (found by the Qwen2 zoo, whose embeddings are tied). Its values are the new
        ones already (shared storage): re-running its processing rebuilds what derives from
        them."""
        config = self.vllm_config.model_config.hf_text_config
        if not getattr(config, "tie_word_embeddings", False):
            return False
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        method = getattr(head, "quant_method", None)
        if head is None or method is None or not hasattr(head, "weight"):
            return False
        from vllm.config import set_current_vllm_config

        with set_current_vllm_config(self.vllm_config), torch.no_grad():
            method.process_weights_after_loading(head)
        return True

    def evomerge_sources(self) -> SourceCache:
        cache = getattr(self, "_evomerge_source_cache", None)
        if cache is None:
            cache = self._evomerge_source_cache = SourceCache()
        return cache

    def evomerge_close_sources(self) -> int:
        """Drop the cached sources (their memory maps); returns how many were open."""
        cache = self.evomerge_sources()
        n = len(cache)
        cache.close()
        return n

    def evomerge_where(self) -> dict[str, str]:
        """Which evomerge this worker imported, and its device (checks that a worker process
        runs the caller's code, e.g. a source checkout on PYTHONPATH)."""
        import evomerge

        return {"evomerge": str(Path(evomerge.__file__).resolve()), "device": str(self.device)}

    def evomerge_fail(self, message: str) -> None:
        """Raise in the worker (tests prove that the worker's message reaches the caller)."""
        raise EngineError(message)

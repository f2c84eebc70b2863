"""Engine names and the options each engine takes, as pydantic models validated at the door.

An experiment's ``workers: {engine: vllm, dtype: bfloat16, engine_options: {...}}`` and
``evomerge eval --engine`` both go through :func:`engine_options`: an unknown key, or a key the
chosen engine does not take, is refused by name (``workers.engine_options.foo: ...``). This
module needs neither torch nor vLLM, so an experiment file is checked before anything heavy loads.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

EngineName = Literal["hf", "vllm"]
EngineDtype = Literal["float32", "bfloat16", "float16", "auto"]
ENGINES: tuple[str, ...] = ("hf", "vllm")
SHARE_PREFIX = 16  # the transformers engine's default (HFOptions.share_prefix)


class _Options(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HFOptions(_Options):
    """Transformers engine settings beyond ``workers``' own device, dtype and batch size."""

    # A prefix every request of a batch shares (a chat template's system prompt, few-shot
    # examples) is run once and its KV cache reused by the batch, when at least this many
    # tokens long; 0: never (vLLM's prefix caching does the same on its engine).
    share_prefix: int = Field(SHARE_PREFIX, ge=0)


class VLLMOptions(_Options):
    """``vllm.LLM`` settings evomerge passes through (the rest stay vLLM's defaults)."""

    # share of the GPU's memory vLLM may take (on the CPU build: of host RAM; its default 0.92
    # fails there)
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0)
    max_model_len: int | None = Field(None, ge=2)  # default: the model's context length
    enforce_eager: bool = False  # True: no CUDA graphs (faster start, slower steps)
    tensor_parallel_size: int = Field(1, ge=1)
    enable_prefix_caching: bool = True  # reset after every swap either way
    # CPU build only: the KV cache's size in whole GiB (sets VLLM_CPU_KVCACHE_SPACE, which
    # vLLM reads as an integer, for the engine's processes)
    kv_cache_space_gb: int | None = Field(None, ge=1)
    block_size: int | None = Field(None, ge=1)  # KV-cache block (CPU default 128)
    max_engines: int = Field(1, ge=1)  # engines of different depths kept resident (routing)
    seed: int = 0


OPTIONS: dict[str, type[_Options]] = {"hf": HFOptions, "vllm": VLLMOptions}


def engine_options(engine: str, options: dict[str, Any] | None) -> _Options:
    """``options`` validated against ``engine``'s model (pydantic ``ValidationError`` naming the
    key otherwise)."""
    if engine not in OPTIONS:
        raise ValueError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
    model = OPTIONS[engine]
    try:
        return model.model_validate(options or {})
    except ValidationError as e:
        # pydantic's "Extra inputs are not permitted" does not say what is permitted
        known = ", ".join(model.model_fields) or "none"
        errors: list[Any] = []
        for err in e.errors():
            if err["type"] == "extra_forbidden":
                err = {
                    "type": PydanticCustomError(
                        "unknown_engine_option",
                        "the {engine} engine takes no such option (its options: {known})",
                        {"engine": engine, "known": known},
                    ),
                    "loc": err["loc"],
                    "input": err["input"],
                }
            errors.append(err)
        raise ValidationError.from_exception_data(e.title, errors) from None

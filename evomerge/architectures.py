"""Model families: which tensors are attention, MLP, norms, embeddings and the head, where the
blocks live, and where a routed layer's input scale folds into the weights.

One :class:`Architecture` per family, looked up by ``config.json``'s ``model_type``. Tensor
names are matched by module path (``.weight``/``.bias`` dropped, so Qwen2's q/k/v biases are
attention like their weights): inside a block relative to ``layers.N.``, elsewhere as the full
path or a suffix of it (a wrapped ``language_model.model.norm`` is ``model.norm``). A tensor
a family's table does not list is ``other``.

A family without a table still merges: its tensors are classified by common name fragments
(:func:`guess_kind`), which is all a uniform merge or a routed copy with scale 1 needs. What a
wrong guess would silently get wrong is refused, naming the ``model_type``: per-module
parameters (attention/mlp/... values) and routing scales, which fold into the output
projections. To support a family, register its table before merging::

    from evomerge.architectures import LLAMA, register_architecture
    register_architecture(dataclasses.replace(LLAMA, model_type="my_llama_variant"))

This module depends on nothing else in evomerge.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class ModuleKind(str, Enum):
    """What a tensor is part of; search spaces and recipes give each kind its own parameters."""

    attention = "attention"
    mlp = "mlp"
    norm = "norm"
    embedding = "embedding"
    head = "head"
    other = "other"


@dataclass(frozen=True)
class Architecture:
    """One family's table. Block entries are module paths inside a block (``self_attn.q_proj``);
    embedding, head and top-level norm entries are paths from the model root (``model.norm``).
    ``fold_points`` are a block's output projections, the only writes to the residual stream; a
    family lists them only if its blocks read the stream through scale-invariant norms alone
    (pre-norm RMSNorm/LayerNorm), where a routing scale folds exactly into them."""

    model_type: str
    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    norm: tuple[str, ...]
    embedding: tuple[str, ...]
    head: tuple[str, ...]
    layers: str = "model.layers"  # the per-layer prefix: block i's tensors are "model.layers.i.…"
    fold_points: tuple[str, ...] = ()
    _block: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _kinds: dict[str, ModuleKind] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        block = re.compile(rf"(^|\.){re.escape(self.layers)}\.\d+\.")
        kinds: dict[str, ModuleKind] = {}
        for kind in ModuleKind:
            for module in getattr(self, kind.value, ()):
                kinds.setdefault(module, kind)
        object.__setattr__(self, "_block", block)
        object.__setattr__(self, "_kinds", kinds)

    def kind(self, name: str) -> ModuleKind:
        for module in self._paths(name):
            kind = self._kinds.get(module)
            if kind is not None:
                return kind
        return ModuleKind.other

    def is_fold_point(self, name: str) -> bool:
        return (
            self._block.search(name) is not None and _module(name, self._block) in self.fold_points
        )

    def _paths(self, name: str) -> list[str]:
        """The module paths a tensor name may be listed under, most specific first."""
        if self._block.search(name):
            return [_module(name, self._block)]
        module = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
        parts = module.split(".")
        return [".".join(parts[i:]) for i in range(len(parts))]


def _module(name: str, block: re.Pattern[str]) -> str:
    m = block.search(name)
    assert m is not None
    local = name[m.end() :]
    return local.rsplit(".", 1)[0] if local.endswith((".weight", ".bias")) else local


LLAMA = Architecture(
    model_type="llama",
    attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    mlp=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    norm=("input_layernorm", "post_attention_layernorm", "model.norm"),
    embedding=("model.embed_tokens",),
    head=("lm_head",),
    fold_points=("self_attn.o_proj", "mlp.down_proj"),
)

_TABLES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture, *, replace: bool = False) -> Architecture:
    """Make a family known (by ``arch.model_type``); refuses to shadow one unless ``replace``."""
    if arch.model_type in _TABLES and not replace:
        raise ValueError(f"architecture {arch.model_type!r} is already registered")
    _TABLES[arch.model_type] = arch
    return arch


def _like_llama(model_type: str, **changes: Any) -> Architecture:
    fields = {k: getattr(LLAMA, k) for k in ("attention", "mlp", "norm", "embedding", "head")}
    return Architecture(
        model_type=model_type, **{**fields, "fold_points": LLAMA.fold_points, **changes}
    )


register_architecture(LLAMA)
register_architecture(_like_llama("mistral"))
register_architecture(_like_llama("qwen2"))  # q/k/v_proj carry biases: module paths cover them
register_architecture(
    _like_llama("qwen3", norm=(*LLAMA.norm, "self_attn.q_norm", "self_attn.k_norm"))
)


def known_families() -> list[str]:
    return sorted(_TABLES)


def architecture_of(config: Mapping[str, Any]) -> Architecture | None:
    """The table for a checkpoint's ``config.json``, or None for a family without one."""
    return _TABLES.get(str(config.get("model_type")))


def unknown_family(config: Mapping[str, Any]) -> str:
    """Why a family without a table is refused where a guess could be wrong, and the remedy."""
    return (
        f"model_type {config.get('model_type')!r} has no architecture table (known: "
        f"{known_families()}); register one with evomerge.architectures.register_architecture"
    )


# ---------------------------------------------------------------------------------------------
# families without a table: common name fragments

_NORM_HINTS = ("norm", "ln_", "ln1", "ln2", "layernorm")
_EMBED_HINTS = ("embed_tokens", "wte", "wpe", "embed_in", "word_embeddings", "embed_positions")
_HEAD_HINTS = ("lm_head", "embed_out", "output.weight")
_ATTN_HINTS = ("attn", "attention", "q_proj", "k_proj", "v_proj", "o_proj", "query_key_value")
_MLP_HINTS = (
    "mlp",
    "feed_forward",
    "ffn",
    "gate_proj",
    "up_proj",
    "down_proj",
    "c_fc",
    "fc1",
    "fc2",
    "dense_h_to_4h",
    "dense_4h_to_h",
    "experts",
)


def guess_kind(name: str) -> ModuleKind:
    """A tensor's kind from common HF name fragments (GPT-2, NeoX, Phi, Gemma... name theirs this
    way). Norms are checked first: ``post_attention_layernorm`` is a norm, not attention."""
    leaf = name.lower()
    parts = leaf.split(".")
    if any(h in p for p in parts for h in _NORM_HINTS):
        return ModuleKind.norm
    if any(h in leaf for h in _EMBED_HINTS):
        return ModuleKind.embedding
    if any(h in leaf for h in _HEAD_HINTS):
        return ModuleKind.head
    if any(h in leaf for h in _ATTN_HINTS):
        return ModuleKind.attention
    if any(h in leaf for h in _MLP_HINTS):
        return ModuleKind.mlp
    return ModuleKind.other


def module_kind(name: str, arch: Architecture | None = None) -> ModuleKind:
    """A tensor's kind: from its family's table, else guessed from its name."""
    return arch.kind(name) if arch is not None else guess_kind(name)

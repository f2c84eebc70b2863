"""The transformers engine: one resident model per worker, weights swapped in place.

Built once from a checkpoint's config and tokenizer; each candidate's tensors are copied into the
existing parameters (``copy_``), so no model is re-instantiated and nothing touches the disk.
Requests are sorted by length and batched; the same request set always forms the same batches,
so scores are bit-identical whether weights came from a swap or from a saved checkpoint.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from evomerge.dtypes import to_torch
from evomerge.evaluate.engines import EngineError, finish_text
from evomerge.evaluate.options import SHARE_PREFIX
from evomerge.evaluate.tasks import GenerationRequest, LoglikelihoodRequest, LoglikelihoodResult

log = logging.getLogger(__name__)


def _shared_prefix(seqs: Sequence[Sequence[int]], limit: int) -> int:
    """How many leading tokens every sequence shares, at most ``limit``."""
    n = 0
    first = seqs[0]
    while n < limit and all(len(s) > n and s[n] == first[n] for s in seqs):
        n += 1
    return n


def _dtype_name(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    try:
        return to_torch(str(name))
    except KeyError as e:
        raise EngineError(str(e)) from None


class HFEngine:
    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "cpu",
        dtype: torch.dtype | str | None = None,
        batch_size: int = 256,
        load_weights: bool = True,
        share_prefix: int = SHARE_PREFIX,
    ):
        """``dtype``: a torch dtype, a name (``bfloat16``), ``"auto"`` (the checkpoint's) or
        None (float32). ``share_prefix``: the shortest prefix shared by a batch's requests that
        is run once for them all (:class:`~evomerge.evaluate.options.HFOptions`; 0: never)."""
        self.share_prefix = share_prefix
        self.model_dir = Path(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        config = AutoConfig.from_pretrained(self.model_dir)
        if isinstance(dtype, str) and dtype != "auto":
            dtype = _dtype_name(dtype)
        if dtype == "auto":  # the checkpoint's own dtype, float32 when it names none
            named = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
            dtype = named if isinstance(named, torch.dtype) else _dtype_name(named)
        dtype = dtype or torch.float32
        if load_weights:
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        self._attach(model, tokenizer, device=device, batch_size=batch_size, label=str(model_dir))

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, tokenizer: Any, *, batch_size: int = 256
    ) -> HFEngine:
        """An engine around a copy of an in-memory model, on its device (the zoo scores its
        models as it trains them, before any is saved)."""
        engine = cls.__new__(cls)
        engine.model_dir = None
        engine.share_prefix = SHARE_PREFIX
        param = next(model.parameters())
        engine._attach(
            copy.deepcopy(model),
            tokenizer,
            device=str(param.device),
            batch_size=batch_size,
            label=type(model).__name__,
        )
        return engine

    def _attach(
        self, model: torch.nn.Module, tokenizer: Any, *, device: str, batch_size: int, label: str
    ) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        self.config = model.config
        self.dtype = next(model.parameters()).dtype
        self.rebuilds = 0  # models built after the first (a routed recipe changed the depth)
        self._set_model(model)
        vocab = self.model.get_input_embeddings().weight.shape[0]
        if len(self.tokenizer) > vocab:
            raise EngineError(
                f"{label}: the tokenizer has {len(self.tokenizer)} tokens but the model's "
                f"embedding has {vocab} rows; they do not belong together"
            )
        self.max_length = int(
            getattr(self.config, "max_position_embeddings", None)
            or getattr(self.config, "n_positions", 2048)
        )
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0

    def _set_model(self, model: torch.nn.Module) -> None:
        self.model = model.to(self.device).eval()
        self._params = dict(self.model.state_dict(keep_vars=True))
        # Tied weights appear under two names but share storage: one write sets both.
        self._aliases = {
            n: next(m for m, q in self._params.items() if q.data_ptr() == p.data_ptr())
            for n, p in self._params.items()
        }
        self.num_layers = self.config.num_hidden_layers
        params = inspect.signature(model.forward).parameters
        self._keeps_logits = "logits_to_keep" in params
        # transformers 5.25 renamed `past_key_values` (in and out) to `cache`
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # -- weights -------------------------------------------------------------------------------
    @torch.no_grad()
    def load_weights(
        self, tensors: Iterable[tuple[str, torch.Tensor]], *, num_layers: int | None = None
    ) -> None:
        """Copy a whole state into the model. A recipe that changes the depth needs a model of
        another shape: only then is the model rebuilt (and the log says so)."""
        if num_layers is not None and num_layers != self.num_layers:
            log.info("rebuilding the engine: %d → %d layers", self.num_layers, num_layers)
            self.config.num_hidden_layers = num_layers
            for key in ("layer_types", "block_types"):  # per-layer lists follow the depth
                values = getattr(self.config, key, None)
                if isinstance(values, list) and values:
                    setattr(self.config, key, (values * num_layers)[:num_layers])
            self._set_model(AutoModelForCausalLM.from_config(self.config, dtype=self.dtype))
            self.rebuilds += 1
        seen: set[str] = set()
        for name, t in tensors:
            p = self._params.get(name)
            if p is None:
                raise EngineError(f"tensor {name!r} is not a parameter of the resident model")
            if tuple(p.shape) != tuple(t.shape):
                raise EngineError(
                    f"tensor {name!r}: shape {list(t.shape)} does not fit the resident model's "
                    f"{list(p.shape)}"
                )
            p.data.copy_(t)
            seen.add(self._aliases[name])
        missing = {self._aliases[n] for n in self._params} - seen
        missing = {n for n in missing if not n.endswith(("rotary_emb.inv_freq", "masked_bias"))}
        if missing:
            raise EngineError(
                f"the state lacks tensor {sorted(missing)[0]!r} ({len(missing)} "
                "missing): a partial swap would mix two models"
            )

    # -- scoring -------------------------------------------------------------------------------
    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    @torch.inference_mode()
    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        seqs = [list(r.context) + list(r.continuation) for r in requests]
        for r, s in zip(requests, seqs, strict=True):
            if not r.continuation or not r.context:
                raise EngineError("a loglikelihood request needs a context and a continuation")
            if len(s) > self.max_length:
                raise EngineError(
                    f"request of {len(s)} tokens exceeds the context {self.max_length}"
                )
        out: list[LoglikelihoodResult | None] = [None] * len(requests)
        for batch in self._batches([len(s) for s in seqs]):
            width = max(len(seqs[i]) for i in batch) - 1
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            target = torch.full((len(batch), width), -1, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                s, r = seqs[i], requests[i]
                ids[row, : len(s) - 1] = torch.tensor(s[:-1])
                mask[row, : len(s) - 1] = 1
                # position p predicts token p+1: the continuation's predictions start at len-1
                target[row, len(r.context) - 1 : len(s) - 1] = torch.tensor(r.continuation)
            # Only the positions from the earliest continuation on need logits: the vocabulary
            # projection and its log-softmax (49k columns for SmolLM2) skip the prompts.
            first = min(len(requests[i].context) for i in batch) - 1
            keep = width - first
            target = target[:, width - keep :].to(self.device)
            shared = _shared_prefix([seqs[i] for i in batch], first)
            if self.share_prefix and self._keeps_logits and shared >= self.share_prefix:
                logits = self._logits_after(ids.to(self.device), mask.to(self.device), shared, keep)
            else:
                logits = self._logits(ids.to(self.device), mask.to(self.device), keep)
            scored = target >= 0
            lp = F.log_softmax(logits, dim=-1).gather(2, target.clamp(min=0)[..., None])[..., 0]
            sums = (lp * scored).sum(dim=1).tolist()
            greedy = ((logits.argmax(-1) == target) & scored).sum(dim=1).tolist()
            for row, i in enumerate(batch):
                out[i] = LoglikelihoodResult(
                    logprob=sums[row],
                    n_tokens=len(requests[i].continuation),
                    n_greedy=int(greedy[row]),
                )
        return out  # type: ignore[return-value]

    def _logits(self, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        """Float logits of the last `keep` positions (transformers' ``logits_to_keep``, which
        applies the model's own head, soft-capping and scaling; all positions, sliced, for a
        model whose forward lacks it)."""
        if self._keeps_logits:
            out = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep)
            return out.logits.float()
        return self.model(input_ids=ids, attention_mask=mask).logits[:, -keep:].float()

    def _logits_after(
        self, ids: torch.Tensor, mask: torch.Tensor, shared: int, keep: int
    ) -> torch.Tensor:
        """:meth:`_logits` with the batch's first ``shared`` tokens (the same in every row) run
        once, their KV cache repeated over the rows: chat tasks repeat a system prompt of ~20
        tokens in front of questions of ~25, so a batch costs about half."""
        prefix = self.model(input_ids=ids[:1, :shared], use_cache=True, logits_to_keep=1)
        cache = getattr(prefix, self._cache_kw)
        cache.batch_repeat_interleave(ids.shape[0])
        out = self.model(
            input_ids=ids[:, shared:],
            attention_mask=mask,  # prefix and suffix: the rows' padding stays masked
            use_cache=True,
            logits_to_keep=keep,
            **{self._cache_kw: cache},
        )
        return out.logits.float()

    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Greedy decoding with the KV cache. Prompts are grouped by length so no batch needs
        padding, which keeps every completion independent of its batch mates."""
        out: list[str] = [""] * len(requests)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((len(r.prompt), r.max_new_tokens), []).append(i)
        eos = self.tokenizer.eos_token_id
        for (_, max_new), idx in sorted(groups.items()):
            for k in range(0, len(idx), self.batch_size):
                chunk = idx[k : k + self.batch_size]
                ids = torch.tensor([requests[i].prompt for i in chunk], device=self.device)
                gen = self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=self.pad_id,
                )
                for row, i in enumerate(chunk):
                    new = gen[row, ids.shape[1] :].tolist()
                    out[i] = finish_text(new, self.tokenizer, requests[i].stop)
        return out

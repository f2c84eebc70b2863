"""lm-eval's ``LM`` over our engines: :class:`EngineLM` answers lm-eval's requests through any
:class:`~evomerge.evaluate.engines.Engine`, tokenizing as lm-eval's ``hf`` model does, so a
search swaps candidate weights into a resident engine and re-runs lm-eval tasks on them.

lm-eval is the optional ``lmeval`` extra: this module imports without it (``EngineLM`` is built
on first use) and names the extra when it is needed."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from evomerge.errors import EvomergeError
from evomerge.evaluate.tasks import GenerationRequest, LoglikelihoodRequest

if TYPE_CHECKING:
    from lm_eval.api.model import LM

    from evomerge.evaluate.engines import Engine

    EngineLM: type[LM]  # an lm-eval LM over our Engine, built on first use: see __getattr__

log = logging.getLogger(__name__)

_DEFAULT_MAX_GEN_TOKS = 256


class LMEvalError(EvomergeError):
    """An lm-eval task cannot be loaded or scored as asked (or lm-eval is not installed)."""


def lm_eval_module() -> Any:
    try:
        import lm_eval
        import lm_eval.api.model
        import lm_eval.evaluator
        import lm_eval.tasks
        import lm_eval.utils
    except ImportError as e:
        raise LMEvalError(
            f"lm-evaluation-harness is not installed ({e}); install the optional extra: "
            "pip install 'evomerge[lmeval]'"
        ) from None
    return lm_eval


def go_offline() -> None:
    """Forbid hub downloads unless the user's environment says otherwise. The hub libraries read
    these variables once, at import, so already-imported ones are told too."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if var in os.environ:
            continue
        os.environ[var] = "1"
        if "datasets.config" in sys.modules:
            sys.modules["datasets.config"].HF_HUB_OFFLINE = True
            sys.modules["datasets.config"].HF_DATASETS_OFFLINE = True
        if var == "HF_HUB_OFFLINE" and "huggingface_hub.constants" in sys.modules:
            sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True


# -- the LM adapter -----------------------------------------------------------------------------
def engine_lm_class() -> type:
    lm_eval = lm_eval_module()
    utils = lm_eval.utils

    class EngineLM(lm_eval.api.model.LM):
        """An lm-eval ``LM`` answering through a resident :class:`Engine`.

        Text is tokenized as lm-eval's ``hf`` model does it (trailing whitespace of a context moves
        to its continuation; the pair is encoded whole and split; an empty context becomes the
        BOS token, or EOS where there is none), so scores match ``--model hf`` on the same
        weights. ``batch_size`` caps the requests per engine call (None: all at once; the engine
        batches them itself). Generation is always greedy.
        """

        def __init__(
            self,
            engine: Engine,
            *,
            batch_size: int | None = None,
            add_bos_token: bool | None = None,
            prefix_token_id: int | None = None,
            max_gen_toks: int = _DEFAULT_MAX_GEN_TOKS,
        ) -> None:
            super().__init__()
            if batch_size is not None and batch_size < 1:
                raise LMEvalError(f"batch_size must be >= 1 or None, got {batch_size}")
            self.engine = engine
            self.batch_size = batch_size
            self.add_bos_token = add_bos_token
            self.max_gen_toks = max_gen_toks
            tok = engine.tokenizer
            if prefix_token_id is None:
                prefix_token_id = tok.bos_token_id
            if prefix_token_id is None:
                prefix_token_id = tok.eos_token_id
            if prefix_token_id is None:
                raise LMEvalError(
                    "the engine's tokenizer has neither a BOS nor an EOS token: "
                    "pass prefix_token_id"
                )
            self.prefix_token_id = int(prefix_token_id)
            self._warned_sampling = False

        # -- what lm-eval asks of a model ----------------------------------------------------
        @property
        def tokenizer(self) -> Any:
            return self.engine.tokenizer

        @property
        def max_length(self) -> int:
            return int(self.engine.max_length)

        @property
        def device(self) -> Any:
            return getattr(self.engine, "device", None)

        @property
        def tokenizer_name(self) -> str:
            return str(getattr(self.tokenizer, "name_or_path", "")).replace("/", "__")

        # -- tokenization --------------------------------------------------------------------
        def _encode(self, texts: Sequence[str], special: bool | None = None) -> list[list[int]]:
            """Token ids of each text, as lm-eval's hf model encodes them: special tokens
            (BOS) as the tokenizer adds them by default or as ``add_bos_token`` says, and never
            twice onto a text that already starts with the BOS string."""
            if not texts:
                return []
            if special is None:
                special = self.add_bos_token
            if special is not None:
                return [
                    list(x)
                    for x in self.tokenizer(list(texts), add_special_tokens=special)["input_ids"]
                ]
            bos = self.tokenizer.bos_token
            plain = [i for i, t in enumerate(texts) if not (bos and t.startswith(bos))]
            out: list[list[int]] = [[] for _ in texts]
            for idx, add in ((plain, True), (sorted(set(range(len(texts))) - set(plain)), False)):
                if idx:
                    enc = self.tokenizer([texts[i] for i in idx], add_special_tokens=add)
                    for i, ids in zip(idx, enc["input_ids"], strict=True):
                        out[i] = list(ids)
            return out

        def _pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
            out: list[tuple[list[int], list[int]] | None] = [None] * len(pairs)
            empty = [i for i, (c, _) in enumerate(pairs) if c == ""]
            conts = self._encode([pairs[i][1] for i in empty], special=False)
            for i, cont in zip(empty, conts, strict=True):
                if cont and cont[0] == self.prefix_token_id:
                    out[i] = (cont[:1], cont[1:])
                else:
                    out[i] = ([self.prefix_token_id], cont)
            rest = [i for i in range(len(pairs)) if pairs[i][0] != ""]
            ctxs, wholes = [], []
            for i in rest:
                ctx, cont = pairs[i]
                n = len(ctx) - len(ctx.rstrip())
                if n:  # a word boundary belongs to the continuation
                    ctx, cont = ctx[:-n], ctx[-n:] + cont
                ctxs.append(ctx)
                wholes.append(ctx + cont)
            enc_ctx = self._encode(ctxs)
            enc_whole = self._encode(wholes)
            for i, c, w in zip(rest, enc_ctx, enc_whole, strict=True):
                out[i] = (w[: len(c)], w[len(c) :])
            return out  # type: ignore[return-value]

        def _fit(self, ctx: list[int], cont: list[int]) -> LoglikelihoodRequest:
            """Left-truncate the context so the pair fits the engine's window."""
            room = self.max_length - len(cont)
            if room < 1:
                raise LMEvalError(
                    f"a continuation of {len(cont)} tokens does not fit the engine's context "
                    f"of {self.max_length} tokens"
                )
            return LoglikelihoodRequest(tuple(ctx[-room:]), tuple(cont))

        def _run(self, reqs: list[LoglikelihoodRequest]) -> list[Any]:
            step = self.batch_size or max(1, len(reqs))
            out: list[Any] = []
            for k in range(0, len(reqs), step):
                out.extend(self.engine.loglikelihood(reqs[k : k + step]))
            return out

        # -- the three request types -------------------------------------------------------
        def loglikelihood(
            self, requests: list[Any], disable_tqdm: bool = False
        ) -> list[tuple[float, bool]]:
            args = [tuple(r.args) for r in requests]
            encoded = self._pairs([(c, x) for c, x in args])
            todo = [i for i, (_, cont) in enumerate(encoded) if cont]
            results = self._run([self._fit(*encoded[i]) for i in todo])
            out: list[tuple[float, bool]] = [(0.0, True)] * len(requests)  # empty: log 1
            for i, r in zip(todo, results, strict=True):
                out[i] = (float(r.logprob), bool(r.n_greedy == r.n_tokens))
            for a, o in zip(args, out, strict=True):
                self.cache_hook.add_partial("loglikelihood", a, o)
            return out

        def loglikelihood_rolling(
            self, requests: list[Any], disable_tqdm: bool = False
        ) -> list[float]:
            """Whole-text log-likelihoods over rolling windows. A window holds context plus
            continuation, so it spans the engine's ``max_length`` tokens (lm-eval's hf model
            feeds ``max_length`` tokens to score ``max_length + 1``: long texts may split one
            token differently; short ones score identically)."""
            texts = [r.args[0] for r in requests]
            owners: list[int] = []
            reqs: list[LoglikelihoodRequest] = []
            for n, tokens in enumerate(self._encode(texts, special=False)):
                windows = utils.get_rolling_token_windows(
                    token_list=tokens,
                    prefix_token=self.prefix_token_id,
                    max_seq_len=max(1, self.max_length - 1),
                    context_len=1,
                )
                for ctx, cont in map(utils.make_disjoint_window, windows):
                    reqs.append(self._fit(list(ctx), list(cont)))
                    owners.append(n)
            out = [0.0] * len(requests)
            for n, r in zip(owners, self._run(reqs), strict=True):
                out[n] += float(r.logprob)
            for t, o in zip(texts, out, strict=True):
                self.cache_hook.add_partial("loglikelihood_rolling", (t,), o)
            return out

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            contexts = [r.args[0] for r in requests]
            kwargs = [dict(r.args[1] or {}) for r in requests]
            encoded = self._encode(contexts)
            reqs = []
            for ctx, kw in zip(encoded, kwargs, strict=True):
                until = kw.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                max_new = next(
                    (
                        int(kw[k])
                        for k in ("max_gen_toks", "max_new_tokens", "max_tokens")
                        if kw.get(k) is not None
                    ),
                    self.max_gen_toks,
                )
                max_new = max(1, min(max_new, self.max_length - 1))
                if (
                    kw.get("do_sample") or float(kw.get("temperature") or 0.0) > 0.0
                ) and not self._warned_sampling:
                    log.warning("EngineLM decodes greedily: do_sample/temperature ignored")
                    self._warned_sampling = True
                prompt = ctx[-(self.max_length - max_new) :] or [self.prefix_token_id]
                reqs.append(GenerationRequest(tuple(prompt), max_new, tuple(until)))
            step = self.batch_size or max(1, len(reqs))
            out: list[str] = []
            for k in range(0, len(reqs), step):
                out.extend(self.engine.generate(reqs[k : k + step]))
            for c, kw, o in zip(contexts, kwargs, out, strict=True):
                self.cache_hook.add_partial("generate_until", (c, kw), o)
            return out

    EngineLM.__module__ = __name__
    EngineLM.__qualname__ = "EngineLM"
    return EngineLM


_CLASS: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    """``EngineLM`` is built on first use: it subclasses lm-eval's ``LM``, which is optional."""
    if name == "EngineLM":
        if name not in _CLASS:
            _CLASS[name] = engine_lm_class()
        return _CLASS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

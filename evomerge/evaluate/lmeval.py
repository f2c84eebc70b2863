"""lm-evaluation-harness tasks as objectives, scored through a resident engine.

lm-eval talks to models through its ``LM`` class. :class:`EngineLM` is one that answers through
any :class:`~evomerge.evaluate.engines.Engine`, so a search swaps candidate weights into the
engine (``engine.load_weights``) and re-runs lm-eval tasks without loading a model from disk::

    objective = LMEvalObjective(["tiny_mc"], include_path="my_tasks/")  # tasks loaded once
    objective(engine)                        # {"tiny_mc": 0.42}: each task's main metric
    res = objective.evaluate(engine, items={"tiny_mc": ["0", "3"]}, per_item=True)
    res["tiny_mc"].scores                    # {"0": 1.0, "3": 0.0}: per-document scores

Documents are named by their index in the task's evaluation split (``"0"``, ``"1"``, ...), the
ids that estimators select and that ``items`` takes back. Runs are offline (``HF_HUB_OFFLINE`` and
``HF_DATASETS_OFFLINE`` are set unless the environment already sets them): a task's data must be a
local file or already in the Hugging Face cache.

lm-eval is the optional ``lmeval`` extra: this module imports without it and names the extra when
it is needed. Tested with lm-eval 0.4.13; item subsets need lm-eval >= 0.4.9.
"""

from __future__ import annotations

import difflib
import logging
import math
import numbers
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evomerge.errors import EvomergeError
from evomerge.evaluate.tasks import GenerationRequest, LoglikelihoodRequest, TaskResult
from evomerge.objectives import direction_of

if TYPE_CHECKING:
    from lm_eval.api.model import LM

    from evomerge.evaluate.engines import Engine

    EngineLM: type[LM]  # an lm-eval LM over our Engine, built on first use: see __getattr__


log = logging.getLogger(__name__)

__all__ = ["EngineLM", "LMEvalError", "LMEvalObjective", "LMEvalResult", "score_lmeval"]

_DEFAULT_MAX_GEN_TOKS = 256
_FEWSHOT_SEED = 1234  # lm-eval's default fewshot seed: the same prompts as its CLI


class LMEvalError(EvomergeError):
    """An lm-eval task cannot be loaded or scored as asked (or lm-eval is not installed)."""


def _lm_eval() -> Any:
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


def _go_offline() -> None:
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
def _engine_lm_class() -> type:
    lm_eval = _lm_eval()
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
            _CLASS[name] = _engine_lm_class()
        return _CLASS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- tasks as objectives -----------------------------------------------------------------------
@dataclass(frozen=True)
class LMEvalResult:
    """One task's score: lm-eval's aggregate ``value`` of ``metric`` (``"acc,none"``: metric,
    filter) and, when asked for, the per-document scores behind it (document index -> score)."""

    task: str
    metric: str
    value: float
    higher_is_better: bool
    n_items: int
    scores: dict[str, float] = field(default_factory=dict)

    def as_task_result(self) -> TaskResult:
        """The per-item form estimators take (needs ``per_item=True``)."""
        return TaskResult(self.task, self.metric, self.higher_is_better, dict(self.scores))


_MANAGERS: dict[tuple[tuple[str, ...], bool], Any] = {}


def _task_manager(include: tuple[str, ...], defaults: bool) -> Any:
    """TaskManagers are cached: indexing lm-eval's built-in tasks takes seconds."""
    key = (include, defaults)
    if key not in _MANAGERS:
        tasks = _lm_eval().tasks
        _MANAGERS[key] = tasks.TaskManager(
            include_path=list(include) or None, include_defaults=defaults
        )
    return _MANAGERS[key]


def _yaml_task_name(path: Path) -> str:
    """The ``task:`` (or ``group:``) name of a task YAML; lm-eval's own tags are ignored."""
    import yaml

    class _Lenient(yaml.SafeLoader):
        pass

    _Lenient.add_multi_constructor("", lambda loader, suffix, node: None)
    try:
        data = yaml.load(path.read_text(), Loader=_Lenient)  # a SafeLoader: safe
    except yaml.YAMLError as e:
        raise LMEvalError(f"{path}: malformed YAML: {e}") from None
    name = data.get("task") or data.get("group") if isinstance(data, dict) else None
    if not isinstance(name, str):
        raise LMEvalError(f"{path}: an lm-eval task YAML needs a string 'task' (or 'group') key")
    return name


def _leaves(task_dict: Mapping[Any, Any]) -> dict[str, Any]:
    """Leaf tasks of a TaskManager.load() result or of the older nested task dict."""
    if "tasks" in task_dict and isinstance(task_dict["tasks"], Mapping):
        return dict(task_dict["tasks"])
    out: dict[str, Any] = {}
    for key, value in task_dict.items():
        if isinstance(value, Mapping):
            out.update(_leaves(value))
        elif value is not None and not isinstance(value, tuple):
            out[str(key)] = value
    return out


class LMEvalObjective:
    """lm-eval tasks loaded once and scored many times, through an engine or any lm-eval ``LM``.

    ``tasks`` are lm-eval task or group names, or paths to task YAML files; ``include_path``
    adds directories of task YAMLs. ``include_defaults`` (None: only when a requested name is not
    found under ``include_path``) also indexes lm-eval's built-in tasks, which takes seconds.
    ``metric`` picks the score (``"acc"``, ``"acc_norm"``, ``"exact_match,strict-match"``; one
    name for all tasks or one per task); None takes each task's first metric. ``limit`` scores
    the first N documents. Few-shot examples are drawn with the same seed on every call, so
    every candidate sees the same prompts; unlike ``lm_eval.simple_evaluate``, no global random
    seed (python, numpy, torch) is reset, so a search's own random streams are left alone.
    """

    def __init__(
        self,
        tasks: Sequence[str | os.PathLike[str]],
        *,
        include_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        include_defaults: bool | None = None,
        metric: str | Mapping[str, str] | None = None,
        limit: int | None = None,
        num_fewshot: int | None = None,
        fewshot_seed: int = _FEWSHOT_SEED,
        batch_size: int | None = None,
    ) -> None:
        if isinstance(tasks, (str, os.PathLike)):
            tasks = [tasks]
        if not tasks:
            raise LMEvalError("no lm-eval task given")
        if limit is not None and limit < 1:
            raise LMEvalError(f"limit must be >= 1 or None, got {limit}")
        _go_offline()
        lm_eval = _lm_eval()
        if include_path is None:
            includes: list[str] = []
        elif isinstance(include_path, (str, os.PathLike)):
            includes = [str(include_path)]
        else:
            includes = [str(p) for p in include_path]
        for p in includes:
            if not Path(p).is_dir():
                raise LMEvalError(f"include_path {p} is not a directory")
        names: list[str] = []
        for spec in tasks:
            s = str(spec)
            if isinstance(spec, os.PathLike) or s.endswith((".yaml", ".yml")):
                path = Path(s).resolve()
                if not path.is_file():
                    raise LMEvalError(f"task file {path} does not exist")
                names.append(_yaml_task_name(path))
                if str(path.parent) not in includes:
                    includes.append(str(path.parent))
            else:
                names.append(s)
        self.names = names
        self.metric = metric
        self.limit = limit
        self.fewshot_seed = fewshot_seed
        self.batch_size = batch_size
        self._manager = self._pick_manager(tuple(includes), include_defaults)
        try:
            if hasattr(self._manager, "load"):  # lm-eval >= 0.4.12
                self._task_dict = self._manager.load(list(names))
            else:
                self._task_dict = lm_eval.tasks.get_task_dict(list(names), self._manager)
        except FileNotFoundError as e:
            raise LMEvalError(
                f"cannot load lm-eval task(s) {names}: a data file does not exist: {e}"
            ) from e
        except Exception as e:
            raise LMEvalError(
                f"cannot load lm-eval task(s) {names}: {type(e).__name__}: {e} (runs are offline: "
                "a task's dataset must be a local file or already in the Hugging Face cache)"
            ) from e
        self._tasks = _leaves(self._task_dict)
        for task in self._tasks.values():
            if num_fewshot is not None and task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=num_fewshot)
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)

    def _pick_manager(self, includes: tuple[str, ...], defaults: bool | None) -> Any:
        if defaults is None:
            local = _task_manager(includes, False) if includes else None
            if local is not None and all(n in local.all_tasks for n in self.names):
                return local
            defaults = True
        manager = _task_manager(includes, defaults)
        known = set(manager.all_tasks)
        for name in self.names:
            if name not in known:
                close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
                hint = f"; close matches: {close}" if close else ""
                where = f" (include_path {list(includes)})" if includes else ""
                if not defaults:
                    where += ", lm-eval's built-in tasks not searched"
                raise LMEvalError(f"unknown lm-eval task {name!r}{where}{hint}")
        return manager

    # -- the task set ------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        """Leaf task names (a group expands to its tasks)."""
        return list(self._tasks)

    def item_ids(self, task: str) -> list[str]:
        """The documents of a leaf task that a full evaluation scores (``limit`` applied)."""
        n = len(self._task(task).eval_docs)
        return [str(i) for i in range(min(n, self.limit or n))]

    def higher_is_better(self, task: str, metric: str | None = None) -> bool:
        """Whether a larger ``metric`` (default: the objective's, else the task's first) is
        better, from the task's own config (``metric_list``; lm-eval's defaults where it is
        silent): perplexities and bits-per-byte are minimized. Known before any scoring."""
        t = self._task(task)
        wanted = metric or (
            self.metric.get(task) if isinstance(self.metric, Mapping) else self.metric
        )
        table = dict(t.higher_is_better() or {})
        if wanted is None:
            if not table:
                raise LMEvalError(f"{task}: the task declares no metric")
            return bool(next(iter(table.values())))
        name = wanted.split(",")[0]
        if name not in table:
            raise LMEvalError(f"{task}: no metric {name!r}; the task declares {sorted(table)}")
        return bool(table[name])

    def direction(self, task: str) -> str:
        """``"maximize"`` or ``"minimize"`` for this objective's metric on ``task``."""
        return direction_of(self.higher_is_better(task))

    def _task(self, name: str) -> Any:
        try:
            return self._tasks[name]
        except KeyError:
            raise LMEvalError(
                f"{name!r} is not one of this objective's tasks {self.tasks}"
            ) from None

    # -- scoring -----------------------------------------------------------------------------
    def __call__(self, model: Any) -> dict[str, float]:
        """Each requested task's (or group's) main metric."""
        return {name: r.value for name, r in self.evaluate(model).items()}

    def evaluate(
        self,
        model: Any,
        *,
        items: Mapping[str, Sequence[str]] | None = None,
        per_item: bool = False,
    ) -> dict[str, LMEvalResult]:
        """Score ``model`` (an :class:`Engine`, wrapped in :class:`EngineLM`, or any lm-eval
        ``LM``) on every task. ``items`` scores only those documents of the tasks it names
        (other tasks: all, or ``limit``). ``per_item`` also returns per-document scores; it has
        lm-eval log its samples, a small cost next to the model's. Results are keyed by leaf
        task, plus each requested group (its items named ``task/doc``)."""
        lm_eval = _lm_eval()
        lm = model
        if not isinstance(model, lm_eval.api.model.LM):
            lm = __getattr__("EngineLM")(model, batch_size=self.batch_size)
        kwargs: dict[str, Any] = {}
        if items is not None:
            samples = {}
            for name in self.tasks:
                if name in items:
                    samples[name] = self._doc_indices(name, items[name])
                else:
                    samples[name] = list(range(len(self.item_ids(name))))
            for name in items:
                self._task(name)
            kwargs["samples"] = samples
        else:
            kwargs["limit"] = self.limit
        for task in self._tasks.values():
            task.set_fewshot_seed(seed=self.fewshot_seed)
        try:
            out = lm_eval.evaluator.evaluate(
                lm=lm,
                task_dict=self._task_dict,
                bootstrap_iters=0,
                log_samples=per_item,
                **kwargs,
            )
        except TypeError as e:
            if "samples" in kwargs and "samples" in str(e):
                raise LMEvalError("scoring a subset of items needs lm-eval >= 0.4.9") from e
            raise
        sizes = {
            name: len(kwargs["samples"][name]) if items is not None else len(self.item_ids(name))
            for name in self.tasks
        }
        return self._collect(out, per_item, sizes)

    def _doc_indices(self, task: str, ids: Sequence[str]) -> list[int]:
        n = len(self._task(task).eval_docs)
        out = []
        for i in ids:
            try:
                k = int(i)
            except (TypeError, ValueError):
                k = -1
            if not 0 <= k < n or str(i) != str(k):
                raise LMEvalError(f"{task}: no document {i!r} (ids are '0'..'{n - 1}')")
            out.append(k)
        if not out:
            raise LMEvalError(f"{task}: an empty item subset")
        return sorted(set(out))

    def _metric_key(self, name: str, row: Mapping[str, Any]) -> str:
        wanted = self.metric.get(name) if isinstance(self.metric, Mapping) else self.metric
        keys = [k for k in row if "," in k and "_stderr" not in k.split(",")[0]]
        if wanted is None:
            if not keys:
                raise LMEvalError(f"{name}: lm-eval reported no metric")
            return keys[0]
        if wanted in row:
            return wanted
        match = [k for k in keys if k.split(",")[0] == wanted]
        if not match:
            raise LMEvalError(f"{name}: no metric {wanted!r}; lm-eval reported {keys}")
        return f"{wanted},none" if f"{wanted},none" in match else match[0]

    def _collect(
        self, out: Mapping[str, Any], per_item: bool, sizes: Mapping[str, int]
    ) -> dict[str, LMEvalResult]:
        rows = {**out.get("results", {}), **out.get("groups", {})}
        hib = out.get("higher_is_better", {})
        samples = out.get("samples") or {}
        results: dict[str, LMEvalResult] = {}
        for name in [*self.tasks, *(n for n in self.names if n not in self._tasks)]:
            if name not in rows:
                continue
            key = self._metric_key(name, rows[name])
            metric, _, filt = key.partition(",")
            value = rows[name][key]
            leaves = [name] if name in self._tasks else self._group_leaves(name)
            scores: dict[str, float] = {}
            if per_item and name in self._tasks:
                scores = self._item_scores(name, samples.get(name, []), metric, filt)
            elif per_item:  # a group: its leaves' documents
                for leaf in leaves:
                    leaf_scores = self._item_scores(leaf, samples.get(leaf, []), metric, filt)
                    scores.update({f"{leaf}/{k}": v for k, v in leaf_scores.items()})
            results[name] = LMEvalResult(
                task=name,
                metric=key,
                value=float(value) if isinstance(value, (int, float)) else math.nan,
                higher_is_better=bool(hib.get(name, {}).get(metric, True)),
                n_items=sum(sizes[leaf] for leaf in leaves),
                scores=scores,
            )
        return results

    def _group_leaves(self, group: str) -> list[str]:
        found = self._task_dict.get("group_map", {}).get(group)
        if not found:
            return list(self._tasks)
        out: list[str] = []
        for child in found:
            out.extend([child] if child in self._tasks else self._group_leaves(child))
        return out

    @staticmethod
    def _item_scores(
        task: str, samples: Sequence[Mapping[str, Any]], metric: str, filt: str
    ) -> dict[str, float]:
        scores: dict[str, float] = {}
        for s in samples:
            if filt and s.get("filter", filt) != filt:
                continue
            v = s.get(metric)
            if isinstance(v, numbers.Real):
                scores[str(s["doc_id"])] = float(v)
            else:
                raise LMEvalError(
                    f"{task}: metric {metric!r} has no per-document score (lm-eval keeps "
                    f"{type(v).__name__} per document and aggregates them at corpus level)"
                )
        return scores


_OBJECTIVES: dict[Any, LMEvalObjective] = {}


def score_lmeval(
    engine: Engine,
    tasks: Sequence[str | os.PathLike[str]],
    include_path: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    metric: str | None = None,
) -> dict[str, float]:
    """Each task's main metric (or ``metric``) for the engine's current weights. The loaded tasks
    are kept for the next call with the same arguments."""
    key = (tuple(str(t) for t in tasks), str(include_path) if include_path else None, limit, metric)
    if key not in _OBJECTIVES:
        _OBJECTIVES[key] = LMEvalObjective(
            tasks, include_path=include_path, limit=limit, metric=metric
        )
    return _OBJECTIVES[key](engine)

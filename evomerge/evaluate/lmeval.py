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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evomerge.evaluate.lmeval_lm import LMEvalError, go_offline, lm_eval_module
from evomerge.evaluate.tasks import TaskResult
from evomerge.objectives import direction_of

if TYPE_CHECKING:
    from lm_eval.api.model import LM

    from evomerge.evaluate.engines import Engine

    EngineLM: type[LM]  # an lm-eval LM over our Engine, built on first use: see __getattr__


log = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    """``EngineLM`` (:mod:`evomerge.evaluate.lmeval_lm`), built on first use."""
    if name == "EngineLM":
        from evomerge.evaluate import lmeval_lm

        return lmeval_lm.EngineLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EngineLM", "LMEvalError", "LMEvalObjective", "LMEvalResult", "score_lmeval"]

_FEWSHOT_SEED = 1234  # lm-eval's default fewshot seed: the same prompts as its CLI


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
        tasks = lm_eval_module().tasks
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
        go_offline()
        lm_eval = lm_eval_module()
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
        lm_eval = lm_eval_module()
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

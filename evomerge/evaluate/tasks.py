"""Declarative fitness tasks: a YAML file (prompt template, kind, metric) plus JSONL items.

Three kinds cover what merge searches score:

- ``multiple_choice`` — pick the choice with the highest log-likelihood (``acc``) or the highest
  per-character log-likelihood (``acc_norm``);
- ``generate`` — greedy generation compared with the reference (``exact_match``), with stop
  strings and an optional answer-extraction regex;
- ``logprob`` — teacher-forced scoring of the reference continuation: ``token_accuracy`` (share
  of reference tokens that are the argmax), ``logprob`` (mean per-token log-probability) or
  ``perplexity``. One forward pass, smooth under merging: the best search signal on small models.

Items have stable ids so per-item results can be cached and estimators can name them. Requests
are tokenized once per (task, tokenizer) and reused for every candidate.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evomerge.errors import EvomergeError
from evomerge.fileio import preset_dir, read_text, read_yaml, resolve_named, validate

FITNESS_DIR = preset_dir("fitness")
Kind = Literal["multiple_choice", "generate", "logprob"]
_METRICS: dict[str, tuple[str, ...]] = {
    "multiple_choice": ("acc", "acc_norm"),
    "generate": ("exact_match",),
    # logprob, per item: token_accuracy, the share of reference tokens that are the argmax;
    # acc, the whole reference is the greedy continuation (lm-eval's `acc` of loglikelihood
    # tasks such as LAMBADA: greedy exact match from one forward pass); token_prob, the
    # geometric mean of the reference tokens' probabilities (1 / the item's perplexity), a
    # smooth [0, 1] search signal where answers are a few tokens and token_accuracy moves in
    # steps of a third; logprob, its log; perplexity.
    "logprob": ("token_accuracy", "acc", "token_prob", "logprob", "perplexity"),
}
_LOWER_IS_BETTER = {"perplexity"}
# in [0, 1]
UNIT_METRICS = frozenset({"acc", "acc_norm", "exact_match", "token_accuracy", "token_prob"})


class TaskError(EvomergeError):
    """A task file or its items are unusable; the message names the file, line or item."""


class Item(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    id: str

    def fields(self) -> dict[str, Any]:
        return self.model_dump()


class TaskSpec(BaseModel):
    """What a task file holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    kind: Kind
    items: str  # JSONL path: relative to the task file, absolute, or zoo:PATH
    prompt: str = "{prompt}"
    target: str = "{answer}"  # generate / logprob: the reference continuation
    choices: str = "choices"  # multiple_choice: item field holding the choices
    answer: str = "answer"  # multiple_choice: item field holding the correct index
    choice_prefix: str = " "
    append_eos: bool = False  # the reference ends with the tokenizer's eos token
    fewshot: list[dict[str, Any]] = Field(default_factory=list)
    fewshot_separator: str = "\n"
    # Render the prompt as a user turn through the tokenizer's chat template (few-shot examples
    # as earlier user/assistant turns): instruct models are scored as they are prompted.
    chat: bool = False
    max_new_tokens: int = Field(32, ge=1)
    stop: list[str] = Field(default_factory=list)
    extract: str | None = None  # regex: group 1 (or the match) is the answer
    metric: str | None = None
    higher_is_better: bool | None = None
    description: str = ""

    @model_validator(mode="after")
    def _metric_fits_kind(self) -> TaskSpec:
        if self.metric is not None and self.metric not in _METRICS[self.kind]:
            raise ValueError(
                f"metric {self.metric!r} does not apply to kind {self.kind!r} "
                f"(choose from {list(_METRICS[self.kind])})"
            )
        if self.extract is not None:
            try:
                re.compile(self.extract)
            except re.error as e:
                raise ValueError(f"extract: not a regular expression: {e}") from None
        for key in ("prompt", "target"):
            try:
                _fields(getattr(self, key))
            except ValueError as e:
                raise ValueError(f"{key}: not a format template: {e}") from None
        return self


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score ``continuation`` after ``context`` (token ids)."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass(frozen=True)
class LoglikelihoodResult:
    logprob: float  # sum over the continuation's tokens
    n_tokens: int
    n_greedy: int  # continuation tokens that are the argmax at their position

    @property
    def is_greedy(self) -> bool:
        return self.n_greedy == self.n_tokens


@dataclass(frozen=True)
class GenerationRequest:
    prompt: tuple[int, ...]
    max_new_tokens: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskResult:
    """Per-item scores of one model on one task; ``value`` is the metric's mean."""

    task: str
    metric: str
    higher_is_better: bool
    scores: dict[str, float]  # item id -> score

    @property
    def value(self) -> float:
        return sum(self.scores.values()) / len(self.scores) if self.scores else float("nan")


class Task:
    """A loaded task: spec + items. Build requests for an engine, score its answers."""

    def __init__(self, spec: TaskSpec, items: list[Item], origin: str = ""):
        self.spec = spec
        self.items = items
        self.origin = origin or spec.name
        if not items:
            raise TaskError(f"{self.origin}: the item set is empty")
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise TaskError(f"{self.origin}: item id {dup!r} appears more than once")
        needed = self._fields_needed()
        for it in items:
            missing = needed - set(it.fields())
            if missing:
                raise TaskError(
                    f"{self.origin}: item {it.id!r} lacks required field(s) {sorted(missing)}"
                )

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def metric(self) -> str:
        return self.spec.metric or _METRICS[self.spec.kind][0]

    @property
    def higher_is_better(self) -> bool:
        if self.spec.higher_is_better is not None:
            return self.spec.higher_is_better
        return self.metric not in _LOWER_IS_BETTER

    @property
    def unit_metric(self) -> bool:
        """Whether scores lie in [0, 1] (not so: mean log-prob ≤ 0, perplexity ≥ 1)."""
        return self.metric in UNIT_METRICS

    @cached_property
    def item_ids(self) -> list[str]:
        return [it.id for it in self.items]

    def _fields_needed(self) -> set[str]:
        templates = [self.spec.prompt]
        if self.spec.kind == "multiple_choice":
            return _fields(self.spec.prompt) | {self.spec.choices, self.spec.answer}
        templates.append(self.spec.target)
        return set().union(*(_fields(t) for t in templates))

    def only(self, ids: Sequence[str]) -> Task:
        """This task (same name and spec) with only the items ``ids``: a holdout's search pool,
        which every estimator, calibration and promotion then takes as the whole task."""
        return Task(self.spec, self.subset(ids), self.origin)

    def subset(self, ids: Sequence[str]) -> list[Item]:
        index = {it.id: it for it in self.items}
        try:
            return [index[i] for i in ids]
        except KeyError as e:
            raise TaskError(f"{self.origin}: no item with id {e.args[0]!r}") from None

    # -- prompts ----------------------------------------------------------------------------
    def _fewshot_prefix(self) -> str:
        parts = []
        for ex in self.spec.fewshot:
            text = self.spec.prompt.format(**ex)
            if self.spec.kind != "multiple_choice":
                text += self.spec.target.format(**ex)
            parts.append(text)
        return "".join(p + self.spec.fewshot_separator for p in parts)

    def prompt_text(self, item: Item) -> str:
        return self._fewshot_prefix() + self.spec.prompt.format(**item.fields())

    def context_text(self, item: Item, tokenizer: Any) -> str:
        """The text the model reads before its answer: the prompt, or with ``chat: true`` the
        chat-rendered conversation up to the assistant's turn."""
        if not self.spec.chat:
            return self.prompt_text(item)
        if not getattr(tokenizer, "chat_template", None):
            raise TaskError(
                f"{self.origin}: chat: true, but the model's tokenizer has no chat template"
            )
        turns: list[dict[str, str]] = []
        for ex in self.spec.fewshot:
            turns.append({"role": "user", "content": self.spec.prompt.format(**ex)})
            turns.append({"role": "assistant", "content": self.spec.target.format(**ex)})
        turns.append({"role": "user", "content": self.spec.prompt.format(**item.fields())})
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    def target_text(self, item: Item) -> str:
        return self.spec.target.format(**item.fields())

    def choices_of(self, item: Item) -> list[str]:
        choices = item.fields()[self.spec.choices]
        if not isinstance(choices, list) or not choices:
            raise TaskError(f"{self.origin}: item {item.id!r}: {self.spec.choices} must be a list")
        return [str(c) for c in choices]

    def gold_index(self, item: Item) -> int:
        gold = item.fields()[self.spec.answer]
        choices = self.choices_of(item)
        if isinstance(gold, int) and 0 <= gold < len(choices):
            return gold
        if isinstance(gold, str) and gold in choices:
            return choices.index(gold)
        raise TaskError(f"{self.origin}: item {item.id!r}: answer {gold!r} is not a choice")

    # -- requests and scoring -----------------------------------------------------------------
    def loglikelihood_requests(
        self, tokenizer: Any, items: Sequence[Item], max_length: int
    ) -> list[list[LoglikelihoodRequest]]:
        """Per item, one request (logprob) or one per choice (multiple_choice)."""
        out = []
        eos = [tokenizer.eos_token_id] if self.spec.append_eos else []
        for it in items:
            ctx = _encode(tokenizer, self.context_text(it, tokenizer))
            if self.spec.kind == "multiple_choice":
                conts = [
                    _encode(tokenizer, self.spec.choice_prefix + c) for c in self.choices_of(it)
                ]
            else:
                conts = [_encode(tokenizer, self.target_text(it)) + eos]
            for c in conts:
                if not c:
                    raise TaskError(
                        f"{self.origin}: item {it.id!r}: the continuation to score is empty"
                    )
                if len(ctx) + len(c) > max_length:
                    raise TaskError(
                        f"{self.origin}: item {it.id!r} needs {len(ctx) + len(c)} tokens but the "
                        f"model's context is {max_length}"
                    )
            out.append([LoglikelihoodRequest(tuple(ctx), tuple(c)) for c in conts])
        return out

    def generation_requests(
        self, tokenizer: Any, items: Sequence[Item], max_length: int
    ) -> list[GenerationRequest]:
        out = []
        for it in items:
            ids = _encode(tokenizer, self.context_text(it, tokenizer))
            if len(ids) + self.spec.max_new_tokens > max_length:
                raise TaskError(
                    f"{self.origin}: item {it.id!r}: prompt of {len(ids)} tokens plus "
                    f"{self.spec.max_new_tokens} new tokens exceeds the context of {max_length}"
                )
            out.append(
                GenerationRequest(tuple(ids), self.spec.max_new_tokens, tuple(self.spec.stop))
            )
        return out

    def score_loglikelihood(
        self,
        item: Item,
        results: Sequence[LoglikelihoodResult],
        tokenizer: Any = None,
        metric: str | None = None,
    ) -> float:
        """The item's score under the task's metric, or ``metric`` (another of its kind's: one
        forward pass scores an item under all of them)."""
        m = metric or self.metric
        if m not in _METRICS[self.spec.kind]:
            kind = self.spec.kind
            raise TaskError(f"{self.origin}: metric {m!r} does not apply to kind {kind!r}")
        if self.spec.kind == "multiple_choice":
            if m == "acc_norm":
                lens = [max(1, len(self.spec.choice_prefix + c)) for c in self.choices_of(item)]
                vals = [r.logprob / n for r, n in zip(results, lens, strict=True)]
            else:
                vals = [r.logprob for r in results]
            best = max(range(len(vals)), key=vals.__getitem__)
            return float(best == self.gold_index(item))
        r = results[0]
        if m == "token_accuracy":
            return r.n_greedy / r.n_tokens
        if m == "acc":
            return float(r.is_greedy)
        mean_lp = r.logprob / r.n_tokens  # per item: the mean over its reference tokens
        if m == "logprob":
            return mean_lp
        if m == "token_prob":
            return math.exp(mean_lp)
        return math.exp(-mean_lp) if -mean_lp < 709.0 else math.inf  # beyond float64: inf

    def score_generation(self, item: Item, text: str) -> float:
        for s in self.spec.stop:
            if s and s in text:
                text = text[: text.index(s)]
        if self.spec.extract:
            m = re.search(self.spec.extract, text)
            text = (m.group(1) if m and m.groups() else m.group(0)) if m else ""
        return float(text.strip() == self.target_text(item).strip())


def _fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# -- loading -----------------------------------------------------------------------------------
def read_items(path: Path, origin: str) -> list[Item]:
    if not path.exists():
        raise TaskError(f"{origin}: items file {path} does not exist")
    items = []
    text = read_text(path, error=TaskError, what=f"{origin}: items file")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(Item.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as e:
            first = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
            raise TaskError(f"{path}:{n}: bad item: {first}") from None
    return items


def available_tasks() -> list[str]:
    return sorted(p.stem for p in FITNESS_DIR.glob("*.yaml"))


def load_task(name_or_path: str | Path, *, zoo: Path | None = None) -> Task:
    """A task by name (``fitness/NAME.yaml``) or by path. ``zoo:`` item paths resolve against
    ``zoo`` (a built tiny zoo)."""
    path = resolve_named(name_or_path, presets=FITNESS_DIR, what="task", error=TaskError)
    data = read_yaml(path, error=TaskError)
    if not isinstance(data, dict):
        raise TaskError(f"{path}: a task file is a mapping (name, kind, items, …)")
    spec = validate(TaskSpec.model_validate, data, origin=str(path), error=TaskError)
    if spec.items.startswith("zoo:"):
        if zoo is None:
            raise TaskError(f"{path}: items {spec.items!r} live in the tiny zoo; pass its dir")
        items_path = Path(zoo) / spec.items[4:]
    else:
        items_path = (
            Path(spec.items) if Path(spec.items).is_absolute() else path.parent / spec.items
        )
    return Task(spec, read_items(items_path, str(path)), origin=str(path))

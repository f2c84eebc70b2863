"""An experiment file: what to search (sources, space), for what (objectives), how (optimizer,
budget, workers). Validated at the door; its hash ties a run directory to it."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from evomerge.errors import EvomergeError
from evomerge.evaluate.options import EngineDtype, EngineName, engine_options
from evomerge.fileio import read_yaml, validate
from evomerge.hub import resolve_sources
from evomerge.objectives import direction_of, maximized
from evomerge.recipe import check_names

# Metrics that live in [0, 1] (ours and lm-eval's): their hypervolume reference defaults to the
# worst end, 0 maximized (1 minimized). Other metrics (log-prob, perplexity, lm-eval's
# word_perplexity…) have no finite worst value: unless `reference:` is set, the hypervolume is
# measured from the worst value evaluated so far (Archive.hypervolume with None).
_UNIT_METRICS = {
    *("exact_match", "token_accuracy", "token_prob", "acc", "acc_norm", "pass_at_1", "f1", "mcc")
}
_LOWER_IS_BETTER = {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"}


def is_unit_metric(metric: str | None) -> bool:
    """A score in [0, 1] whose points mean the same on every task (a fraction of items right)."""
    return (metric or "").split(",")[0] in _UNIT_METRICS  # lm-eval: 'exact_match,strict-match'


class ExperimentError(EvomergeError, ValueError):
    """An experiment file is malformed, or does not match the run it is used with."""


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class HoldoutSpec(_Spec):
    """Items the search never sees, kept for ``evomerge confirm``: about ``fraction`` of each
    task's items, chosen by a hash of (task, item id, ``seed``; default: the experiment's), so
    the same items whatever the run order. ``holdout: 0.2`` is short for ``{fraction: 0.2}``."""

    fraction: float = Field(ge=0.0, lt=1.0)
    seed: int | None = Field(None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _bare_fraction(cls, data: Any) -> Any:
        if isinstance(data, int | float) and not isinstance(data, bool):
            return {"fraction": data}
        return data


class ObjectiveSpec(_Spec):
    """A fitness task or an lm-evaluation-harness task, scored by an estimator; or a cost of the
    merged model."""

    task: str | None = None  # fitness/NAME.yaml or a path
    lmeval: str | None = None  # an lm-eval task name or task YAML (one task, not a group)
    include_path: str | None = None  # lm-eval: a directory of task YAMLs
    metric: str | None = None  # lm-eval: which metric (default: the task's first)
    # lm-eval; default: the task config's higher_is_better for the metric
    direction: Literal["maximize", "minimize"] | None = None
    estimator: str = "full"
    cost: Literal["params", "layers"] | None = None
    name: str | None = None
    weight: float = 1.0  # in the weighted sum given to single-objective optimizers
    reference: float | None = None  # hypervolume reference (the worst value that still counts)
    holdout: HoldoutSpec | None = None  # overrides the experiment's `holdout:` (0: none here)

    @model_validator(mode="after")
    def _one_kind(self) -> ObjectiveSpec:
        if sum(x is not None for x in (self.task, self.lmeval, self.cost)) != 1:
            raise ValueError("an objective names exactly one of `task:`, `lmeval:` or `cost:`")
        if self.cost is not None and self.holdout is not None:
            raise ValueError(f"cost {self.cost!r} has no items to hold out; remove `holdout:`")
        if self.cost is not None and self.reference is None:
            raise ValueError(
                f"cost {self.cost!r} needs `reference:` (the largest value that still counts "
                "for the hypervolume, e.g. the size of one source)"
            )
        return self

    @property
    def label(self) -> str:
        ref = self.task or self.lmeval
        if ref is not None and ref.endswith((".yaml", ".yml")):
            ref = Path(ref).stem  # a task file: its name, not its path
        return self.name or ref or str(self.cost)


class OptimizerSpec(_Spec):
    """``{name: nsga2, pop_size: 16}``: every key but ``name`` is an option of that optimizer."""

    model_config = ConfigDict(frozen=True, extra="allow")
    name: str = "nsga2"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PromotionSpec(_Spec):
    """Multi-fidelity scoring. ``enabled: true`` (schedule ``front``): re-score on the full item
    sets a candidate whose optimistic estimate could enter the front, so the front is confirmed
    on full sets. ``schedule: successive_halving``: each batch is scored on ``rungs[0]`` items,
    the best ``1/eta`` go on to ``rungs[1]`` items, and so on (:mod:`evomerge.run.fidelity`)."""

    enabled: bool = False
    margin: float = 0.0
    z: float = 1.0
    schedule: Literal["front", "successive_halving"] = "front"
    rungs: list[int] | None = None  # items per rung, increasing; capped at each task's size
    eta: int = Field(3, ge=2)  # successive halving: 1/eta of a rung go on to the next

    @model_validator(mode="after")
    def _schedule(self) -> PromotionSpec:
        if self.schedule == "front":
            if self.rungs is not None or self.eta != 3:
                raise ValueError(
                    "rungs and eta belong to `schedule: successive_halving`; the front schedule "
                    "(enabled: true) re-scores on full sets"
                )
            return self
        if self.enabled:
            raise ValueError(
                "`enabled: true` turns on the front schedule; successive halving is on by "
                "`schedule: successive_halving` alone: drop `enabled`"
            )
        r = self.rungs
        if (
            r is None
            or len(r) < 2
            or any(x < 1 for x in r)
            or any(a >= b for a, b in itertools.pairwise(r))
        ):
            raise ValueError(
                f"successive halving needs `rungs:` of at least two increasing item counts "
                f">= 1, as in [50, 200, 2000]; got {r!r}"
            )
        return self

    @property
    def halving(self) -> bool:
        return self.schedule == "successive_halving"


# where candidates run, not what is searched: left out of the experiment's hash, so a run started
# on one backend resumes on another (the generational loop gives the same archive on both)
_PLACEMENT = (
    "backend",
    "count",
    "address",
    "resources",
    "retries",
    "timeout_s",
    "max_failures",
    "prefetch",
)


class WorkersSpec(_Spec):
    """Where and through which engine candidates are scored. ``backend: ray`` runs ``count``
    Ray actors, each with its own resident engine; ``engine: vllm`` needs the vLLM extra;
    ``engine_options`` are that engine's (:mod:`evomerge.evaluate.options`), checked here: a key
    the chosen engine does not take is refused by name."""

    # local: in the driver's process; ray: `count` Ray actors, each with its own resident engine
    backend: Literal["local", "ray"] = "local"
    count: int = Field(1, ge=1)  # ray: actors
    address: str | None = None  # ray: None starts a local cluster; auto | host:port | ray://h:p
    resources: dict[str, NonNegativeFloat] = Field(default_factory=dict)  # ray, per actor
    retries: int = Field(2, ge=0)  # ray: a candidate whose actor died is sent again this often
    timeout_s: float | None = Field(None, gt=0)  # ray: a candidate running longer is failed
    max_failures: int | None = Field(10, ge=1)  # this many failed candidates in a row stop a run
    engine: EngineName = "hf"
    # batch: the optimizer's batches, told whole; async: a new candidate as soon as one finishes
    # (optimizers that ask one at a time). Part of the hash: it changes what is asked
    dispatch: Literal["batch", "async"] = "batch"
    device: str = "cpu"
    dtype: EngineDtype = "float32"  # the engine's compute dtype (auto: the checkpoint's)
    batch_size: int = Field(256, ge=1)  # hf only (vLLM schedules its own batches)
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; None leaves torch's default
    # local hf on the CPU: merge the batch's next candidate while this one is scored (it uses
    # a core and one more model's memory); None: when the engine's threads leave a core free
    # and two models fit easily in memory. How, not what: not part of the hash
    prefetch: bool | None = None
    engine_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("engine_options")
    @classmethod
    def _options_of_the_engine(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        engine = info.data.get("engine", "hf")
        # errors come out as workers.engine_options.<key>; what was written is kept (the hash)
        return engine_options(engine, v).model_dump(exclude_unset=True)

    @model_validator(mode="before")
    @classmethod
    def _kind_is_backend(cls, data: Any) -> Any:
        """``kind:`` is the key's old name."""
        if isinstance(data, dict) and "kind" in data:
            data = dict(data)
            kind = data.pop("kind")
            if data.setdefault("backend", kind) != kind:
                raise ValueError(f"`kind: {kind}` and `backend: {data['backend']}` disagree")
        return data


# workers keys added after runs existed: at their defaults they stay out of the hash, so a run
# started before them still resumes (its experiment hashes as it did)
_LATER_WORKER_KEYS: dict[str, Any] = {"engine": "hf", "dtype": "float32", "engine_options": {}}


class Experiment(_Spec):
    name: str
    description: str = ""
    sources: dict[str, str]
    base: str | None = None
    space: str | dict[str, Any]
    space_options: dict[str, Any] = Field(default_factory=dict)
    # coarse to fine (run/schedule.py): stages of space-option overrides, each but the last
    # with `until: N` evaluations; empty: the one space throughout
    schedule: list[dict[str, Any]] = Field(default_factory=list)
    objectives: list[ObjectiveSpec] = Field(min_length=1)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    budget: int = Field(ge=1)
    seed: int = Field(0, ge=0, lt=2**63)
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    # sources with different vocabularies: mergekit's base | union | a source's name
    tokenizer_source: str | None = None
    workers: WorkersSpec = Field(default_factory=WorkersSpec)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    storage: str | None = None  # SQLAlchemy URL of the archive; default: SQLite in the run dir
    holdout: HoldoutSpec | None = None  # items kept from the search for `evomerge confirm`
    # score the base, each source and the uniform merge once at the start (front plots' markers);
    # how a run is shown, not what it searches: outside the hash
    reference_points: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        check_names(self.sources, self.base, self.tokenizer_source)
        if self.schedule:
            check_stages(self.schedule)
        labels = [o.label for o in self.objectives]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"objectives: {sorted(dup)} appear twice; give them distinct `name:`s")
        if self.promotion.halving:
            self._check_halving()
        return self

    def _check_halving(self) -> None:
        """Successive halving picks its own items per rung and ranks whole batches: an
        asynchronous run has none."""
        if self.workers.dispatch != "batch":
            raise ValueError(
                "promotion: successive_halving ranks each batch's candidates against each other; "
                "`workers.dispatch: async` scores them one at a time: use `dispatch: batch`"
            )
        for o in self.objectives:
            if o.lmeval is not None:
                raise ValueError(
                    f"promotion: successive_halving scores fitness tasks; objective {o.label!r} "
                    "is an lm-eval task"
                )
            if o.task is not None and o.estimator != "full":
                raise ValueError(
                    f"promotion: successive_halving chooses each rung's items itself; objective "
                    f"{o.label!r} has estimator {o.estimator!r}: leave it at `full`"
                )

    def content_hash(self, *, ignore_budget: bool = True) -> str:
        """What makes two runs the same search; the budget may grow on resume."""
        data = self.model_dump(mode="json")
        if ignore_budget:
            data.pop("budget")
        if data.get("tokenizer_source") is None:  # runs started before the key existed
            data.pop("tokenizer_source", None)
        data.pop("reference_points")
        if not data["schedule"]:  # the default: hashes from before the key
            data.pop("schedule")
        for key in _PLACEMENT:
            data["workers"].pop(key)
        # the workers section hashes as it did before placement keys existed (`kind: local`
        # was then the only placement), so older run directories still resume
        data["workers"]["kind"] = "local"
        for key, default in _LATER_WORKER_KEYS.items():  # runs started before they existed
            if data["workers"].get(key) == default:
                del data["workers"][key]
        if data["workers"]["dispatch"] == "batch":  # the default: hashes from before the key
            data["workers"].pop("dispatch")
        if data["holdout"] is None:  # keys added later: unset, they hash as before they existed
            data.pop("holdout")
        for o in data["objectives"]:
            if o["holdout"] is None:
                o.pop("holdout")
        if data["promotion"]["schedule"] == "front":  # runs from before successive halving
            for key in ("schedule", "rungs", "eta"):
                data["promotion"].pop(key)
        canon = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def holdout_of(self, objective: ObjectiveSpec) -> tuple[float, int] | None:
        """(fraction, seed) of the items ``objective`` keeps from the search, or None: its own
        ``holdout:`` if set, else the experiment's; costs have no items."""
        h = objective.holdout if objective.holdout is not None else self.holdout
        if objective.cost is not None or h is None or h.fraction == 0.0:
            return None
        return h.fraction, self.seed if h.seed is None else h.seed

    def resolved_sources(
        self, zoo: str | Path | None, revisions: dict[str, str] | None = None
    ) -> dict[str, str]:
        """Every source as a local directory: ``zoo:`` names in the tiny zoo, hub ids through
        the Hugging Face cache (at ``revisions``, when a run recorded them). The revisions
        themselves: :func:`evomerge.hub.resolve_sources`."""
        return resolve_sources(self.sources, zoo=zoo, revisions=revisions)[0]

    @classmethod
    def load(cls, path: str | Path) -> Experiment:
        path = Path(path)
        if not path.exists():
            raise ExperimentError(f"experiment file {path} does not exist")
        return cls.parse(read_yaml(path, error=ExperimentError), str(path))

    @classmethod
    def parse(cls, data: Any, origin: str = "experiment") -> Experiment:
        if not isinstance(data, dict):
            raise ExperimentError(f"{origin}: an experiment is a mapping")
        return validate(cls.model_validate, data, origin=origin, error=ExperimentError)

    def default_reference(
        self, objective: ObjectiveSpec, metric: str | None, direction: str | None = None
    ) -> float | None:
        """The hypervolume reference of an objective: ``reference:`` if set; for a metric in
        [0, 1] its worst end (0 maximized, 1 minimized); else None, which the archive reads as
        the worst value evaluated so far (perplexity and log-prob have no finite worst)."""
        if objective.reference is not None:
            return objective.reference
        name = (metric or "").split(",")[0]
        if direction is None:
            direction = objective.direction or direction_of(name not in _LOWER_IS_BETTER)
        if is_unit_metric(name):
            return 0.0 if maximized(direction) else 1.0
        return None


# ---------------------------------------------------------------------------------------------
# coarse to fine (evomerge.run.schedule): what a schedule's stages may say

STAGE_TARGETS = ("front", "knee")


def check_stages(stages: Sequence[Mapping[str, Any]]) -> None:
    """``until`` counts rise strictly, only the last stage has none (it runs to the end), and a
    stage's ``optimizer`` is one evomerge knows. The last stage may instead be the budget's
    ``last: N`` evaluations; the stage before it then needs no ``until``."""
    last = 0
    final = stages[-1] if stages else {}
    tail = final.get("last")
    if tail is not None and len(stages) < 2:
        raise ValueError("schedule[0].last: `last` ends a schedule of at least two stages")
    if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int) or tail < 1):
        raise ValueError(
            f"schedule[{len(stages) - 1}].last: a positive number of evaluations, got {tail!r}"
        )
    for i, st in enumerate(stages):
        if "optimizer" in st:
            _check_stage_optimizer(i, st["optimizer"])
        if st.get("target", "front") not in STAGE_TARGETS:
            raise ValueError(
                f"schedule[{i}].target: one of {', '.join(STAGE_TARGETS)}, got {st['target']!r}"
            )
        radius = st.get("radius")
        if radius is not None and (
            isinstance(radius, bool) or not isinstance(radius, int | float) or not 0 < radius < 1
        ):
            raise ValueError(
                f"schedule[{i}].radius: a trust region's half-width in unit genes, between 0 "
                f"and 1, got {radius!r}"
            )
        if radius is not None and i == 0:
            raise ValueError(
                "schedule[0].radius: a trust region is centred on the knee of the stages "
                "before it; the first stage has none"
            )
        if "last" in st and i != len(stages) - 1:
            raise ValueError(f"schedule[{i}].last: only the last stage runs the budget's last N")
        until = st.get("until")
        if i == len(stages) - 1:
            if until is not None:
                raise ValueError(f"schedule[{i}]: the last stage runs to the end; drop `until`")
            continue
        if tail is not None and i == len(stages) - 2:
            if until is not None:
                raise ValueError(
                    f"schedule[{i}].until: this stage runs until the last stage's `last: "
                    f"{tail}` evaluations begin; drop `until`"
                )
            continue
        if isinstance(until, bool) or not isinstance(until, int) or until <= last:
            raise ValueError(
                f"schedule[{i}].until: an evaluation count above the previous stage's ({last}), "
                f"got {until!r}"
            )
        last = until


def _check_stage_optimizer(i: int, spec: Any) -> None:
    """The name only: options are checked by building the optimizer, when a run opens."""
    from evomerge.optimize import OptimizerError, optimizer_class

    if not isinstance(spec, Mapping):
        raise ValueError(
            f"schedule[{i}].optimizer: a mapping like {{name: nsga2, pop_size: 12}}, got {spec!r}"
        )
    try:
        optimizer_class(OptimizerSpec.model_validate(spec).name)
    except (OptimizerError, ValidationError) as e:
        raise ValueError(f"schedule[{i}].optimizer: {e}") from None

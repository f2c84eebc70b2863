"""An experiment file: what to search (sources, space), for what (objectives), how (optimizer,
budget, workers). Validated at the door; its hash ties a run directory to it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from evomerge.errors import EvomergeError
from evomerge.evaluate.options import EngineDtype, EngineName, engine_options
from evomerge.fileio import read_yaml, validate
from evomerge.recipe import zoo_path

# Metrics that live in [0, 1]: their hypervolume reference defaults to 0 (the worst score).
_UNIT_METRICS = {"exact_match", "token_accuracy", "acc", "acc_norm"}


class ExperimentError(EvomergeError, ValueError):
    """An experiment file is malformed, or does not match the run it is used with."""


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ObjectiveSpec(_Spec):
    """A fitness task or an lm-evaluation-harness task, scored by an estimator; or a cost of the
    merged model."""

    task: str | None = None  # fitness/NAME.yaml or a path
    lmeval: str | None = None  # an lm-eval task name or task YAML (one task, not a group)
    include_path: str | None = None  # lm-eval: a directory of task YAMLs
    metric: str | None = None  # lm-eval: which metric (default: the task's first)
    direction: Literal["maximize", "minimize"] | None = None  # lm-eval (default maximize)
    estimator: str = "full"
    cost: Literal["params", "layers"] | None = None
    name: str | None = None
    weight: float = 1.0  # in the weighted sum given to single-objective optimizers
    reference: float | None = None  # hypervolume reference (the worst value that still counts)

    @model_validator(mode="after")
    def _one_kind(self) -> ObjectiveSpec:
        if sum(x is not None for x in (self.task, self.lmeval, self.cost)) != 1:
            raise ValueError("an objective names exactly one of `task:`, `lmeval:` or `cost:`")
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
    """Re-score on the full item sets a candidate whose optimistic estimate could enter the
    front (multi-fidelity): the front is then confirmed on full sets."""

    enabled: bool = False
    margin: float = 0.0
    z: float = 1.0


class WorkersSpec(_Spec):
    """Where and through which engine candidates are scored. ``engine: vllm`` needs the vLLM
    extra; ``engine_options`` are that engine's (:mod:`evomerge.evaluate.options`), checked here:
    a key the chosen engine does not take is refused by name."""

    kind: Literal["local"] = "local"  # Ray actors come next
    engine: EngineName = "hf"
    device: str = "cpu"
    dtype: EngineDtype = "float32"  # the engine's compute dtype (auto: the checkpoint's)
    batch_size: int = Field(256, ge=1)  # hf only (vLLM schedules its own batches)
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; None leaves torch's default
    engine_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("engine_options")
    @classmethod
    def _options_of_the_engine(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        engine = info.data.get("engine", "hf")
        # errors come out as workers.engine_options.<key>; what was written is kept (the hash)
        return engine_options(engine, v).model_dump(exclude_unset=True)


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
    objectives: list[ObjectiveSpec] = Field(min_length=1)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    budget: int = Field(ge=1)
    seed: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    workers: WorkersSpec = Field(default_factory=WorkersSpec)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    storage: str | None = None  # SQLAlchemy URL of the archive; default: SQLite in the run dir

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        if not self.sources:
            raise ValueError("sources: at least one source is needed")
        if self.base is not None and self.base not in self.sources:
            raise ValueError(
                f"base: {self.base!r} is not one of the sources {sorted(self.sources)}"
            )
        labels = [o.label for o in self.objectives]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"objectives: {sorted(dup)} appear twice; give them distinct `name:`s")
        return self

    def content_hash(self, *, ignore_budget: bool = True) -> str:
        """What makes two runs the same search; the budget may grow on resume."""
        data = self.model_dump(mode="json")
        if ignore_budget:
            data.pop("budget")
        for key, default in _LATER_WORKER_KEYS.items():  # runs started before they existed
            if data["workers"].get(key) == default:
                del data["workers"][key]
        canon = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def resolved_sources(self, zoo: str | Path) -> dict[str, str]:
        return {k: zoo_path(v, zoo) for k, v in self.sources.items()}

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

    def default_reference(self, objective: ObjectiveSpec, metric: str | None) -> float:
        if objective.reference is not None:
            return objective.reference
        if metric in _UNIT_METRICS:
            return 0.0
        raise ExperimentError(
            f"objective {objective.label!r}: set `reference:` (the worst value that counts) for "
            f"the hypervolume; only metrics in {sorted(_UNIT_METRICS)} default to 0"
        )

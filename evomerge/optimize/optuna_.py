"""optuna samplers on an in-memory study, driven by ``study.ask`` / ``study.tell``.

(Not named ``optuna.py``, so it can never be mistaken for the package.) ``state()`` pickles the
study and its sampler together: the in-memory storage pickles (its lock is rebuilt) and every
sampler keeps its RNG inside itself, so an unpickled pair continues exactly. A search's
``checkpoint()`` is flat instead: the sampler and the running trials, each finished trial
handed out once as a journal record, and the study rebuilt from both on restore. Failed candidates
are told as ``TrialState.FAIL``, which optuna's samplers skip when modelling.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
from pydantic import create_model

from evomerge.optimize.base import (
    Count,
    CountOrNone,
    Optimizer,
    OptimizerError,
    OptimizerOptions,
)


@contextmanager
def _quiet() -> Iterator[None]:
    """Mute optuna's per-trial INFO lines and experimental warnings, only while we call it."""
    logger = logging.getLogger("optuna")
    level = logger.level
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            from optuna.exceptions import ExperimentalWarning

            warnings.simplefilter("ignore", ExperimentalWarning)
            yield
    finally:
        logger.setLevel(level)


class _OptunaOptions(OptimizerOptions):
    batch: Count = 8


@functools.cache
def _sampler_options(sampler: type) -> type[OptimizerOptions]:
    """``batch`` plus every keyword of the sampler but ``seed`` (the sampler checks values)."""
    params = inspect.signature(sampler).parameters
    fields: dict[str, Any] = {p: (Any, None) for p in params if p != "seed"}
    return create_model(f"{sampler.__name__}Options", __base__=_OptunaOptions, **fields)


class _OptunaOptimizer(Optimizer):
    """Base for the optuna samplers; ``batch`` trials are asked before any is told.

    Options: ``batch`` (8) plus the sampler's own keyword arguments (``seed`` is ours).
    """

    sampler_name: ClassVar[str]
    libraries: ClassVar[tuple[str, ...]] = ("optuna",)
    asynchronous: ClassVar[bool] = True  # optuna's samplers take trials told in any order

    @classmethod
    def _sampler_class(cls) -> type:
        import optuna

        return getattr(optuna.samplers, cls.sampler_name)

    @classmethod
    def options_model(cls) -> type[OptimizerOptions]:
        return _sampler_options(cls._sampler_class())

    def _option_values(self, parsed: OptimizerOptions) -> dict[str, Any]:
        # the sampler's own defaults stay the sampler's: only what was given is passed on
        return {k: v for k, v in parsed if k == "batch" or k in parsed.model_fields_set}

    def _setup(self) -> None:
        import optuna
        from optuna.distributions import FloatDistribution, IntDistribution

        self._distributions = {
            g.name: FloatDistribution(0.0, 1.0)
            if g.choices is None
            else IntDistribution(0, g.choices - 1)
            for g in self.genes
        }
        kwargs = self._sampler_kwargs()
        with _quiet():
            try:
                sampler = self._sampler_class()(seed=self.seed, **kwargs)
            except (TypeError, ValueError) as exc:
                raise OptimizerError(f"optimizer {self.name!r}: bad option ({exc})") from exc
            self._configure(sampler)
            self._study = optuna.create_study(
                storage=optuna.storages.InMemoryStorage(),
                sampler=sampler,
                study_name="evomerge",
                directions=["minimize"] * self.n_objectives,
            )
        self._trials: list[int] = []
        # the journal so far (see _checkpoint_payload): trials then, and those running then
        self._last_count = 0
        self._last_running: list[int] = []

    def _sampler_kwargs(self) -> dict[str, Any]:
        """The options the sampler is constructed with."""
        return {k: v for k, v in self.options.items() if k != "batch"}

    def _configure(self, sampler: Any) -> None:
        """Options set on the sampler once made (none but for the GP's)."""

    def _ask(self) -> list[np.ndarray]:
        batch = []
        self._trials = []
        for _ in range(self.options["batch"]):
            number, genome = self._ask_one()
            self._trials.append(number)
            batch.append(genome)
        return batch

    def _tell(self, losses: list[np.ndarray | None]) -> None:
        for number, loss in zip(self._trials, losses, strict=True):
            self._tell_one(number, loss)
        self._trials = []

    # asynchronous: one trial of the study per candidate, told in any order; the trials asked
    # and not told are RUNNING, which TPE's constant liar (on by default) steers away from
    def _ask_one(self) -> tuple[int, np.ndarray]:
        with _quiet():
            trial = self._study.ask(self._distributions)
        return trial.number, np.array([trial.params[g.name] for g in self.genes], dtype=float)

    def _tell_one(self, number: int, loss: np.ndarray | None) -> None:
        from optuna.trial import TrialState

        with _quiet():
            if loss is None:
                self._study.tell(number, state=TrialState.FAIL)
            else:
                self._study.tell(number, [float(v) for v in loss])

    def _seed(self, genomes: list[np.ndarray]) -> int:
        """Enqueued: the next trials asked are these genomes, then the sampler's own."""
        with _quiet():
            for g in genomes:
                self._study.enqueue_trial(
                    {
                        gene.name: float(v) if gene.choices is None else int(v)
                        for gene, v in zip(self.genes, g, strict=True)
                    }
                )
        return len(genomes)

    def _payload(self) -> Any:
        return {"study": self._study, "trials": self._trials}

    def _load(self, payload: Any) -> None:
        self._study = payload["study"]
        self._trials = payload["trials"]

    # A long run's checkpoint: the sampler (its RNG inside), the study's attrs and the trials
    # running at the checkpoint (a batch at most), flat in size; every other trial is finished
    # and was handed out once as a journal record. So the next checkpoint's records are the
    # trials finished since: those running then, and those asked after.
    def _checkpoint_payload(self) -> tuple[Any, list[Any]]:
        from optuna.trial import TrialState

        trials = self._study.get_trials(deepcopy=False)
        since = set(self._last_running) | set(range(self._last_count, len(trials)))
        records = [
            _record(trials[i]) for i in sorted(since) if trials[i].state != TrialState.RUNNING
        ]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        self._last_count, self._last_running = len(trials), [t.number for t in running]
        payload = {
            "sampler": self._study.sampler,
            "user_attrs": self._study.user_attrs,
            "system_attrs": self._study._storage.get_study_system_attrs(self._study._study_id),
            "running": running,
            "count": len(trials),
            "trials": self._trials,
        }
        return payload, records

    def _load_journaled(self, payload: Any, records: list[Any]) -> None:
        import optuna

        finished = [_trial(r, self._distributions) for r in records]
        trials = sorted([*finished, *payload["running"]], key=lambda t: t.number)
        if [t.number for t in trials] != list(range(payload["count"])):
            raise OptimizerError(
                f"optimizer {self.name!r}: the journal does not hold the trials its checkpoint "
                f"needs ({len(records)} records, {payload['count']} trials)"
            )
        with _quiet():
            study = optuna.create_study(
                storage=optuna.storages.InMemoryStorage(),
                sampler=payload["sampler"],
                study_name="evomerge",
                directions=["minimize"] * self.n_objectives,
            )
            storage = study._storage
            for key, value in payload["system_attrs"].items():
                storage.set_study_system_attr(study._study_id, key, value)
            for key, value in payload["user_attrs"].items():
                storage.set_study_user_attr(study._study_id, key, value)
            for t in trials:  # numbers and ids come out as they were: 0, 1, 2… in order
                storage.create_new_trial(study._study_id, template_trial=t)
        self._study, self._trials = study, payload["trials"]
        self._last_count = payload["count"]
        self._last_running = [t.number for t in payload["running"]]


def _record(t: Any) -> tuple[Any, ...]:
    """A finished trial as plain data (a third of a pickled FrozenTrial: the distributions,
    the same for every trial, are the optimizer's)."""
    return (
        t.number,
        t.state.name,
        t.values,
        t.params,
        t.system_attrs,
        t.user_attrs,
        t.intermediate_values,
        t.datetime_start,
        t.datetime_complete,
    )


def _trial(r: tuple[Any, ...], distributions: dict[str, Any]) -> Any:
    from optuna.trial import FrozenTrial, TrialState

    number, state, values, params, system, user, inter, start, end = r
    return FrozenTrial(
        number=number,
        state=TrialState[state],
        value=None,
        values=values,
        datetime_start=start,
        datetime_complete=end,
        params=params,
        distributions={k: distributions[k] for k in params},
        user_attrs=user,
        system_attrs=system,
        intermediate_values=inter,
        trial_id=number,
    )


class OptunaTPE(_OptunaOptimizer):
    """Tree-structured Parzen estimator; handles several objectives."""

    name: ClassVar[str] = "optuna-tpe"
    multi_objective: ClassVar[bool] = True
    sampler_name: ClassVar[str] = "TPESampler"


class OptunaCmaEs(_OptunaOptimizer):
    """optuna's CMA-ES (needs the ``cmaes`` package); single objective only in optuna."""

    name: ClassVar[str] = "optuna-cmaes"
    multi_objective: ClassVar[bool] = False
    sampler_name: ClassVar[str] = "CmaEsSampler"
    libraries: ClassVar[tuple[str, ...]] = ("optuna", "cmaes")

    def _setup(self) -> None:
        if importlib.util.find_spec("cmaes") is None:
            raise OptimizerError(
                f"optimizer {self.name!r} needs the 'cmaes' package (pip install cmaes); "
                "or use 'cma'"
            )
        super()._setup()


class OptunaNSGA2(_OptunaOptimizer):
    """optuna's NSGA-II sampler (generations of ``population_size`` completed trials)."""

    name: ClassVar[str] = "optuna-nsga2"
    multi_objective: ClassVar[bool] = True
    sampler_name: ClassVar[str] = "NSGAIISampler"


class OptunaNSGA3(_OptunaOptimizer):
    """optuna's NSGA-III sampler."""

    name: ClassVar[str] = "optuna-nsga3"
    multi_objective: ClassVar[bool] = True
    sampler_name: ClassVar[str] = "NSGAIIISampler"


class OptunaGP(_OptunaOptimizer):
    """Gaussian-process Bayesian optimization (torch); several objectives supported.

    Options beside the sampler's: how hard each ask optimizes the acquisition function, its
    main cost on a CPU. optuna scores ``acquisition_candidates`` quasi-random points (2048) and
    refines the best ``acquisition_restarts`` of them (10) with L-BFGS-B. optuna has no keyword
    for either (4.5–5.1): they are the sampler's private attributes, set after construction
    and refused with a clear error where a release renamed them
    (``test_gp_acquisition_options_reach_the_sampler`` pins the names).
    """

    name: ClassVar[str] = "optuna-gp"
    multi_objective: ClassVar[bool] = True
    sampler_name: ClassVar[str] = "GPSampler"
    _ACQUISITION: ClassVar[dict[str, str]] = {
        "acquisition_candidates": "_n_preliminary_samples",
        "acquisition_restarts": "_n_local_search",
    }

    @classmethod
    def options_model(cls) -> type[OptimizerOptions]:
        return _gp_options(cls._sampler_class())

    def _sampler_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in super()._sampler_kwargs().items() if k not in self._ACQUISITION}

    def _configure(self, sampler: Any) -> None:
        given = {k: self.options[k] for k in self._ACQUISITION if self.options.get(k) is not None}
        for option, value in given.items():
            attribute = self._ACQUISITION[option]
            if not isinstance(getattr(sampler, attribute, None), int):
                import optuna

                raise OptimizerError(
                    f"optimizer {self.name!r}: option {option!r} needs optuna's GPSampler."
                    f"{attribute}, which optuna {optuna.__version__} does not have; "
                    "leave the option out"
                )
            setattr(sampler, attribute, int(value))
        if not given:
            return
        candidates, restarts = sampler._n_preliminary_samples, sampler._n_local_search
        if not 2 <= restarts <= candidates:
            raise OptimizerError(
                f"optimizer {self.name!r}: acquisition_restarts must be at least 2 and at most "
                f"acquisition_candidates, got {restarts} and {candidates}"
            )


@functools.cache
def _gp_options(sampler: type) -> type[OptimizerOptions]:
    return create_model(
        "GPSamplerOptions",
        __base__=_sampler_options(sampler),
        acquisition_candidates=(CountOrNone, None),
        acquisition_restarts=(CountOrNone, None),
    )

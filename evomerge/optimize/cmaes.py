"""CMA-ES (the ``cma`` package) with optional IPOP restarts.

cma draws from numpy's *global* RNG; every call into it runs with a private copy of that state
swapped in, so the search is reproducible whatever else uses ``np.random``, and vice versa.
Integer genes use cma's own ``integer_variables`` handling (rounding plus a floor on their step
size, so they keep moving), searched on [0, k-1] with bounds at ±0.5 so rounding stays in range.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Real
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import ValidationInfo, field_validator

from evomerge.optimize.base import (
    NonNegative,
    Optimizer,
    OptimizerOptions,
    Positive,
    SizeOrNone,
    penalty,
    update_worst,
)

if TYPE_CHECKING:
    import cma


class CMAES(Optimizer):
    """``cma.CMAEvolutionStrategy``; one ``ask`` is one generation (``popsize`` genomes).

    Options: ``popsize`` (None: cma's default), ``sigma0`` (0.25, a fraction of every gene's
    range), ``x0`` (start, normalized to [0, 1] for every gene; default the middle of each
    range), ``restarts`` (IPOP: when cma's ``stop()`` fires, start again from a random point with
    the population doubled; with none left the stopped ES keeps being asked). Started from given
    genomes (a schedule's coarser stage), it asks them first, all at once, then starts at the
    best of them with ``sigma0``: a local search around the incumbent, as a trust region is
    (``x0`` is then ignored). Failed candidates
    get a loss worse than any finite loss seen. The global-RNG swap is not thread-safe: do not
    use ``np.random`` from another thread while this optimizer runs.
    """

    name: ClassVar[str] = "cma"
    multi_objective: ClassVar[bool] = False
    libraries: ClassVar[tuple[str, ...]] = ("cma",)

    class Options(OptimizerOptions):
        popsize: SizeOrNone = None
        sigma0: Positive = 0.25
        x0: list[float] | None = None
        restarts: NonNegative = 0

        @field_validator("x0", mode="before")
        @classmethod
        def _x0(cls, x0: Any, info: ValidationInfo) -> list[float] | None:
            if x0 is None:
                return None
            n = len(info.context["genes"]) if info.context else None
            ok = isinstance(x0, (list, tuple, np.ndarray)) and len(x0) == n
            ok = ok and all(isinstance(v, Real) and not isinstance(v, bool) for v in x0)
            if not ok or not all(0.0 <= float(v) <= 1.0 for v in x0):
                raise ValueError(
                    f"must list {n} numbers in [0, 1] (one per gene, normalized also for "
                    f"integer genes), got {x0!r}"
                )
            return [float(v) for v in x0]

    def _setup(self) -> None:
        # cma fails on bounded 1-D problems, so a lone gene gets an ignored real companion.
        self._coords = [g.choices for g in self.genes] + ([None] if len(self.genes) == 1 else [])
        self._span = np.array([1.0 if k is None else k - 1.0 for k in self._coords])
        self._ints = [i for i, k in enumerate(self._coords) if k is not None]
        self._rng = np.random.default_rng(self.seed)
        self._np_state = np.random.RandomState(0).get_state()
        self._worst = np.full(1, np.nan)
        self._restarts_done = 0
        self._raw: list[np.ndarray] = []
        self._seeds: list[np.ndarray] | None = None  # asked first, then the start (start_from)
        x0 = np.full(len(self._coords), 0.5)
        if self.options["x0"] is not None:
            x0[: len(self.genes)] = self.options["x0"]
        self._es = self._new_es(x0, self.options["popsize"])

    @property
    def restarts_done(self) -> int:
        """How many IPOP restarts happened so far."""
        return self._restarts_done

    @contextmanager
    def _private_global_rng(self) -> Iterator[None]:
        outer = np.random.get_state()
        np.random.set_state(self._np_state)
        try:
            yield
        finally:
            self._np_state = np.random.get_state()
            np.random.set_state(outer)

    def _new_es(self, x0_normalized: np.ndarray, popsize: int | None) -> cma.CMAEvolutionStrategy:
        import cma

        lower = [0.0 if k is None else -0.5 for k in self._coords]
        upper = [1.0 if k is None else k - 0.5 for k in self._coords]
        opts: dict[str, Any] = {
            "bounds": [lower, upper],
            # sigma0 is in normalized units; an integer coordinate spans choices, not 1.
            "CMA_stds": [1.0 if k is None else float(k) for k in self._coords],
            # cma treats seed 0 as "seed from the clock": never pass it.
            "seed": int(self._rng.integers(1, 2**31 - 1)),
            "verbose": -9,
        }
        if self._ints:
            opts["integer_variables"] = list(self._ints)
        if popsize is not None:
            opts["popsize"] = popsize
        with self._private_global_rng():
            return cma.CMAEvolutionStrategy(
                list(x0_normalized * self._span), self.options["sigma0"], opts
            )

    def _seed(self, genomes: list[np.ndarray]) -> int:
        if self._seeds is not None or self._raw or self._es.countiter > 0:
            return 0  # already under way
        self._seeds = [g.astype(np.float64) for g in genomes]
        return len(genomes)

    def _ask(self) -> list[np.ndarray]:
        if self._seeds is not None:
            return [g.copy() for g in self._seeds]
        with self._private_global_rng():
            raw = self._es.ask()
        # cma's coordinates are already genome units (integers on [0, k-1], rounded by cma);
        # keep them verbatim because tell must hand cma back exactly what it asked.
        self._raw = [np.array(x, dtype=np.float64) for x in raw]
        return [x[: len(self.genes)].copy() for x in self._raw]

    def _tell(self, losses: list[np.ndarray | None]) -> None:
        self._worst = update_worst(self._worst, losses)
        if self._seeds is not None:  # the seeds' round: start where they did best
            scored = [(float(loss[0]), i) for i, loss in enumerate(losses) if loss is not None]
            if scored:
                x0 = np.full(len(self._coords), 0.5)
                x0[: len(self.genes)] = self._seeds[min(scored)[1]] / self._span[: len(self.genes)]
                self._es = self._new_es(x0, self.options["popsize"])
            self._seeds = None
            return
        bad = float(penalty(self._worst)[0])
        fitness = [bad if loss is None else float(loss[0]) for loss in losses]
        with self._private_global_rng():
            self._es.tell(self._raw, fitness)
            stopped = bool(self._es.stop())
        self._raw = []
        if stopped and self._restarts_done < self.options["restarts"]:
            self._restarts_done += 1
            self._es = self._new_es(self._rng.random(len(self._coords)), 2 * int(self._es.popsize))

    def _payload(self) -> Any:
        return {
            "es": self._es,
            "rng": self._rng.bit_generator.state,
            "np_state": self._np_state,
            "worst": self._worst,
            "restarts_done": self._restarts_done,
            "raw": self._raw,
            "seeds": self._seeds,
        }

    def _load(self, payload: Any) -> None:
        self._es = payload["es"]
        self._rng.bit_generator.state = payload["rng"]
        self._np_state = payload["np_state"]
        self._worst = payload["worst"]
        self._restarts_done = payload["restarts_done"]
        self._raw = payload["raw"]
        self._seeds = payload.get("seeds")  # states saved before seeding existed lack it

"""NSGA-II and NSGA-III from pymoo, driven through pymoo's ask/tell interface.

(Not named ``pymoo.py``, so it can never be mistaken for the package.) pymoo 0.6.2 draws only
from the algorithm's own ``random_state`` Generator, so pickling the algorithm resumes exactly;
a few of its operators are decorated module functions that plain pickle cannot name; the state
pickler in ``base`` names them by the module attribute that holds them.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
from pydantic import ValidationInfo, model_validator

from evomerge.optimize.base import (
    CountOrNone,
    Optimizer,
    OptimizerOptions,
    Positive,
    Size,
    penalty,
    update_worst,
)

_FAILED = "evomerge_failed"


class _PymooOptimizer(Optimizer):
    """Shared ask/tell plumbing; subclasses only build the algorithm.

    Integer genes are searched on [0, k-1] with a repair that rounds them after sampling and
    after every variation (pymoo applies the same repair to the initial population). Failed
    candidates get a loss worse than every finite loss seen, per objective, and those penalties
    are raised again as worse losses arrive, so a failure never outranks a real result.
    The first ``ask`` returns ``pop_size`` genomes, later ones up to ``n_offsprings`` (duplicate
    offspring are dropped); if mating produces none at all, random genomes are asked instead.
    """

    multi_objective: ClassVar[bool] = True
    libraries: ClassVar[tuple[str, ...]] = ("pymoo",)
    crossover_prob: ClassVar[float] = 0.9

    class Options(OptimizerOptions):
        pop_size: Size = 16
        n_offsprings: CountOrNone = None  # None: pop_size
        # the distribution indices of SBX crossover and polynomial mutation (defaults: each
        # pymoo algorithm's own); smaller values make offspring land farther from their parents
        eta_crossover: Positive = 15.0
        eta_mutation: Positive = 20.0

        @model_validator(mode="after")
        def _offsprings(self) -> _PymooOptimizer.Options:
            if self.n_offsprings is None:
                self.n_offsprings = self.pop_size
            return self

    @abstractmethod
    def _make_algorithm(self, **kwargs: Any) -> Any:
        """The pymoo algorithm, given the shared operators and sizes."""

    def _setup(self) -> None:
        from pymoo.core.problem import Problem
        from pymoo.core.termination import NoTermination
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM

        from evomerge.optimize._pymoo_ops import MixedSampling, RoundIntegers

        n = len(self.genes)
        xu = np.array([1.0 if g.choices is None else g.choices - 1.0 for g in self.genes])
        self._problem = Problem(n_var=n, n_obj=self.n_objectives, xl=np.zeros(n), xu=xu)
        self._algorithm = self._make_algorithm(
            pop_size=self.options["pop_size"],
            n_offsprings=self.options["n_offsprings"],
            sampling=MixedSampling(tuple(g.choices for g in self.genes)),
            repair=RoundIntegers([i for i, g in enumerate(self.genes) if g.choices is not None]),
            crossover=SBX(eta=self.options["eta_crossover"], prob=self.crossover_prob),
            mutation=PM(eta=self.options["eta_mutation"]),
            eliminate_duplicates=True,
        )
        self._algorithm.setup(self._problem, seed=self.seed, termination=NoTermination())
        self._worst = np.full(self.n_objectives, np.nan)
        self._infills: Any = None

    def _ask(self) -> list[np.ndarray]:
        alg = self._algorithm
        pop = alg.ask()
        if pop is None or len(pop) == 0:
            # Mating found no unseen offspring (a collapsed population): bring in immigrants.
            alg.termination.force_termination = False
            pop = alg.initialization.do(
                self._problem,
                self.options["n_offsprings"],
                algorithm=alg,
                random_state=alg.random_state,
            )
        self._infills = pop
        return [np.array(x, dtype=np.float64) for x in pop.get("X")]

    def _seed(self, genomes: list[np.ndarray]) -> int:
        """The first population is these genomes (all of them: survival then keeps the best
        ``pop_size``), instead of a random sample."""
        if self._algorithm.is_initialized:
            return 0
        self._algorithm.initialization.sampling = np.stack(genomes)
        return len(genomes)

    def _tell(self, losses: list[np.ndarray | None]) -> None:
        from pymoo.core.evaluator import Evaluator
        from pymoo.problems.static import StaticProblem

        self._worst = update_worst(self._worst, losses)
        bad = penalty(self._worst)
        alg = self._algorithm
        if alg.is_initialized and alg.pop is not None:
            for ind in alg.pop:
                if ind.get(_FAILED):
                    ind.set("F", bad.copy())
        f = np.stack([bad if loss is None else loss for loss in losses])
        Evaluator().eval(StaticProblem(self._problem, F=f), self._infills)
        self._infills.set(_FAILED, np.array([loss is None for loss in losses]))
        alg.tell(infills=self._infills)
        self._infills = None

    def _payload(self) -> Any:
        return {
            "algorithm": self._algorithm,
            "problem": self._problem,
            "infills": self._infills,
            "worst": self._worst,
        }

    def _load(self, payload: Any) -> None:
        self._algorithm = payload["algorithm"]
        self._problem = payload["problem"]
        self._infills = payload["infills"]
        self._worst = payload["worst"]


class NSGA2(_PymooOptimizer):
    """pymoo NSGA-II; options ``pop_size`` (16) and ``n_offsprings`` (= pop_size)."""

    name: ClassVar[str] = "nsga2"

    def _make_algorithm(self, **kwargs: Any) -> Any:
        from pymoo.algorithms.moo.nsga2 import NSGA2 as _NSGA2

        return _NSGA2(**kwargs)


def _n_directions(n_objectives: int, n_partitions: int) -> int:
    return math.comb(n_partitions + n_objectives - 1, n_objectives - 1)


class NSGA3(_PymooOptimizer):
    """pymoo NSGA-III with Das-Dennis reference directions.

    ``n_partitions`` defaults to the largest value whose direction count fits in ``pop_size``,
    since NSGA-III wants about one survivor per direction.
    """

    name: ClassVar[str] = "nsga3"
    crossover_prob: ClassVar[float] = 1.0

    class Options(_PymooOptimizer.Options):
        eta_crossover: Positive = 30.0
        n_partitions: CountOrNone = None

        @model_validator(mode="after")
        def _partitions(self, info: ValidationInfo) -> NSGA3.Options:
            m, pop_size = info.context["n_objectives"], self.pop_size
            p = self.n_partitions
            if p is None:
                p = 1
                while m > 1 and _n_directions(m, p + 1) <= pop_size:
                    p += 1
                self.n_partitions = p
            if _n_directions(m, p) > pop_size:
                raise ValueError(
                    f"n_partitions={p} gives {_n_directions(m, p)} reference directions for {m} "
                    f"objectives, more than pop_size={pop_size}; raise pop_size or lower "
                    "n_partitions"
                )
            return self

    def _make_algorithm(self, **kwargs: Any) -> Any:
        from pymoo.algorithms.moo.nsga3 import NSGA3 as _NSGA3
        from pymoo.util.ref_dirs import get_reference_directions

        ref_dirs = get_reference_directions(
            "das-dennis", self.n_objectives, n_partitions=self.options["n_partitions"]
        )
        return _NSGA3(ref_dirs=ref_dirs, **kwargs)

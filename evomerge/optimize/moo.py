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

from evomerge.optimize.base import Optimizer, OptimizerError, penalty, update_worst

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
    crossover_prob: ClassVar[float] = 0.9
    # eta_*: the distribution indices of SBX crossover and polynomial mutation (defaults: each
    # pymoo algorithm's own); smaller values make offspring land farther from their parents.
    defaults: ClassVar[dict[str, Any]] = {
        "pop_size": 16,
        "n_offsprings": None,
        "eta_crossover": 15.0,
        "eta_mutation": 20.0,
    }

    def _check_options(self) -> None:
        self._int_option("pop_size", 2)
        self._int_option("n_offsprings", 1, allow_none=True)
        self._positive_float_option("eta_crossover")
        self._positive_float_option("eta_mutation")
        if self.options["n_offsprings"] is None:
            self.options["n_offsprings"] = self.options["pop_size"]

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
    defaults: ClassVar[dict[str, Any]] = {
        **_PymooOptimizer.defaults,
        "eta_crossover": 30.0,
        "n_partitions": None,
    }

    def _check_options(self) -> None:
        super()._check_options()
        self._int_option("n_partitions", 1, allow_none=True)
        m, pop_size = self.n_objectives, self.options["pop_size"]
        p = self.options["n_partitions"]
        if p is None:
            p = 1
            while m > 1 and _n_directions(m, p + 1) <= pop_size:
                p += 1
            self.options["n_partitions"] = p
        if _n_directions(m, p) > pop_size:
            raise OptimizerError(
                f"optimizer {self.name!r}: n_partitions={p} gives {_n_directions(m, p)} reference "
                f"directions for {m} objectives, more than pop_size={pop_size}; raise pop_size "
                "or lower n_partitions"
            )

    def _make_algorithm(self, **kwargs: Any) -> Any:
        from pymoo.algorithms.moo.nsga3 import NSGA3 as _NSGA3
        from pymoo.util.ref_dirs import get_reference_directions

        ref_dirs = get_reference_directions(
            "das-dennis", self.n_objectives, n_partitions=self.options["n_partitions"]
        )
        return _NSGA3(ref_dirs=ref_dirs, **kwargs)

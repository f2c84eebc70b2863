"""What every estimator shares: the ``Estimator`` base class, its result (``Estimate``), the
registry of names and ``make_estimator``, which turns a spec from an experiment file into one.
The checks on item sets and scores are :mod:`.items`; the estimators themselves
(:mod:`.sampling`: ``full``, ``subsample:K``; :mod:`.anchors`, :mod:`.irt`) add themselves to
the registry when the package is imported, so this module needs none of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from evomerge.evaluate.estimators.items import EstimatorError

if TYPE_CHECKING:
    from evomerge.evaluate.estimators.calibration import Calibration


@dataclass(frozen=True)
class Estimate:
    """A predicted full-set mean score and how much it cost: ``fidelity`` is the share of items
    scored (1.0 is the exact mean), ``stderr`` its error bar when the estimator has one."""

    value: float
    items_used: int
    n_items: int
    fidelity: float = field(init=False)
    stderr: float | None
    estimator: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "fidelity", self.items_used / self.n_items)


# ---------------------------------------------------------------------------------------------
# estimators


class Estimator(ABC):
    """Which items to score (``select``) and what their scores say of the full set
    (``estimate``). Both are deterministic given the seed and the calibration."""

    name: str = ""
    needs_calibration: bool = False
    # True where the estimator's model only holds for scores in [0, 1] (IRT's Bernoulli
    # likelihood); the others are weighted means and take any finite score (log-prob, perplexity)
    unit_scores_only: bool = False

    def __init__(self, k: int | None = None, seed: int = 0) -> None:
        if k is not None and k < 1:
            raise EstimatorError(f"{self.name}:{k}: the item count must be at least 1")
        self.k, self.seed = k, seed

    @property
    def spec(self) -> str:
        """The name ``make_estimator`` takes back: 'anchor:100'."""
        return self.name if self.k is None else f"{self.name}:{self.k}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec} seed={self.seed}>"

    def calibrate(
        self, responses: np.ndarray | Calibration, item_ids: Sequence[str] | None = None
    ) -> Estimator:
        """Learn from known models' responses (n_models × n_items); a no-op where not needed."""
        return self

    @abstractmethod
    def select(self, item_ids: Sequence[str]) -> list[str]:
        """The item ids to score, a deterministic subset of ``item_ids``."""

    @abstractmethod
    def estimate(self, responses: Mapping[str, float], item_ids: Sequence[str]) -> Estimate:
        """The full-set estimate from the scored items' responses."""

    def _check_k(self, n: int) -> int:
        if self.k is not None and self.k > n:
            raise EstimatorError(f"{self.spec} asks for {self.k} items but the task has only {n}")
        return n if self.k is None else self.k


def check_estimator(estimator: Estimator, metric: str, unit: bool, objective: str) -> None:
    """Refuse, before any scoring, an estimator that cannot take a metric's scores: IRT needs
    scores in [0, 1] and log-prob or perplexity are not (``unit`` says whether ``metric`` is).
    ``objective`` names the objective (or task) in the error."""
    if estimator.unit_scores_only and not unit:
        raise EstimatorError(
            f"objective {objective!r}: estimator {estimator.spec!r} models scores in [0, 1] but "
            f"metric {metric!r} is not bounded so; use full, subsample:K or anchor:K"
        )


_Factory = Callable[[int, int, Mapping[str, str] | None], Estimator]
_ESTIMATORS: dict[str, _Factory] = {}


def register_estimator(name: str, factory: _Factory) -> None:
    """Make ``name:K`` a spec ``make_estimator`` (and so an experiment file) knows:
    ``factory(k, seed, strata)`` builds the estimator. A new estimator is a module that calls
    this, imported in the package's ``__init__`` (CONTRIBUTING.md)."""
    if name in _ESTIMATORS:
        raise ValueError(f"estimator {name!r} registered twice")
    _ESTIMATORS[name] = factory


def make_estimator(
    spec: str, seed: int = 0, *, strata: Mapping[str, str] | None = None
) -> Estimator:
    """'full', 'subsample:K', 'anchor:K', 'irt:K' (= 'gpirt:K'), 'pirt:K' → an estimator, so an
    experiment file names one. ``strata`` (item id → label) is used by subsample, ignored else."""
    name, colon, arg = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in _ESTIMATORS:
        known = ", ".join(_ESTIMATORS)
        raise EstimatorError(f"unknown estimator {name!r} in {spec!r}; known: {known}")
    if name == "full":
        if colon:
            raise EstimatorError(f"{spec!r}: 'full' takes no item count")
        return _ESTIMATORS["full"](0, seed, strata)
    try:
        k = int(arg)
    except ValueError:
        raise EstimatorError(f"{spec!r}: {name} needs an item count, as in '{name}:100'") from None
    if k < 1:
        raise EstimatorError(f"{spec!r}: the item count must be at least 1")
    return _ESTIMATORS[name](k, seed, strata)

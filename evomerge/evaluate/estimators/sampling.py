"""The estimators that need no calibration: ``full`` (every item, the exact mean) and
``subsample:K`` (a seeded, stratified random sample; unbiased, with an honest error bar).

``Subsample`` is also the worked example in CONTRIBUTING.md of adding an estimator: a class with
``select`` and ``estimate``, one ``register_estimator`` line, and the module imported in the
package's ``__init__``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from evomerge.evaluate.estimators.base import (
    Estimate,
    Estimator,
    EstimatorError,
    register_estimator,
)
from evomerge.evaluate.estimators.items import item_pool, response_vector


class Full(Estimator):
    """Every item: the exact mean (stderr = sd/√n, the noise of the benchmark itself)."""

    name = "full"

    def select(self, item_ids: Sequence[str]) -> list[str]:
        return item_pool(item_ids)

    def estimate(self, responses: Mapping[str, float], item_ids: Sequence[str]) -> Estimate:
        ids = self.select(item_ids)
        y = response_vector(responses, ids, unit=False)
        se = float(y.std(ddof=1) / math.sqrt(len(y))) if len(y) > 1 else None
        return Estimate(float(y.mean()), len(y), len(y), se, self.spec)


def _allocate(k: int, sizes: np.ndarray) -> np.ndarray:
    """Proportional allocation of k draws to strata, at least one each (largest remainders)."""
    quota = k * sizes / sizes.sum()
    n = np.minimum(np.maximum(np.floor(quota), 1), sizes).astype(int)
    while n.sum() > k:  # the minimum of one overshot: take from the most over-served stratum
        n[np.argmax(np.where(n > 1, n - quota, -np.inf))] -= 1
    while n.sum() < k:
        n[np.argmax(np.where(n < sizes, quota - n, -np.inf))] += 1
    return n


class Subsample(Estimator):
    """A seeded random sample, stratified proportionally when items carry a stratum (subtask,
    skill): no calibration, unbiased, and its error bar is honest. Each stratum's sample is a
    prefix of a seeded permutation of its items, so a larger K reuses a smaller K's items (all
    of them unstratified; stratified, all but where rounding shrinks a stratum's share)."""

    name = "subsample"

    def __init__(self, k: int, seed: int = 0, strata: Mapping[str, str] | None = None) -> None:
        super().__init__(k, seed)
        self.strata = strata
        self._plans: dict[tuple[str, ...], list[tuple[list[str], int]]] = {}

    def _plan(self, item_ids: Sequence[str]) -> list[tuple[list[str], int]]:
        """Per stratum: the chosen items and the stratum's size (computed once per item set:
        every candidate of a search asks for the same one)."""
        key = tuple(item_ids)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._make_plan(item_ids)
        return plan

    def _make_plan(self, item_ids: Sequence[str]) -> list[tuple[list[str], int]]:
        ids = sorted(item_pool(item_ids))
        k = self._check_k(len(ids))
        groups: dict[str, list[str]] = {}
        for i in ids:
            if self.strata is not None and i not in self.strata:
                raise EstimatorError(f"item {i!r} has no stratum label")
            groups.setdefault(self.strata[i] if self.strata is not None else "", []).append(i)
        if len(groups) > k:  # too few draws to visit every stratum: sample uniformly instead
            groups = {"": ids}
        names = sorted(groups)
        alloc = _allocate(k, np.array([len(groups[g]) for g in names]))
        plan = []
        for g, n_h in zip(names, alloc, strict=True):
            rng = np.random.default_rng([self.seed, zlib.crc32(g.encode())])
            order = rng.permutation(len(groups[g]))[:n_h]
            plan.append(([groups[g][j] for j in order], len(groups[g])))
        return plan

    def select(self, item_ids: Sequence[str]) -> list[str]:
        return [i for chosen, _ in self._plan(item_ids) for i in chosen]

    def estimate(self, responses: Mapping[str, float], item_ids: Sequence[str]) -> Estimate:
        plan = self._plan(item_ids)
        ys = [response_vector(responses, chosen, unit=False) for chosen, _ in plan]
        n_all = sum(size for _, size in plan)
        used = sum(len(y) for y in ys)
        pooled = float(np.concatenate(ys).var(ddof=1)) if used > 1 else math.nan
        value, var = 0.0, 0.0
        for y, (_, size) in zip(ys, plan, strict=True):
            w = size / n_all
            value += w * float(y.mean())
            if len(y) < size:  # finite-population correction: a census has no sampling error
                s2 = float(y.var(ddof=1)) if len(y) > 1 else pooled
                var += w * w * (1 - len(y) / size) * s2 / len(y)
        se = math.sqrt(var) if math.isfinite(var) else None
        return Estimate(value, used, n_all, se, self.spec)  # a weighted mean: no clamp needed


register_estimator("full", lambda k, seed, strata: Full(None, seed))
register_estimator("subsample", lambda k, seed, strata: Subsample(k, seed, strata))

"""Anchor points (tinyBenchmarks): items that the calibration models answer alike are clustered
by seeded k-means, and one anchor per cluster stands for it, weighted by the cluster's share of
items. ``_Calibrated`` is the plumbing every calibrated estimator shares (anchors chosen at
``calibrate``, the item set checked at ``select``): the IRT estimator chooses its items the same
way, in another space, and blends in this estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from evomerge.evaluate.estimators.base import (
    Estimate,
    Estimator,
    EstimatorError,
    register_estimator,
)
from evomerge.evaluate.estimators.calibration import Calibration, _as_calibration, _halves
from evomerge.evaluate.estimators.items import item_pool, response_vector

# ---------------------------------------------------------------------------------------------
# seeded k-means (k-means++ start), one anchor per cluster


def _sqdist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None], 0.0)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    picked = [int(rng.integers(len(x)))]
    d2 = ((x - x[picked[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        if total > 0:
            i = int(rng.choice(len(x), p=d2 / total))
        else:  # every point sits on a center (duplicates): any unpicked point will do
            i = int(rng.choice(np.setdiff1d(np.arange(len(x)), picked)))
        picked.append(i)
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return x[picked].copy()


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 4) -> np.ndarray:
    """Cluster labels with exactly k non-empty clusters (binary responses repeat a lot, so
    Lloyd's step can empty a cluster: it then takes the farthest point of the largest one)."""
    best, best_inertia = np.zeros(len(x), dtype=int), np.inf
    for _ in range(n_init):
        c = _kmeans_pp(x, k, rng)
        for _ in range(100):
            d = _sqdist(x, c)
            labels = d.argmin(1)
            counts = np.bincount(labels, minlength=k)
            sums = np.stack([np.bincount(labels, x[:, j], k) for j in range(x.shape[1])], 1)
            new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
            if np.allclose(new, c):
                break
            c = new
        inertia = d[np.arange(len(x)), labels].sum()
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    for c_empty in np.flatnonzero(np.bincount(best, minlength=k) == 0):
        members = np.flatnonzero(best == np.bincount(best, minlength=k).argmax())
        spread = ((x[members] - x[members].mean(0)) ** 2).sum(1)
        best[members[spread.argmax()]] = c_empty
    return best


def _anchors(points: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of k anchor items (closest to their cluster's centroid), sorted, and weights
    (cluster size / n) summing to 1."""
    n = len(points)
    labels = np.arange(n) if k == n else _kmeans(points, k, np.random.default_rng(seed))
    picked, weights = np.empty(k, dtype=int), np.empty(k)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        spread = ((points[members] - points[members].mean(0)) ** 2).sum(1)
        picked[c], weights[c] = members[spread.argmin()], len(members) / n
    order = np.argsort(picked)
    return picked[order], weights[order]


def _rms(x: Sequence[float] | np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


class _Calibrated(Estimator):
    """Shared plumbing: anchors and weights chosen at ``calibrate``, checked at ``select``."""

    needs_calibration = True
    _cal: Calibration | None = None
    _picked: np.ndarray
    _weights: np.ndarray

    def _check_pool(self, item_ids: Sequence[str]) -> Calibration:
        if self._cal is None:
            raise EstimatorError(f"{self.spec}: call calibrate() before select() or estimate()")
        ids = item_pool(item_ids)
        if set(ids) != set(self._cal.item_ids):
            extra = sorted(set(ids) - set(self._cal.item_ids))
            lack = sorted(set(self._cal.item_ids) - set(ids))
            what = f"item {extra[0]!r} is not" if extra else f"item {lack[0]!r} is missing from"
            raise EstimatorError(f"{self.spec}: {what} the calibrated item set")
        return self._cal

    def _calibrated(
        self, x: np.ndarray | Calibration, ids: Sequence[str] | None, irt: bool
    ) -> Calibration:
        cal = _as_calibration(x, ids, irt, self.seed)
        self._check_k(cal.n_items)
        return cal

    def select(self, item_ids: Sequence[str]) -> list[str]:
        cal = self._check_pool(item_ids)
        return [cal.item_ids[i] for i in self._picked]

    @property
    def weights(self) -> dict[str, float]:
        """Each anchor's share of the item set (they sum to 1)."""
        if self._cal is None:
            raise EstimatorError(f"{self.spec}: call calibrate() first")
        ids = self._cal.item_ids
        return {ids[i]: float(w) for i, w in zip(self._picked, self._weights, strict=True)}


class Anchor(_Calibrated):
    """tinyBenchmarks anchor points: items that the calibration models answer alike are
    clustered; one anchor per cluster stands for it, weighted by its size. stderr: the RMS
    error, on the other half of the models, of anchors chosen on one half (in-sample, so
    optimistic, with fewer than 4 models)."""

    name = "anchor"

    def __init__(self, k: int, seed: int = 0) -> None:
        super().__init__(k, seed)

    def calibrate(
        self, responses: np.ndarray | Calibration, item_ids: Sequence[str] | None = None
    ) -> Anchor:
        cal = self._calibrated(responses, item_ids, irt=False)
        y, k = cal.responses, self._check_k(cal.n_items)
        self._picked, self._weights = _anchors(y.T, k, self.seed)
        err = y[:, self._picked] @ self._weights - y.mean(1)
        if halves := _halves(cal.n_models, self.seed):
            err = []
            for held in halves:
                picked, weights = _anchors(y[~held].T, k, self.seed)
                err.extend(y[held][:, picked] @ weights - y[held].mean(1))
        self._stderr, self._cal = _rms(err), cal
        return self

    def estimate(self, responses: Mapping[str, float], item_ids: Sequence[str]) -> Estimate:
        ids = self.select(item_ids)
        # a convex combination of the anchors' responses
        value = float(response_vector(responses, ids, unit=False) @ self._weights)
        return Estimate(value, len(ids), len(item_ids), self._stderr, self.spec)


register_estimator("anchor", lambda k, seed, strata: Anchor(k, seed))

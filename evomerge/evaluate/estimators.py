"""Fitness estimators: predict a candidate's full-set mean score from its scores on a few items.

Scoring every item of every task for thousands of candidates is the bill of a merge search. An
estimator picks the items worth scoring (``select``) and turns their scores into a prediction of
the full-set mean (``estimate``), with an error bar where it can give one. One base class, small
implementations chosen by name, as Optuna's samplers::

    est = make_estimator("irt:50", seed=0)
    est.calibrate(calibration_cache(cache_dir, key, build))  # anchor and irt only
    items = est.select(item_ids)                             # score only these
    est.estimate({item: score, ...}, item_ids)               # -> Estimate(value, stderr, ...)

- ``full``: every item, the exact mean.
- ``subsample:K``: seeded random sample, stratified when items carry a stratum; unbiased.
- ``anchor:K``: tinyBenchmarks anchor points: k-means on the items' response vectors over the
  calibration models, one anchor per cluster weighted by the cluster's share of items.
- ``irt:K`` = ``gpirt:K``, and ``pirt:K``: a 2PL IRT model fitted on the calibration models
  predicts the unseen items from the ability the K observed items reveal (p-IRT), blended with
  the anchor estimate of the same items (gp-IRT).

Scores lie in [0, 1]: correct/incorrect, or smooth (token accuracy), which IRT takes as a soft
target of its Bernoulli likelihood. Calibration (the source models' responses to every item, and
the IRT fit on them) is built once per (task, sources) and cached on disk (``calibration_cache``).
``Promotion`` and ``fidelity_ladder`` let the search re-score promising candidates on more items.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np

from evomerge.errors import EvomergeError

_FORMAT = 1
# mild priors of the IRT fit: α ~ N(0, 1), log a ~ N(0, 1), b ~ N(0, 3²)
_SD_LOG_A, _SD_B = 1.0, 3.0
_MIN_SD_ALPHA = 0.25  # floor of the ability prior's width for candidates


class EstimatorError(EvomergeError, ValueError):
    """An estimator spec, calibration or set of responses cannot be used as asked."""


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
# checks


def _pool(item_ids: Sequence[str]) -> list[str]:
    ids = list(item_ids)
    if not ids:
        raise EstimatorError("the item set is empty: there is nothing to estimate")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise EstimatorError(f"item id {dup!r} appears twice in the item set")
    return ids


def _check_scores(y: np.ndarray, where: Callable[[int], str]) -> None:
    bad = np.flatnonzero(~np.isfinite(y) | (y < 0) | (y > 1))
    if bad.size:
        raise EstimatorError(f"{where(int(bad[0]))} is {y.flat[bad[0]]}; scores must lie in [0, 1]")


def _scores(responses: Mapping[str, float], ids: Sequence[str]) -> np.ndarray:
    missing = [i for i in ids if i not in responses]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EstimatorError(f"no response for selected item {missing[0]!r}{more}")
    y = np.array([float(responses[i]) for i in ids])
    _check_scores(y, lambda j: f"the response for item {ids[j]!r}")
    return y


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 0.02, 0.98)
    return np.log(p / (1 - p))


# ---------------------------------------------------------------------------------------------
# calibration: known models' responses, the IRT fit on them, cached on disk


@dataclass(frozen=True, eq=False)
class _Irt:
    """2PL fit: P(model m gets item j) = σ(a_j·α_m − b_j)."""

    a: np.ndarray
    b: np.ndarray
    alpha: np.ndarray

    def prior(self) -> tuple[float, float]:
        """Where a new candidate's ability is expected: among the calibration models'."""
        sd = float(self.alpha.std()) if self.alpha.size > 1 else 1.0
        return float(self.alpha.mean()), max(sd, _MIN_SD_ALPHA)


def _fit_irt(y: np.ndarray, rounds: int = 2000) -> _Irt:
    """Joint MAP of abilities and item parameters, alternating Fisher-scoring steps: all items
    at once (a 2×2 system each, in log a and b), then all abilities. From a deterministic start
    (item and model means), so the same responses always give the same fit, in well under a
    second for 20 models × 2000 items."""
    logit_m = _logit(y.mean(1))
    alpha = (logit_m - logit_m.mean()) / max(float(logit_m.std()), 0.1)
    u, b = np.zeros(y.shape[1]), -_logit(y.mean(0))  # u = log a
    last = math.inf
    for r in range(rounds):
        a = np.exp(u)
        p = _sigmoid(np.outer(alpha, a) - b)
        res, w = y - p, p * (1 - p)
        g_u = a * (alpha @ res) - u / _SD_LOG_A**2
        g_b = -res.sum(0) - b / _SD_B**2
        h_uu = a * a * (alpha**2 @ w) + 1 / _SD_LOG_A**2
        h_ub = -a * (alpha @ w)
        h_bb = w.sum(0) + 1 / _SD_B**2
        det = h_uu * h_bb - h_ub**2
        u += np.clip((h_bb * g_u - h_ub * g_b) / det, -1, 1)
        b += np.clip((h_uu * g_b - h_ub * g_u) / det, -2, 2)
        a = np.exp(u)
        p = _sigmoid(np.outer(alpha, a) - b)
        alpha += np.clip(((y - p) @ a - alpha) / (p * (1 - p) @ (a * a) + 1), -1, 1)
        if r % 10 == 9:
            z = np.outer(alpha, np.exp(u)) - b
            prior = alpha @ alpha + (u / _SD_LOG_A) @ (u / _SD_LOG_A) + (b / _SD_B) @ (b / _SD_B)
            loss = float((np.logaddexp(0, z) - y * z).sum() + prior / 2)
            if last - loss < 1e-10 * abs(loss):
                break
            last = loss
    return _Irt(np.exp(u), b, alpha)


@dataclass(frozen=True, eq=False)
class Calibration:
    """Responses of known models (the sources, a few merges) to every item of a task, and the IRT
    fit on them: built once per (task, sources), saved, shared by every estimator of the task.

    ``folds`` hold IRT fits on half of the models each (``held`` marks the other half), so gp-IRT
    can weigh its two parts by their errors on models the fit has not seen."""

    key: str
    item_ids: tuple[str, ...]
    responses: np.ndarray  # n_models × n_items, in [0, 1]
    irt: _Irt | None = None
    folds: tuple[tuple[np.ndarray, _Irt], ...] = ()

    @property
    def n_models(self) -> int:
        return int(self.responses.shape[0])

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def fit(
        cls,
        responses: np.ndarray,
        item_ids: Sequence[str],
        key: str = "",
        *,
        irt: bool = True,
        seed: int = 0,
    ) -> Calibration:
        """Check the response matrix and fit IRT (full, and 2-fold over models when ≥ 4)."""
        ids = tuple(_pool(item_ids))
        y = np.asarray(responses, dtype=np.float64)
        if y.ndim != 2 or y.shape[1] != len(ids):
            raise EstimatorError(
                f"calibration responses must be n_models × n_items = (·, {len(ids)}); "
                f"got shape {y.shape}"
            )
        if y.shape[0] < 2:
            got = y.shape[0]
            raise EstimatorError(f"calibration needs responses of at least 2 models, got {got}")
        n = len(ids)
        _check_scores(y, lambda j: f"the response of model {j // n} to item {ids[j % n]!r}")
        if not irt:
            return cls(key, ids, y)
        folds = tuple((held, _fit_irt(y[~held])) for held in _halves(y.shape[0], seed))
        return cls(key, ids, y, _fit_irt(y), folds)

    def with_irt(self, seed: int = 0) -> Calibration:
        """This calibration, with an IRT fit added if it was built without one."""
        if self.irt is not None:
            return self
        return Calibration.fit(self.responses, self.item_ids, self.key, seed=seed)

    def save(self, path: str | os.PathLike[str]) -> None:
        """One .npz (no pickle), written to a temporary file and renamed: never half-written."""
        arrays = {"responses": self.responses, "item_ids": np.array(self.item_ids, dtype=str)}
        fits = [("irt", self.irt)] if self.irt else []
        for f, (held, fit) in enumerate(self.folds):
            arrays[f"fold{f}_held"] = held
            fits.append((f"fold{f}", fit))
        for name, fit in fits:
            arrays |= {f"{name}_a": fit.a, f"{name}_b": fit.b, f"{name}_alpha": fit.alpha}
        meta = {"format": _FORMAT, "key": self.key, "folds": len(self.folds)}
        arrays["meta"] = np.array(json.dumps(meta))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != _FORMAT:
                    raise ValueError(f"format {meta.get('format')}, expected {_FORMAT}")

                def fit(name: str) -> _Irt:
                    return _Irt(z[f"{name}_a"], z[f"{name}_b"], z[f"{name}_alpha"])

                irt = fit("irt") if "irt_a" in z.files else None
                folds = tuple((z[f"fold{f}_held"], fit(f"fold{f}")) for f in range(meta["folds"]))
                ids = tuple(str(i) for i in z["item_ids"])
                return cls(meta["key"], ids, z["responses"], irt, folds)
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise EstimatorError(f"cannot read calibration file {str(path)!r}: {e}") from e


def calibration_cache(
    directory: str | os.PathLike[str], key: str, build: Callable[[], Calibration]
) -> Calibration:
    """Load the calibration saved under ``key``, else build and save it: scoring every source on
    every item is the expensive part, and it is the same for every run on that (task, sources)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:60]
    path = Path(directory) / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"
    if path.exists():
        try:
            cal = Calibration.load(path)
            if cal.key == key:
                return cal
        except EstimatorError:
            pass  # an older format or a damaged file: build it again
    cal = build()
    if not isinstance(cal, Calibration):
        raise EstimatorError(f"the build function for calibration {key!r} returned {type(cal)}")
    if cal.key != key:
        cal = dataclasses.replace(cal, key=key)
    cal.save(path)
    return cal


def _as_calibration(
    x: np.ndarray | Calibration, item_ids: Sequence[str] | None, irt: bool, seed: int
) -> Calibration:
    if isinstance(x, Calibration):
        if item_ids is not None and tuple(item_ids) != x.item_ids:
            raise EstimatorError(f"item ids differ from those of calibration {x.key!r}")
        return x.with_irt(seed) if irt else x
    if item_ids is None:
        raise EstimatorError("calibrate(response_matrix, item_ids) needs the matrix's item ids")
    return Calibration.fit(x, item_ids, irt=irt, seed=seed)


# ---------------------------------------------------------------------------------------------
# anchor points: seeded k-means (k-means++ start), one anchor per cluster


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


# ---------------------------------------------------------------------------------------------
# IRT pieces: a candidate's ability from few responses, and its predicted full-set score


def _ability(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, mu: float, sd: float
) -> tuple[float, float]:
    """MAP ability by Newton (the log posterior is concave); returns it and its precision."""
    alpha = mu
    for _ in range(100):
        p = _sigmoid(a * alpha - b)
        grad = float(a @ (y - p)) - (alpha - mu) / sd**2
        prec = float((a * a) @ (p * (1 - p))) + 1 / sd**2
        step = float(np.clip(grad / prec, -1.0, 1.0))
        alpha += step
        if abs(step) < 1e-9:
            break
    p = _sigmoid(a * alpha - b)
    return alpha, float((a * a) @ (p * (1 - p))) + 1 / sd**2


def _pirt(fit: _Irt, y: np.ndarray, picked: np.ndarray) -> tuple[float, float]:
    """p-IRT: observed scores plus the fitted probabilities of the unseen items, over n; stderr by
    the delta method on α̂ plus the Bernoulli noise of the unseen items."""
    alpha, prec = _ability(y, fit.a[picked], fit.b[picked], *fit.prior())
    unseen = np.ones(len(fit.a), dtype=bool)
    unseen[picked] = False
    p = _sigmoid(fit.a[unseen] * alpha - fit.b[unseen])
    n = len(fit.a)
    slope = float(fit.a[unseen] @ (p * (1 - p))) / n
    var = slope**2 / prec + float((p * (1 - p)).sum()) / n**2
    return (float(y.sum()) + float(p.sum())) / n, math.sqrt(var)


def _curves(fit: _Irt, grid: int = 11) -> np.ndarray:
    """Each item's fitted response curve at equal-probability quantiles of the ability prior: a
    space where items close together behave alike for every plausible candidate."""
    mu, sd = fit.prior()
    q = np.array([NormalDist().inv_cdf((g + 0.5) / grid) for g in range(grid)])
    return _sigmoid(np.multiply.outer(fit.a, mu + sd * q) - fit.b[:, None])


# ---------------------------------------------------------------------------------------------
# estimators


class Estimator(ABC):
    """Which items to score (``select``) and what their scores say of the full set
    (``estimate``). Both are deterministic given the seed and the calibration."""

    name: str = ""
    needs_calibration: bool = False

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


class Full(Estimator):
    """Every item: the exact mean (stderr = sd/√n, the noise of the benchmark itself)."""

    name = "full"

    def select(self, item_ids: Sequence[str]) -> list[str]:
        return _pool(item_ids)

    def estimate(self, responses: Mapping[str, float], item_ids: Sequence[str]) -> Estimate:
        ids = self.select(item_ids)
        y = _scores(responses, ids)
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

    def _plan(self, item_ids: Sequence[str]) -> list[tuple[list[str], int]]:
        """Per stratum: the chosen items and the stratum's size."""
        ids = sorted(_pool(item_ids))
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
        ys = [_scores(responses, chosen) for chosen, _ in plan]
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
        return Estimate(min(max(value, 0.0), 1.0), used, n_all, se, self.spec)


class _Calibrated(Estimator):
    """Shared plumbing: anchors and weights chosen at ``calibrate``, checked at ``select``."""

    needs_calibration = True
    _cal: Calibration | None = None
    _picked: np.ndarray
    _weights: np.ndarray

    def _check_pool(self, item_ids: Sequence[str]) -> Calibration:
        if self._cal is None:
            raise EstimatorError(f"{self.spec}: call calibrate() before select() or estimate()")
        ids = _pool(item_ids)
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


def _rms(x: Sequence[float] | np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def _halves(n_models: int, seed: int) -> tuple[np.ndarray, ...]:
    """Two disjoint halves of the calibration models, for errors measured on unseen models."""
    if n_models < 4:
        return ()
    half = np.random.default_rng(seed).permutation(n_models) % 2 == 0
    return half, ~half


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
        value = float(np.clip(_scores(responses, ids) @ self._weights, 0.0, 1.0))
        return Estimate(value, len(ids), len(item_ids), self._stderr, self.spec)


class Irt(_Calibrated):
    """2PL IRT (tinyBenchmarks' p-IRT and gp-IRT).

    Items: anchor-style k-means on the items' fitted response curves (P_j at 11 quantiles of
    the ability prior), one anchor per cluster weighted by its size. The chosen items tile
    difficulty and discrimination as the pool does, rather than crowd where the noisy fitted
    Fisher information peaks (on synthetic data the top-information items gave p-IRT 1.2-1.7×
    the error: they favour items whose discrimination was overestimated), and their weighted
    mean is itself a sound estimate. A candidate's ability is the MAP from its K responses
    under the prior N(mean, sd) of the calibration abilities.

    gp-IRT = λ·p-IRT + (1 − λ)·anchor estimate, with λ = mse_anchor / (mse_anchor + mse_pirt),
    the inverse-MSE weighting of the two, both errors measured on calibration models held out
    of the IRT fit (the calibration's 2 folds over models). The anchor part's error falls as K
    grows, p-IRT's grows with misfit, so λ moves as tinyBenchmarks' does; with fewer than 4
    models, λ = 1/2. stderr: the delta method on α̂ plus the unseen items' Bernoulli noise
    (blended for gp-IRT), scaled up so that z-scores on the held-out models have unit RMS
    (item-parameter noise is otherwise ignored). ``validation`` reports the held-out errors."""

    name = "irt"

    def __init__(self, k: int, seed: int = 0, method: str = "gp") -> None:
        if method not in ("p", "gp"):
            raise EstimatorError(f"irt method must be 'p' or 'gp', got {method!r}")
        self.name = f"{method}irt"
        super().__init__(k, seed)
        self.method = method
        self.lam, self._scale = 0.5, 1.0
        self.validation: dict[str, float] = {}

    def calibrate(
        self, responses: np.ndarray | Calibration, item_ids: Sequence[str] | None = None
    ) -> Irt:
        cal = self._calibrated(responses, item_ids, irt=True)
        assert cal.irt is not None
        y = cal.responses
        self._picked, self._weights = _anchors(
            _curves(cal.irt), self._check_k(cal.n_items), self.seed
        )
        self._cal, self._rmse_a = cal, _rms(y[:, self._picked] @ self._weights - y.mean(1))
        self.lam, self._scale, self.validation = 0.5, 1.0, {}
        rows = [(fit, r) for held, fit in cal.folds for r in y[held]]
        if not rows:
            return self
        truth = np.array([r.mean() for _, r in rows])
        pirt = np.array([_pirt(fit, r[self._picked], self._picked) for fit, r in rows])
        err_p, se_p = pirt[:, 0] - truth, pirt[:, 1]
        err_a = np.array([r[self._picked] @ self._weights for _, r in rows]) - truth
        mse_p, mse_a = _rms(err_p) ** 2, _rms(err_a) ** 2
        lam = self.lam = mse_a / (mse_a + mse_p) if mse_a + mse_p > 0 else 1.0
        self._rmse_a = math.sqrt(mse_a)
        err_gp = lam * err_p + (1 - lam) * err_a
        se_gp = np.sqrt((lam * se_p) ** 2 + (1 - lam) ** 2 * mse_a)
        err, se = (err_p, se_p) if self.method == "p" else (err_gp, se_gp)
        if (se > 0).any():
            self._scale = max(1.0, _rms(err[se > 0] / se[se > 0]))
        self.validation = {
            "models": float(len(rows)),
            "lambda": lam,
            "pirt_mae": float(np.abs(err_p).mean()),
            "anchor_mae": float(np.abs(err_a).mean()),
            "gpirt_mae": float(np.abs(err_gp).mean()),
            "stderr_scale": self._scale,
        }
        return self

    def ability(
        self, responses: Mapping[str, float], item_ids: Sequence[str]
    ) -> tuple[float, float]:
        """A candidate's ability on the calibration scale and its posterior sd: where it stands
        among the sources, from its responses to the selected items."""
        y = _scores(responses, self.select(item_ids))
        assert self._cal is not None and self._cal.irt is not None
        fit = self._cal.irt
        alpha, prec = _ability(y, fit.a[self._picked], fit.b[self._picked], *fit.prior())
        return alpha, 1 / math.sqrt(prec)

    def estimate(self, responses: Mapping[str, float], item_ids: Sequence[str]) -> Estimate:
        ids = self.select(item_ids)
        y = _scores(responses, ids)
        assert self._cal is not None and self._cal.irt is not None
        value, se = _pirt(self._cal.irt, y, self._picked)
        if self.method == "gp":
            lam = self.lam
            value = lam * value + (1 - lam) * float(y @ self._weights)
            se = math.sqrt((lam * se) ** 2 + ((1 - lam) * self._rmse_a) ** 2)
        value = min(max(value, 0.0), 1.0)
        return Estimate(value, len(ids), len(item_ids), se * self._scale, self.spec)


# ---------------------------------------------------------------------------------------------
# by name


_ESTIMATORS: dict[str, Callable[[int, int, Mapping[str, str] | None], Estimator]] = {
    "full": lambda k, seed, strata: Full(None, seed),
    "subsample": lambda k, seed, strata: Subsample(k, seed, strata),
    "anchor": lambda k, seed, strata: Anchor(k, seed),
    "irt": lambda k, seed, strata: Irt(k, seed, "gp"),
    "gpirt": lambda k, seed, strata: Irt(k, seed, "gp"),
    "pirt": lambda k, seed, strata: Irt(k, seed, "p"),
}


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


# ---------------------------------------------------------------------------------------------
# multi-fidelity: when to score a candidate on more items


def fidelity_ladder(spec: str, n_items: int, factor: int = 4, rungs: int = 3) -> list[str]:
    """The specs a candidate climbs, cheap to exact: K, factor·K, … and always 'full' last (the
    front is confirmed on full sets). 'anchor:50' over 1000 items → anchor:50, anchor:200, full."""
    if factor < 2 or rungs < 1:
        raise EstimatorError(f"fidelity ladder: need factor ≥ 2, rungs ≥ 1; got {factor}, {rungs}")
    name, k = spec.partition(":")[0].strip().lower(), make_estimator(spec).k
    ladder: list[str] = []
    while k is not None and k < n_items and len(ladder) < rungs - 1:
        ladder.append(f"{name}:{k}")
        k *= factor
    return [*ladder, "full"]


@dataclass(frozen=True)
class Promotion:
    """Re-score a cheaply estimated candidate at the next rung when its optimistic objective
    vector could still enter the current front (all objectives maximized).

    Optimism applies to objectives that are estimates below full fidelity: value + margin +
    z·stderr (stderr counts as 0 where absent). Plain floats and full-fidelity estimates count as
    they are; a candidate with nothing left to refine is never promoted. "Could enter" means no
    front point is at least as good on every objective (weak dominance: a tie adds nothing)."""

    margin: float = 0.0
    z: float = 1.0

    def optimistic(self, objective: Estimate | float) -> float:
        if not isinstance(objective, Estimate):
            return float(objective)
        if objective.fidelity >= 1.0:
            return objective.value
        return objective.value + self.margin + self.z * (objective.stderr or 0.0)

    def __call__(
        self,
        candidate: Estimate | float | Sequence[Estimate | float],
        front: Sequence[Sequence[float]] | None,
    ) -> bool:
        single = isinstance(candidate, Estimate | int | float | np.floating)
        objectives = [candidate] if single else list(candidate)  # type: ignore[arg-type]
        points = [list(f) for f in front or []]
        if any(len(f) != len(objectives) for f in points):
            n = len(objectives)
            raise EstimatorError(f"front points must have {n} objectives, like the candidate")
        if not any(isinstance(o, Estimate) and o.fidelity < 1.0 for o in objectives):
            return False  # nothing left to refine
        hope = np.array([self.optimistic(o) for o in objectives])
        dominators = np.asarray(points, dtype=float).reshape(-1, len(hope)) >= hope
        return not bool(np.any(np.all(dominators, axis=1)))


def should_promote(
    candidate: Estimate | float | Sequence[Estimate | float],
    front: Sequence[Sequence[float]] | None,
    margin: float = 0.0,
    z: float = 1.0,
) -> bool:
    """``Promotion(margin, z)(candidate, front)``: the candidate is its objective vector (one
    entry per objective, an Estimate where it was estimated), ``front`` the non-dominated
    objective vectors so far; True when more items could change the front."""
    return Promotion(margin, z)(candidate, front)

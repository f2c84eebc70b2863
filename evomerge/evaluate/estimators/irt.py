"""2PL IRT estimators (tinyBenchmarks' p-IRT and gp-IRT): a candidate's ability from its scores
on K items, under the IRT fit its calibration carries (:mod:`.calibration`), predicts the items
it was not scored on; gp-IRT blends that prediction with the anchor estimate of the same items.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np

from evomerge.evaluate.estimators.anchors import _anchors, _Calibrated, _rms
from evomerge.evaluate.estimators.base import Estimate, EstimatorError, register_estimator
from evomerge.evaluate.estimators.calibration import Calibration, _Irt, _sigmoid
from evomerge.evaluate.estimators.items import response_vector

# ---------------------------------------------------------------------------------------------
# a candidate's ability from few responses, and its predicted full-set score


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


def _stderr_scale(z: np.ndarray) -> float:
    """How much to widen the delta-method stderr so that ±1.96·stderr covers 95 % of the
    held-out calibration models' errors: the k-th smallest of n |z| estimates the k/(n+1)
    quantile, so k = ⌈0.95·(n+1)⌉ (the largest, for 20 models) stands for the 95 % one. Never
    narrower than unit RMS, never below 1."""
    z = np.sort(z)
    k = min(len(z), math.ceil(0.95 * (len(z) + 1)))
    return max(1.0, _rms(z), float(z[k - 1]) / 1.96)


def _curves(fit: _Irt, grid: int = 11) -> np.ndarray:
    """Each item's fitted response curve at equal-probability quantiles of the ability prior: a
    space where items close together behave alike for every plausible candidate."""
    mu, sd = fit.prior()
    q = np.array([NormalDist().inv_cdf((g + 0.5) / grid) for g in range(grid)])
    return _sigmoid(np.multiply.outer(fit.a, mu + sd * q) - fit.b[:, None])


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
    unit_scores_only = True

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
            self._scale = _stderr_scale(np.abs(err[se > 0] / se[se > 0]))
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
        y = response_vector(responses, self.select(item_ids))
        assert self._cal is not None and self._cal.irt is not None
        fit = self._cal.irt
        alpha, prec = _ability(y, fit.a[self._picked], fit.b[self._picked], *fit.prior())
        return alpha, 1 / math.sqrt(prec)

    def estimate(self, responses: Mapping[str, float], item_ids: Sequence[str]) -> Estimate:
        ids = self.select(item_ids)
        y = response_vector(responses, ids)
        assert self._cal is not None and self._cal.irt is not None
        value, se = _pirt(self._cal.irt, y, self._picked)
        if self.method == "gp":
            lam = self.lam
            value = lam * value + (1 - lam) * float(y @ self._weights)
            se = math.sqrt((lam * se) ** 2 + ((1 - lam) * self._rmse_a) ** 2)
        value = min(max(value, 0.0), 1.0)
        return Estimate(value, len(ids), len(item_ids), se * self._scale, self.spec)


register_estimator("irt", lambda k, seed, strata: Irt(k, seed, "gp"))
register_estimator("gpirt", lambda k, seed, strata: Irt(k, seed, "gp"))
register_estimator("pirt", lambda k, seed, strata: Irt(k, seed, "p"))

"""Calibration: known models' responses to every item of a task, and the 2PL IRT fit on them.

The anchor and IRT estimators learn which items to score, and what their scores say of the rest,
from models scored in full (the sources, a few merges of them). Scoring those is the expensive
part and is the same for every run on a (task, sources): a ``Calibration`` is built once, saved
as one .npz (no pickle) and shared through ``calibration_cache``. The IRT fit lives here, with
the responses it is fitted on, because it is saved with them; what an estimator does with it (a
candidate's ability, p-IRT and gp-IRT) is :mod:`.irt`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evomerge.evaluate.estimators.items import EstimatorError, check_scores, item_pool
from evomerge.fileio import atomic_open

_FORMAT = 1
# mild priors of the IRT fit: α ~ N(0, 1), log a ~ N(0, 1), b ~ N(0, 3²)
_SD_LOG_A, _SD_B = 1.0, 3.0
_MIN_SD_ALPHA = 0.25  # floor of the ability prior's width for candidates


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 0.02, 0.98)
    return np.log(p / (1 - p))


# ---------------------------------------------------------------------------------------------
# the 2PL fit


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


def _halves(n_models: int, seed: int) -> tuple[np.ndarray, ...]:
    """Two disjoint halves of the calibration models, for errors measured on unseen models."""
    if n_models < 4:
        return ()
    half = np.random.default_rng(seed).permutation(n_models) % 2 == 0
    return half, ~half


# ---------------------------------------------------------------------------------------------
# the responses, with their fit, cached on disk


@dataclass(frozen=True, eq=False)
class Calibration:
    """Responses of known models (the sources, a few merges) to every item of a task, and the IRT
    fit on them: built once per (task, sources), saved, shared by every estimator of the task.

    ``folds`` hold IRT fits on half of the models each (``held`` marks the other half), so gp-IRT
    can weigh its two parts by their errors on models the fit has not seen."""

    key: str
    item_ids: tuple[str, ...]
    responses: np.ndarray  # n_models × n_items: finite; in [0, 1] when fitted with IRT
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
        ids = tuple(item_pool(item_ids))
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
        where = lambda j: f"the response of model {j // n} to item {ids[j % n]!r}"  # noqa: E731
        check_scores(y, where, unit=irt)  # anchors take any finite score; IRT needs [0, 1]
        if not irt:
            return cls(key, ids, y)
        folds = tuple((held, _fit_irt(y[~held])) for held in _halves(y.shape[0], seed))
        return cls(key, ids, y, _fit_irt(y), folds)

    def with_irt(self, seed: int = 0) -> Calibration:
        """This calibration, with an IRT fit added if it was built without one."""
        if self.irt is not None:
            return self  # (refit below checks the responses lie in [0, 1])
        return Calibration.fit(self.responses, self.item_ids, self.key, seed=seed)

    def save(self, path: str | os.PathLike[str]) -> None:
        """One .npz (no pickle), written atomically (:func:`evomerge.fileio.atomic_open`): a crash
        never leaves half a file under ``path``."""
        arrays = {"responses": self.responses, "item_ids": np.array(self.item_ids, dtype=str)}
        fits = [("irt", self.irt)] if self.irt else []
        for f, (held, fit) in enumerate(self.folds):
            arrays[f"fold{f}_held"] = held
            fits.append((f"fold{f}", fit))
        for name, fit in fits:
            arrays |= {f"{name}_a": fit.a, f"{name}_b": fit.b, f"{name}_alpha": fit.alpha}
        meta = {"format": _FORMAT, "key": self.key, "folds": len(self.folds)}
        arrays["meta"] = np.array(json.dumps(meta))
        with atomic_open(path, "wb") as fh:
            np.savez(fh, **arrays)

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

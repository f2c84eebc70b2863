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

Scores are per-item numbers: correct/incorrect, smooth in [0, 1] (token accuracy), which IRT
takes as a soft target of its Bernoulli likelihood, or unbounded (mean log-prob, perplexity),
which only the weighted means (full, subsample, anchor) take: ``check_estimator`` refuses IRT
for them when an objective is loaded. Calibration (the source models' responses to every item, and
the IRT fit on them) is built once per (task, sources) and cached on disk (``calibration_cache``).

One module per part, as the estimators grew past what reads in one sitting: :mod:`.base` (the
base class, the registry, ``make_estimator``), :mod:`.sampling` (``full``, ``subsample``),
:mod:`.calibration` (the calibration models' responses and the IRT fit on them, cached on
disk), :mod:`.anchors` and :mod:`.irt`.
Whether a candidate deserves more items is search policy, not estimation: it lives in
:mod:`evomerge.workers.promotion`.
"""

from evomerge.evaluate.estimators.sampling import Full, Subsample  # noqa: I001 (registers first)
from evomerge.evaluate.estimators.anchors import Anchor
from evomerge.evaluate.estimators.base import (
    Estimate,
    Estimator,
    EstimatorError,
    check_estimator,
    make_estimator,
    register_estimator,
)
from evomerge.evaluate.estimators.calibration import Calibration, calibration_cache
from evomerge.evaluate.estimators.irt import Irt

__all__ = [
    "Anchor",
    "Calibration",
    "Estimate",
    "Estimator",
    "EstimatorError",
    "Full",
    "Irt",
    "Subsample",
    "calibration_cache",
    "check_estimator",
    "make_estimator",
    "register_estimator",
]

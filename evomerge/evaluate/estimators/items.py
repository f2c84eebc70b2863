"""What every estimator checks of its inputs: the item set, and the scores it is given."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from evomerge.errors import EvomergeError


class EstimatorError(EvomergeError, ValueError):
    """An estimator spec, calibration or set of responses cannot be used as asked."""


def item_pool(item_ids: Sequence[str]) -> list[str]:
    """The ids as a list; an empty set, or an id twice, refused."""
    ids = list(item_ids)
    if not ids:
        raise EstimatorError("the item set is empty: there is nothing to estimate")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise EstimatorError(f"item id {dup!r} appears twice in the item set")
    return ids


def check_scores(y: np.ndarray, where: Callable[[int], str], unit: bool = True) -> None:
    """Scores are finite; with ``unit``, in [0, 1] too (what IRT's Bernoulli likelihood needs)."""
    bad = np.flatnonzero(~np.isfinite(y) | ((y < 0) | (y > 1) if unit else False))
    if bad.size:
        rule = "scores must lie in [0, 1]" if unit else "scores must be finite"
        raise EstimatorError(f"{where(int(bad[0]))} is {y.flat[bad[0]]}; {rule}")


def response_vector(
    responses: Mapping[str, float], ids: Sequence[str], unit: bool = True
) -> np.ndarray:
    """The responses to ``ids``, in order; a missing one refused by id."""
    missing = [i for i in ids if i not in responses]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EstimatorError(f"no response for selected item {missing[0]!r}{more}")
    y = np.array([float(responses[i]) for i in ids])
    check_scores(y, lambda j: f"the response for item {ids[j]!r}", unit)
    return y

"""Promotion: when a cheaply estimated candidate is worth re-scoring on every item."""

from __future__ import annotations

import pytest

from evomerge.evaluate.estimators import Estimate, EstimatorError
from evomerge.workers.promotion import Promotion, should_promote


def cheap(value: float, stderr: float | None = 0.05) -> Estimate:
    return Estimate(value, 50, 1000, stderr, "gpirt:50")


def test_promotion_on_hand_made_fronts() -> None:
    front = [[0.8, 0.2], [0.5, 0.5], [0.2, 0.8]]
    assert should_promote([cheap(0.6), cheap(0.6)], front)  # enters outright
    assert not should_promote([cheap(0.3), cheap(0.3)], front)  # deep behind [0.5, 0.5]
    # optimistic 0.4 + 2·0.05 = 0.5 on both only ties [0.5, 0.5]: a tie adds nothing
    assert not should_promote([cheap(0.4), cheap(0.4)], front, z=2.0)
    assert should_promote([cheap(0.45), cheap(0.45)], front, z=2.0)  # 0.55 each could enter
    assert not should_promote([cheap(0.45), cheap(0.45)], front, z=0.0)
    assert should_promote([cheap(0.45, None), cheap(0.45, None)], front, margin=0.06, z=0.0)
    # an exact objective takes no optimism: 0.75 on the first cannot lift a weak second
    assert not should_promote([0.1, cheap(0.45)], front, z=2.0)
    assert should_promote([0.9, cheap(0.1)], front)  # best on the first objective already
    # nothing left to refine: never promoted
    full = Estimate(0.99, 1000, 1000, 0.01, "full")
    assert not should_promote([full, 0.99], front)
    # a first candidate always climbs; a single objective may be given bare
    assert should_promote(cheap(0.1), None) and should_promote([cheap(0.1)], [])
    assert not Promotion(margin=0.0, z=1.0)(cheap(0.5), [[0.6]])
    assert Promotion(margin=0.06, z=1.0)(cheap(0.5), [[0.6]])
    with pytest.raises(EstimatorError, match="2 objectives"):
        should_promote([cheap(0.5), cheap(0.5)], [[0.1, 0.2, 0.3]])

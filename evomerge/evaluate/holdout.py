"""Held-out items: a share of a task's items the search never sees, kept to confirm its picks.

An estimator that scores the same few items for every candidate lets the search fit those items
(selection bias): the front's scores are optimistic. Scoring the chosen recipes afterwards on
items nobody looked at says by how much. Which items are held out depends only on (task, item
id, seed): each item's hash is compared with the fraction, so adding items to a task leaves every
other item where it was, and no run order, worker or estimator can change the split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from evomerge.errors import EvomergeError


class HoldoutError(EvomergeError, ValueError):
    """A holdout cannot be made as asked (a fraction out of range, a task too small for it)."""


def _draw(task: str, item: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (task, item, seed)."""
    h = hashlib.sha256(f"evomerge-holdout\0{seed}\0{task}\0{item}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def split_items(
    task: str, item_ids: Sequence[str], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(the search's items, the held-out items), each in ``item_ids``' order: an item is held
    out when its draw falls below ``fraction``, so about that share is, and exactly the same
    items for the same (task, ids, seed) everywhere."""
    if not 0.0 <= fraction < 1.0:
        raise HoldoutError(f"holdout fraction {fraction} must lie in [0, 1)")
    pool: list[str] = []
    held: list[str] = []
    for i in item_ids:
        (held if _draw(task, i, seed) < fraction else pool).append(i)
    return pool, held

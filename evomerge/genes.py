"""Genes: the coordinates of a genome, shared by spaces (which make them), optimizers (which
search them) and the archive (which stores them). It depends on nothing else in evomerge."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gene:
    """One coordinate of a genome.

    ``choices=None`` is a real gene in [0, 1]; ``choices=k`` (k >= 2) an integer gene in
    {0, …, k-1}, stored as an integral float so a genome stays one float64 array.
    """

    name: str
    choices: int | None = None

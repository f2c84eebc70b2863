"""Uniform random search: the baseline every other optimizer has to beat."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from evomerge.optimize.base import Count, Optimizer, OptimizerOptions


class RandomSearch(Optimizer):
    """Independent uniform draws; losses are ignored, so failures need no handling.

    Option ``batch`` (default 8) is only how many genomes one ``ask`` returns.
    """

    name: ClassVar[str] = "random"
    multi_objective: ClassVar[bool] = True

    class Options(OptimizerOptions):
        batch: Count = 8

    def _setup(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def _ask(self) -> list[np.ndarray]:
        batch = []
        for _ in range(self.options["batch"]):
            x = np.empty(len(self.genes))
            for i, gene in enumerate(self.genes):
                x[i] = (
                    self._rng.random() if gene.choices is None else self._rng.integers(gene.choices)
                )
            batch.append(x)
        return batch

    def _tell(self, losses: list[np.ndarray | None]) -> None:
        pass

    def _payload(self) -> Any:
        return self._rng.bit_generator.state

    def _load(self, payload: Any) -> None:
        self._rng.bit_generator.state = payload

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
    asynchronous: ClassVar[bool] = True  # the draws are the batches' draws, one at a time

    class Options(OptimizerOptions):
        batch: Count = 8

    def _setup(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def _ask(self) -> list[np.ndarray]:
        return [self._ask_one()[1] for _ in range(self.options["batch"])]

    def _tell(self, losses: list[np.ndarray | None]) -> None:
        pass

    def _ask_one(self) -> tuple[None, np.ndarray]:
        x = np.empty(len(self.genes))
        for i, gene in enumerate(self.genes):
            x[i] = self._rng.random() if gene.choices is None else self._rng.integers(gene.choices)
        return None, x

    def _tell_one(self, handle: None, loss: np.ndarray | None) -> None:
        pass

    def _payload(self) -> Any:
        return self._rng.bit_generator.state

    def _load(self, payload: Any) -> None:
        self._rng.bit_generator.state = payload

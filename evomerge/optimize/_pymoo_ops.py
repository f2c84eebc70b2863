"""pymoo operators for mixed real/integer genomes (a module of its own so pymoo loads lazily)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling


class MixedSampling(Sampling):
    """Uniform reals and uniform integers: rounding uniform floats would halve the end values."""

    def __init__(self, choices: tuple[int | None, ...]) -> None:
        super().__init__()
        self.choices = choices

    def _do(self, problem: Any, n_samples: int, *args: Any, random_state: Any = None, **kw: Any):
        x = random_state.random((n_samples, len(self.choices)))
        for j, k in enumerate(self.choices):
            if k is not None:
                x[:, j] = random_state.integers(0, k, n_samples)
        return x


class RoundIntegers(Repair):
    """Keep offspring in bounds and integer genes integral, after every variation step."""

    def __init__(self, int_idx: list[int]) -> None:
        super().__init__()
        self.int_idx = int_idx

    def _do(self, problem: Any, X: np.ndarray, **kwargs: Any) -> np.ndarray:
        X = np.clip(np.asarray(X, dtype=np.float64), problem.xl, problem.xu)
        if self.int_idx:
            X[:, self.int_idx] = np.round(X[:, self.int_idx])
        return X

"""Gaussian-process Bayesian optimization through BoTorch: ``optuna-botorch``.

Optuna's ``BoTorchSampler`` (package ``optuna-integration``, extra ``evomerge[botorch]``) on the
same in-memory study as the other optuna samplers (:mod:`evomerge.optimize.optuna_`), so asking,
telling, failures and checkpoints behave alike. The acquisition is expected hypervolume
improvement for several objectives (qLogNEHVI: noisy, which fits subsampled scores) and log
expected improvement for one (qLogEI); both see the batch's pending candidates (``X_pending``),
so the ``batch`` genomes asked before any is told are spread out rather than eight copies of one
optimum.

Determinism: the sampler seeds torch around each suggestion (fit and acquisition) with its own
counter, which travels in the pickled sampler; its start-up proposals come from a seeded
``RandomSampler``. So a restored optimizer asks what an uninterrupted one would, on the same
torch thread count (floating-point sums may differ between thread counts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from evomerge.optimize.base import Count, NonNegative, OptimizerError, OptimizerOptions
from evomerge.optimize.optuna_ import _OptunaOptimizer

# acquisition name -> the candidates function of optuna_integration.botorch
_ACQUISITIONS = {
    "qnehvi": "qnehvi_candidates_func",
    "qehvi": "qehvi_candidates_func",
    "qparego": "qparego_candidates_func",
    "qlogei": "qlogei_candidates_func",
    "qei": "qei_candidates_func",
    "qnei": "qnei_candidates_func",
}
_SINGLE = {"qlogei", "qei", "qnei"}


class BoTorchOptions(OptimizerOptions):
    batch: Count = 8  # genomes asked before any is told
    n_startup_trials: NonNegative = 10  # random proposals before the first GP
    # auto: qnehvi for several objectives, qlogei for one
    acquisition: Literal["auto", "qnehvi", "qehvi", "qparego", "qlogei", "qei", "qnei"] = "auto"
    # the batch's asked-but-untold genomes enter the acquisition as pending points
    consider_running_trials: bool = True


def _candidates_func(acquisition: str) -> Callable[..., Any]:
    import optuna_integration.botorch as ob

    return getattr(ob, _ACQUISITIONS[acquisition])


class OptunaBoTorch(_OptunaOptimizer):
    """BoTorch's GP + qLogNEHVI / qLogEI through optuna-integration; several objectives."""

    name: ClassVar[str] = "optuna-botorch"
    multi_objective: ClassVar[bool] = True
    libraries: ClassVar[tuple[str, ...]] = (
        "optuna",
        "optuna-integration",
        "botorch",
        "gpytorch",
        "torch",
    )
    Options: ClassVar[type[OptimizerOptions]] = BoTorchOptions

    @classmethod
    def options_model(cls) -> type[OptimizerOptions]:
        return cls.Options

    def _option_values(self, parsed: OptimizerOptions) -> dict[str, Any]:
        return dict(parsed)  # every option, defaults included: they are ours, not the sampler's

    def _acquisition(self) -> str:
        acq = self.options["acquisition"]
        if acq == "auto":
            return "qnehvi" if self.n_objectives > 1 else "qlogei"
        if (acq in _SINGLE) != (self.n_objectives == 1):
            kind = "one objective" if acq in _SINGLE else "several objectives"
            raise OptimizerError(
                f"optimizer {self.name!r}: acquisition {acq!r} is for {kind}, but the search "
                f"has {self.n_objectives}; use acquisition: auto"
            )
        return acq

    def _sampler_factory(self) -> Callable[..., Any]:
        try:  # optuna_integration is a lazy module: find_spec cannot tell
            import botorch  # noqa: F401
            from optuna_integration.botorch import BoTorchSampler
        except ImportError as exc:
            raise OptimizerError(
                f"optimizer {self.name!r} needs optuna-integration and botorch ({exc}): "
                "pip install 'evomerge[botorch]'"
            ) from None
        from optuna.samplers import RandomSampler

        candidates = _candidates_func(self._acquisition())

        def make(seed: int, n_startup_trials: int, consider_running_trials: bool, **_: Any) -> Any:
            return BoTorchSampler(
                candidates_func=candidates,
                n_startup_trials=n_startup_trials,
                consider_running_trials=consider_running_trials,
                independent_sampler=RandomSampler(seed=seed),
                seed=seed,
            )

        return make

    def _setup(self) -> None:
        self._make_sampler = self._sampler_factory()
        super()._setup()

    def _sampler_class(self) -> Any:  # type: ignore[override]
        # _OptunaOptimizer._setup calls this with the options but ``batch`` as keywords
        return self._make_sampler

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

Cost: optuna-integration optimizes each acquisition with fixed settings (qLogNEHVI: 20
gradient starts chosen among 1024 quasi-random points, 256 quasi-MC samples, up to 200
L-BFGS-B iterations per start): tens of seconds per candidate on 24 genes and 3 objectives on
one CPU thread. That is small next to a real model's evaluation but dominates a tiny one's; the
options ``num_restarts``, ``raw_samples``, ``mc_samples`` and ``maxiter`` (None: the
acquisition's own setting) make each ask cheaper, for ``qnehvi`` and ``qlogei`` (``auto``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from evomerge.optimize.base import (
    Count,
    CountOrNone,
    NonNegative,
    OptimizerError,
    OptimizerOptions,
)
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
# optuna-integration 5's fixed acquisition settings: num_restarts, raw_samples, mc_samples, maxiter
_UPSTREAM = {"qnehvi": (20, 1024, 256, 200), "qlogei": (10, 512, 256, 200)}
_SETTINGS = ("num_restarts", "raw_samples", "mc_samples", "maxiter")


class BoTorchOptions(OptimizerOptions):
    batch: Count = 8  # genomes asked before any is told
    n_startup_trials: NonNegative = 10  # random proposals before the first GP
    # auto: qnehvi for several objectives, qlogei for one
    acquisition: Literal["auto", "qnehvi", "qehvi", "qparego", "qlogei", "qei", "qnei"] = "auto"
    # the batch's asked-but-untold genomes enter the acquisition as pending points
    consider_running_trials: bool = True
    # the acquisition's optimization (None: optuna-integration's setting, _UPSTREAM); cheaper
    # values trade acquisition quality for time, for qnehvi and qlogei only
    num_restarts: CountOrNone = None  # L-BFGS-B starts
    raw_samples: CountOrNone = None  # quasi-random points scored to choose the starts
    mc_samples: CountOrNone = None  # quasi-MC samples of the acquisition's integral
    maxiter: CountOrNone = None  # L-BFGS-B iterations per start


def _candidates_func(acquisition: str, settings: dict[str, int | None]) -> Callable[..., Any]:
    """optuna-integration's function, or ours with the settings given (picklable: a partial)."""
    import optuna_integration.botorch as ob

    if all(v is None for v in settings.values()):
        return getattr(ob, _ACQUISITIONS[acquisition])
    if acquisition not in _UPSTREAM:
        raise OptimizerError(
            f"optimizer 'optuna-botorch': {', '.join(_SETTINGS)} apply to acquisition qnehvi "
            f"or qlogei (auto), not {acquisition!r}"
        )
    given = [settings.get(k) for k in _SETTINGS]
    values = [u if v is None else v for v, u in zip(given, _UPSTREAM[acquisition], strict=True)]
    return functools.partial(_candidates, acquisition, *values)


def _candidates(
    acquisition: str,
    num_restarts: int,
    raw_samples: int,
    mc_samples: int,
    maxiter: int,
    train_x: Any,
    train_obj: Any,
    train_con: Any,
    bounds: Any,
    pending_x: Any,
) -> Any:
    """optuna-integration's qnehvi / qlogei candidates function (no constraints: evomerge has
    none), with the acquisition's optimization settings as arguments."""
    import torch
    from botorch.acquisition.logei import qLogExpectedImprovement
    from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from botorch.optim import optimize_acqf
    from botorch.sampling import SobolQMCNormalSampler
    from botorch.utils.transforms import normalize, unnormalize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    if train_con is not None:
        raise OptimizerError("optimizer 'optuna-botorch': constraints are not supported")
    train_x = normalize(train_x, bounds=bounds)
    if pending_x is not None:
        pending_x = normalize(pending_x, bounds=bounds)
    model = SingleTaskGP(train_x, train_obj, outcome_transform=Standardize(m=train_obj.size(-1)))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    sampler = SobolQMCNormalSampler(torch.Size((mc_samples,)))
    # unlike optuna-integration's qnehvi, no ``nonnegative``: a log acquisition is negative, so
    # botorch would redraw 10x raw_samples and then start from random points (and only when
    # warnings are recorded: ``-W ignore`` changed the asked genomes)
    options = {"batch_limit": 5, "maxiter": maxiter}
    if acquisition == "qnehvi":
        n = train_obj.size(-1)
        acqf = qLogNoisyExpectedHypervolumeImprovement(
            model=model,
            ref_point=(train_obj.min(dim=0).values - 1e-8).tolist(),
            X_baseline=train_x,
            alpha=10.0 ** (n - 8) if n > 4 else 0.0,  # approximate boxes above 4, as upstream
            prune_baseline=True,
            sampler=sampler,
            X_pending=pending_x,
        )
    else:
        acqf = qLogExpectedImprovement(
            model=model, best_f=train_obj.max(), sampler=sampler, X_pending=pending_x
        )
    unit = torch.zeros_like(bounds)
    unit[1] = 1
    candidates, _ = optimize_acqf(
        acq_function=acqf,
        bounds=unit,
        q=1,
        num_restarts=num_restarts,
        raw_samples=raw_samples,
        options=options,
        sequential=True,
    )
    return unnormalize(candidates.detach(), bounds=bounds)


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
        """Every option, defaults included (they are ours, not the sampler's), except the
        acquisition settings left unset: added later, they compare as before they existed, so
        a checkpoint from before them still restores."""
        values = dict(parsed)
        for key in _SETTINGS:
            if values[key] is None:
                del values[key]
        return values

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

        settings = {k: self.options.get(k) for k in _SETTINGS}
        candidates = _candidates_func(self._acquisition(), settings)

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

"""One checkpoint scored on tasks, in full or with a cheap estimator: ``evomerge eval``.

Every task and estimator is checked before a model opens, so a typo costs nothing. One engine
serves calibration and scoring: the calibration models are swapped into it, then the checkpoint
itself again (a vLLM engine costs a start and its memory; a second one would double both).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from evomerge.errors import EvomergeError, naming
from evomerge.evaluate.options import EngineDtype


@dataclass(frozen=True)
class CheckpointScore:
    """One task's score: the estimate, its standard error (None where the estimator has none)
    and how many of the task's items it used."""

    task: str
    metric: str
    value: float
    stderr: float | None
    items_used: int
    n_items: int
    seconds: float


def score_checkpoint(
    model_dir: str | Path,
    tasks: Sequence[str | Path],
    *,
    estimator: str = "full",
    zoo: str | Path | None = None,
    calibrate_with: Sequence[Path] | None = None,
    calibration_merges: int = 8,
    engine: str = "hf",
    dtype: str = "float32",
    engine_options: Mapping[str, Any] | None = None,
    device: str = "cpu",
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> list[CheckpointScore]:
    """Score ``model_dir`` on each task (a name under ``fitness/``, or a path). Anchor and IRT
    estimators are calibrated on ``calibrate_with`` (base first; default: the zoo's models).

    Raises :class:`EvomergeError` subclasses naming the task file, estimator or option at
    fault, before any model is opened."""
    from evomerge.evaluate.calibrate import build_calibration, calibration_models, zoo_models
    from evomerge.evaluate.estimators import check_estimator, make_estimator
    from evomerge.evaluate.scoring import score_task
    from evomerge.evaluate.select import load_candidate, make_engine
    from evomerge.evaluate.tasks import load_task
    from evomerge.recipe import Recipe

    if dtype not in get_args(EngineDtype):
        raise EvomergeError(f"dtype {dtype!r}: choose one of {list(get_args(EngineDtype))}")
    loaded = []
    for ref in tasks:
        with naming(ref):
            loaded.append(load_task(ref, zoo=zoo))
    ests = {t.name: make_estimator(estimator, seed) for t in loaded}
    for t in loaded:
        with naming(t.origin):
            check_estimator(ests[t.name], t.metric, t.unit_metric, t.name)  # IRT: not log-prob
    scorer = make_engine(engine, model_dir, device=device, dtype=dtype, options=engine_options)
    try:
        if any(e.needs_calibration for e in ests.values()):
            if calibrate_with is None and zoo is None:
                raise EvomergeError(f"estimator {estimator}: name the calibration models")
            models = calibrate_with or calibration_models(zoo_models(zoo), base="base")  # type: ignore[arg-type]
            for t in loaded:
                ests[t.name].calibrate(
                    build_calibration(
                        scorer, t, models, n_merges=calibration_merges, seed=seed, log=log
                    )
                )
            itself = Recipe.from_dict({"sources": {"model": str(model_dir)}, "method": "linear"})
            load_candidate(scorer, itself, device=device)
        out = []
        for t in loaded:
            est = ests[t.name]
            t0 = time.perf_counter()
            res = score_task(scorer, t, est.select(t.item_ids))
            e = est.estimate(res.scores, t.item_ids)
            out.append(
                CheckpointScore(
                    t.name,
                    t.metric,
                    e.value,
                    e.stderr,
                    e.items_used,
                    e.n_items,
                    time.perf_counter() - t0,
                )
            )
        return out
    finally:
        close = getattr(scorer, "close", None)
        if callable(close):
            close()

"""Reference points: the base, each source and the uniform merge, scored once when a run starts,
with the run's own engine, objectives and estimators, so a front plot shows how far the search
moved beyond them.

They live in the run directory (``reference_points.json``, written atomically), not in the
archive: they are not trials, do not count against the budget and never reach the optimizer.
A resumed run finds the file and scores nothing again. The same file records what each
objective is (direction, metric, estimator, hypervolume reference), which the archive alone
does not say; it is written even with ``reference_points: false`` (then without points).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evomerge.errors import EvomergeError
from evomerge.fileio import atomic_write_json, read_json
from evomerge.objectives import unbeatable
from evomerge.recipe import Recipe
from evomerge.run.dispatch import SearchLike, batch_results
from evomerge.workers.base import Job

if TYPE_CHECKING:
    from evomerge.space import SearchSpace

REFERENCE_FILE = "reference_points.json"


class ReferenceError(EvomergeError):
    """The run's reference points file cannot be read."""


@dataclass
class ReferencePoint:
    """One reference model's scores; ``kind`` is base, source or uniform."""

    label: str
    kind: str
    recipe_hash: str
    recipe: str
    values: list[float] | None
    fidelity: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None
    # set → {"scores": {objective: value}, "stderr": {objective: se}}: scored by `evomerge
    # confirm` on the same items as the run's trials (held-out or every item)
    confirmed: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.values is not None


@dataclass
class ObjectiveInfo:
    """What an objective is, beyond its name: for titles, axes and ``front --json``."""

    name: str
    direction: str
    metric: str | None
    estimator: str | None
    reference: float | None  # the hypervolume reference (None: the worst value evaluated)


def reference_recipes(space: SearchSpace, base: str | None) -> dict[str, tuple[str, Recipe]]:
    """label → (kind, recipe): the base, every other source alone, and the uniform merge."""
    seed, dtype = space.seed, space.dtype
    out: dict[str, tuple[str, Recipe]] = {}
    for name in [*([base] if base else []), *sorted(n for n in space.sources if n != base)]:
        data: dict[str, Any] = {
            "sources": {name: space.sources[name]},
            "method": "linear",
            "seed": seed,
        }
        if dtype:
            data["dtype"] = dtype
        out[name] = ("base" if name == base else "source", Recipe.model_validate(data))
    uniform = space.uniform()
    if uniform is not None:
        out[f"uniform {uniform.method}"] = ("uniform", uniform)
    return out


def objective_infos(search: SearchLike) -> list[ObjectiveInfo]:
    out = []
    for spec, ob, d, ref in zip(
        search.experiment.objectives,
        search.worker.objectives,
        search.directions,
        search.reference,
        strict=True,
    ):
        metric = getattr(ob, "metric", None) or (str(spec.cost) if spec.cost else None)
        est = None if spec.cost else spec.estimator
        out.append(ObjectiveInfo(spec.label, d, metric, est, ref))
    return out


def ensure_reference_points(search: SearchLike) -> None:
    """Score the reference points unless the run already has them (or does not want them).
    Not trials: outside the archive, the budget and the optimizer. Called as a run starts and
    as it resumes; a run killed while scoring them scores them again on resume."""
    path = Path(search.run_dir) / REFERENCE_FILE
    have = _read_raw(path) if path.exists() else None
    enabled = search.experiment.reference_points
    if have is not None and (have.get("points") is not None or not enabled):
        return
    infos = objective_infos(search)
    points = None
    if enabled:
        points = []
        t0 = time.perf_counter()
        recipes = reference_recipes(search.space, search.experiment.base)
        evs = _score(search, [r for _, r in recipes.values()])
        for (label, (kind, recipe)), ev in zip(recipes.items(), evs, strict=True):
            ok = ev.ok and all(math.isfinite(v) for v in ev.values or [])
            points.append(
                ReferencePoint(
                    label,
                    kind,
                    recipe.content_hash(),
                    recipe.to_yaml(),
                    list(ev.values) if ok and ev.values else None,
                    dict(ev.fidelity),
                    dict(ev.stderr),
                    None if ok else (ev.error or "failed"),
                )
            )
        search.log(
            f"reference points: {len(points)} scored in {time.perf_counter() - t0:.1f}s "
            "(not trials: outside the budget and the optimizer)"
        )
    atomic_write_json(
        path,
        {
            "objectives": [asdict(o) for o in infos],
            "points": None if points is None else [asdict(p) for p in points],
        },
    )


def _score(search: SearchLike, recipes: list[Recipe]) -> list[Any]:
    """The reference models through the run's worker (a Ray pool: all at once), never promoted:
    the front they are given is a point no estimate can beat, so each is scored as a fresh
    candidate's first rung is."""
    unbeaten = [unbeatable(search.directions)]
    jobs = [Job(r, [], [i]) for i, r in enumerate(recipes)]
    out: list[Any] = [None] * len(recipes)
    for job, ev in batch_results(search.worker, jobs, front=lambda: unbeaten, stop=lambda: False):
        out[job.slots[0]] = ev
    return out


def _read_raw(path: Path) -> dict[str, Any]:
    data = read_json(path, error=ReferenceError, what="reference points")
    if not isinstance(data, dict):
        raise ReferenceError(f"{path}: not a mapping")
    return data


def record_reference_confirmations(
    run_dir: Path, kind: str, results: dict[str, tuple[dict[str, float], dict[str, float | None]]]
) -> None:
    """Store reference points' scores on confirmation set ``kind`` (label → (scores, stderr)),
    atomically, keeping everything else the file holds."""
    path = Path(run_dir) / REFERENCE_FILE
    data = _read_raw(path)
    for p in data.get("points") or []:
        if p.get("label") in results:
            scores, stderr = results[p["label"]]
            p.setdefault("confirmed", {})[kind] = {"scores": scores, "stderr": stderr}
    atomic_write_json(path, data)


def read_reference(run_dir: Path) -> tuple[list[ObjectiveInfo] | None, list[ReferencePoint]]:
    """The run's objective descriptions (None for a run started before they were recorded) and
    its reference points (empty where none were scored)."""
    path = Path(run_dir) / REFERENCE_FILE
    if not path.exists():
        return None, []
    data = _read_raw(path)
    try:
        infos = [ObjectiveInfo(**o) for o in data.get("objectives") or []]
        points = [ReferencePoint(**p) for p in data.get("points") or []]
    except TypeError as e:
        raise ReferenceError(f"{path}: unexpected content: {e}") from None
    return infos or None, points

"""Calibration response matrices for the anchor and IRT estimators.

Rows are models scored in full on every item of a task: the sources themselves plus a small,
seeded set of random merges of them (so the estimators see abilities between the sources, where
the search's candidates live). Built once per (task, sources, size, seed) and cached on disk,
keyed on the sources' content (:func:`model_fingerprint`), not their paths.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from evomerge.errors import EvomergeError
from evomerge.evaluate.engines import Engine
from evomerge.evaluate.estimators import Calibration, calibration_cache
from evomerge.evaluate.scoring import score_task
from evomerge.evaluate.select import load_candidate
from evomerge.evaluate.tasks import Task
from evomerge.recipe import Recipe

CACHE_DIR = Path.home() / ".cache" / "evomerge" / "calibration"


def calibration_models(
    sources: Mapping[str, str | os.PathLike[str]], base: str | None = None
) -> list[Path]:
    """The models scored in full to calibrate anchor and IRT estimators: the base first
    (``sources[base]``, else the first source), then every other source in name order. One rule
    for the search's worker (the experiment's sources) and ``evomerge eval`` (the zoo's models,
    :func:`zoo_models`): the same sources give the same calibration, cached once."""
    if not sources:
        raise EvomergeError("calibration needs at least one model")
    ref = Path(sources[base] if base is not None else next(iter(sources.values())))
    return [ref, *(Path(p) for _, p in sorted(sources.items()) if Path(p) != ref)]


def zoo_models(zoo: str | os.PathLike[str]) -> dict[str, Path]:
    """A built tiny zoo's models by name: ``base`` and ``experts/<skill>``."""
    zoo = Path(zoo)
    return {"base": zoo / "base", **{f"experts/{d.name}": d for d in (zoo / "experts").iterdir()}}


def calibration_recipes(models: Sequence[Path], n_merges: int, seed: int) -> list[Recipe]:
    """The sources as they are, then ``n_merges`` random task-arithmetic merges onto the first
    (the base) with per-model weights in [0, 1.2]."""
    recipes = [Recipe.from_dict({"sources": {"m": str(m)}, "method": "linear"}) for m in models]
    if len(models) < 2:
        return recipes
    rng = random.Random(seed)
    base, others = models[0], models[1:]
    for _ in range(n_merges):
        sources: dict = {"base": str(base)}
        for i, m in enumerate(others):
            sources[f"m{i}"] = {"path": str(m), "parameters": {"weight": rng.uniform(0, 1.2)}}
        recipes.append(
            Recipe.from_dict({"sources": sources, "method": "task_arithmetic", "base": "base"})
        )
    return recipes


def model_fingerprint(model: str | os.PathLike[str]) -> str:
    """What a checkpoint's content is, cheaply: config.json hashed, and every other file's name,
    size and modification time (links followed: a hub snapshot's files point at its blobs). A
    checkpoint rewritten in place gets a new fingerprint without a read of its weights."""
    d = Path(model).resolve()
    h = hashlib.sha256(str(d).encode())
    try:
        files = sorted(f for f in d.iterdir() if f.is_file())
    except OSError as e:
        raise EvomergeError(f"calibration model {d}: cannot list it: {e.strerror}") from None
    for f in files:
        st = f.stat()
        h.update(f"\n{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        if f.name == "config.json":
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def calibration_key(task: Task, models: Sequence[Path], n_merges: int, seed: int) -> str:
    """The cache key of a calibration: the task's items, and the models by content (their
    fingerprints), not by path alone, so a checkpoint updated in place is scored again."""
    items = hashlib.sha256("\n".join(task.item_ids).encode()).hexdigest()[:12]
    ms = hashlib.sha256("\n".join(model_fingerprint(m) for m in models).encode()).hexdigest()
    return f"{task.name}.{task.metric}.{items}.{ms[:12]}.m{n_merges}.s{seed}"


def build_calibration(
    engine: Engine,
    task: Task,
    models: Sequence[Path],
    *,
    n_merges: int = 8,
    seed: int = 0,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Calibration:
    """Score every calibration model in full (swapping each into ``engine``); cached in
    ``cache_dir`` (default :data:`CACHE_DIR`)."""

    def build() -> Calibration:
        rows = []
        for i, recipe in enumerate(calibration_recipes(models, n_merges, seed)):
            log(f"calibrating {task.name}: model {i + 1}")
            load_candidate(engine, recipe)  # any engine: tensors, or the recipe for vLLM
            scores = score_task(engine, task).scores
            rows.append([scores[j] for j in task.item_ids])
        return Calibration.fit(np.array(rows), task.item_ids, key=key, seed=seed)

    key = calibration_key(task, models, n_merges, seed)
    return calibration_cache(cache_dir or CACHE_DIR, key, build)

"""Starting, resuming, opening and summarizing runs: the public entry points of a search
(also at the package root: ``evomerge.start``, ``evomerge.reopen``, ``evomerge.load_run``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evomerge.experiment import Experiment
from evomerge.run.archive import Archive, ArchiveError, Evaluation
from evomerge.run.loop import Outcome, Progress, Search
from evomerge.run.run_dir import (
    ARCHIVE_FILE,
    JOURNAL_FILE,
    OPTIMIZER_FILE,
    RunError,
    create,
    discard,
    load_experiment,
    lock,
    open_archive,
    owner_alive,
    read_info,
    read_workers,
    storage_url,
    unlock,
    update_info,
)

__all__ = [
    "NothingToDo",
    "Outcome",
    "Progress",
    "Run",
    "Search",
    "failures_by_reason",
    "load_run",
    "reopen",
    "start",
    "summary",
]


class NothingToDo(RunError):
    """A resume found the run complete (budget spent, or space exhausted): not an error."""


@dataclass
class Run:
    """A run as its files hold it (read-only: no model is opened, nothing is locked)."""

    run_dir: Path
    experiment: Experiment
    info: dict[str, Any]
    archive: Archive


def load_run(run_dir: str | Path) -> Run:
    """Open a run directory for reading: its experiment, ``run.json`` and archive."""
    run_dir = Path(run_dir)
    experiment, info = load_experiment(run_dir)
    return Run(run_dir, experiment, info, open_archive(run_dir))


def start(
    experiment_file: Path,
    run_dir: Path,
    *,
    zoo: Path | None,
    budget: int | None = None,
    log: Callable[[str], None] = lambda _: None,
    worker: Any = None,
) -> tuple[Search, int]:
    """A new run in a new (or empty) run directory."""
    experiment = Experiment.load(experiment_file)
    info = create(run_dir, experiment_file, experiment, zoo=zoo, budget=budget)
    try:
        search = Search(run_dir, experiment, zoo=zoo, log=log, worker=worker)
    except BaseException:
        discard(run_dir)  # nothing was evaluated: leave no half-made run behind
        raise
    # hub sources' commits: a resume reads the very same files
    update_info(run_dir, status="running", revisions=search.revisions)
    return search, info["budget"]


def reopen(
    run_dir: Path,
    *,
    budget: int | None = None,
    experiment_file: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
    worker: Any = None,
) -> tuple[Search, int]:
    """Continue a run; ``budget`` may raise its budget. A run with nothing left to do (its
    budget spent, its space exhausted) raises :class:`NothingToDo` before any model is opened.
    Another process driving the run is refused, naming it (the run lock)."""
    read_info(run_dir)  # a run directory at all
    lock(run_dir)
    try:
        experiment, info = load_experiment(run_dir, experiment_file)
        total = budget or info["budget"]
        done = _trials(run_dir, info)
        _check_archive_kept(run_dir, info, done)
        if info.get("status") == "exhausted":
            raise NothingToDo(
                f"{run_dir}: nothing to do — its search space is exhausted ({done} distinct "
                f"recipes evaluated): {info.get('reason')}"
            )
        if done >= total:
            if info.get("status") == "running":  # killed after its last commit
                update_info(run_dir, status="finished", evaluations=done, pid=os.getpid())
            raise NothingToDo(
                f"{run_dir}: nothing to do — it has spent its budget ({done} of {total} "
                f"evaluations); pass --budget N with N > {done} to go on"
            )
        search = Search(
            run_dir,
            experiment,
            zoo=Path(info["zoo"]) if info.get("zoo") else None,
            log=log,
            worker=worker,
            revisions=info.get("revisions"),
        )
    except BaseException:
        unlock(run_dir)
        raise
    update_info(
        run_dir, budget=total, status="running", pid=os.getpid(), reason=None, traceback=None
    )
    return search, total


def _check_archive_kept(run_dir: Path, info: dict[str, Any], done: int) -> None:
    """Refuse a run whose archive lost trials it had: resuming would score again from nothing
    while the optimizer's checkpoint remembers what it was told (and the run's results would
    be gone without a word). ``run.json`` records the evaluations a run had when it last
    stopped; an optimizer checkpoint means some were told."""
    recorded = int(info.get("evaluations") or 0)
    told = any((Path(run_dir) / f).exists() for f in (OPTIMIZER_FILE, JOURNAL_FILE))
    if done < recorded or (done == 0 and told):
        had = f"{recorded} evaluations (run.json)" if recorded else "an optimizer checkpoint"
        raise RunError(
            f"{run_dir}: its archive ({storage_url(run_dir)}) holds {done} trials, but the run "
            f"had {had}: the archive is missing or damaged. Restore it from a copy, or start "
            "a new run directory (resuming now would start over, without the trials it had)"
        )


def _trials(run_dir: Path, info: dict[str, Any]) -> int:
    db = Path(run_dir) / ARCHIVE_FILE
    if not info.get("storage") and (not db.exists() or db.stat().st_size == 0):
        return 0  # opening it would write an empty archive's tables
    try:
        return len(open_archive(run_dir))
    except ArchiveError:  # no study yet (a shared database), or one Search will explain
        return 0


def failures_by_reason(evs: list[Evaluation]) -> dict[str, tuple[int, str]]:
    """Failed trials grouped by the kind their error names first (``RecipeError``,
    ``NonFiniteScore``, ``ActorDied``…): kind → (count, the first one's message), most first."""
    groups: dict[str, tuple[int, str]] = {}
    for e in evs:
        if e.ok:
            continue
        first = (e.error or "").strip().splitlines()[0] if (e.error or "").strip() else "?"
        kind, colon, msg = first.partition(":")
        if not colon or " " in kind.strip():
            kind, msg = "other", first
        n, example = groups.get(kind.strip(), (0, msg.strip()))
        groups[kind.strip()] = (n + 1, example)
    return dict(sorted(groups.items(), key=lambda kv: -kv[1][0]))


_MERGE = ("plan", "prefetch_wait", "merge", "swap", "load", "rebuild")
_LOOP = {"optimizer": ("ask", "tell"), "commit": ("commit", "checkpoint", "decode", "lookup")}


def time_split(evs: list[Evaluation], info: dict[str, Any]) -> dict[str, float] | None:
    """Seconds per evaluation: ``wall`` (every run of the directory, over the evaluations it
    holds), ``scoring`` and ``merge`` (the worker's), ``optimizer`` and ``commit`` (the loop's,
    recorded when a run stops); None before an evaluation."""
    if not evs:
        return None
    n = len(evs)
    out = {
        "scoring": sum(v for e in evs for k, v in e.timings.items() if _scoring(k)) / n,
        "merge": sum(e.timings.get(k, 0.0) for e in evs for k in _MERGE) / n,
    }
    loop = info.get("loop_seconds")
    if loop:
        for part, keys in _LOOP.items():
            out[part] = sum(loop.get(k, 0.0) for k in keys) / n
    if info.get("wall_seconds"):
        out["wall"] = info["wall_seconds"] / n
    return out


def _scoring(key: str) -> bool:
    return key.startswith("score:") or key == "estimate"


def summary(run_dir: Path) -> dict[str, Any]:
    """A run's state from its files alone (works while it runs: SQLite allows a reader).

    ``run.json``'s fields, plus ``trials``, ``failed``, ``objectives``, ``front_size``,
    ``best`` (objective → (value, trial)), ``time_split`` (:func:`time_split`: seconds per
    evaluation, None before the first),
    ``rebuilds`` (engine models built because a recipe changed the depth: with vLLM each is a
    new engine), ``stale`` (the run says it is running but its process is gone), ``workers``
    (a Ray run's pool as last written: actors alive, each one's utilization, in flight, retries,
    timeouts, evaluations per hour; None for a local run) and ``failures`` (the failed trials by
    reason: the error's kind → count and the first such error's message).
    """
    info = read_info(run_dir)
    archive = open_archive(run_dir)
    evs = archive.evaluations
    best = {}
    for i, name in enumerate(archive.objectives):
        b = archive.best(name)
        if b is not None and b.values is not None:
            best[name] = (b.values[i], b.number)
    info.update(
        trials=len(evs),
        failed=sum(not e.ok for e in evs),
        failures=failures_by_reason(evs),
        objectives=archive.objectives,
        front_size=len(archive.front()),
        best=best,
        time_split=time_split(evs, info),
        rebuilds=int(sum(e.timings.get("rebuilds", 0.0) for e in evs)),
        stale=info.get("status") == "running" and not owner_alive(info),
        workers=read_workers(run_dir),
    )
    return info

"""The unit zoo's search experiment, stated once: the search, report, holdout, halving, vocabulary
and engine tests each run a variant of it, and a test's file should show only what it changes."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from evomerge.genes import Gene
from evomerge.run import lifecycle as search
from evomerge.run.archive import Archive, Evaluation
from evomerge.zoo import SOURCES as ZOO_SOURCES


def experiment(name: str, **changes: Any) -> dict[str, Any]:
    """Two objectives (rev9, shift3 on 8 items), NSGA-II by 4, 12 trials, seed 3, one thread;
    ``changes`` replace whole keys. Built fresh per call: a test may mutate its copy."""
    return {
        "name": name,
        "sources": dict(ZOO_SOURCES),
        "base": "base",
        "space": "dare_ties-per-layer",
        "space_options": {"granularity": 2},
        "objectives": [
            {"task": "rev9", "estimator": "subsample:8"},
            {"task": "shift3", "estimator": "subsample:8"},
        ],
        "optimizer": {"name": "nsga2", "pop_size": 4},
        "budget": 12,
        "seed": 3,
        "workers": {"threads": 1},
        **changes,
    }


def write_experiment(
    directory: Path, data: Mapping[str, Any], filename: str = "exp.yaml", /, **changes: Any
) -> Path:
    """``data`` updated by ``changes``, as the YAML file `search.start` reads (positional-only
    arguments: ``changes`` may hold any experiment key, ``name`` included)."""
    path = directory / filename
    path.write_text(yaml.safe_dump({**data, **changes}))
    return path


def failing_della() -> dict[str, Any]:
    """Changes giving 8 random DELLA candidates of which some fail in the merge planner (density
    ± epsilon must stay inside (0, 1)): a run with failures that the engine never sees."""
    return {
        "space": "della-per-layer",
        "space_options": {"granularity": 4, "genes": {"weight": [0, 1], "density": [0.02, 0.98]}},
        "optimizer": {"name": "random", "batch": 4},
        "budget": 8,
    }


def tiny_layers_space() -> dict[str, Any]:
    """Changes to an integer-only space of 2⁴ recipes (rev9's layers taken or removed), scored
    on 4 items and a parameter count: random batches of 8 soon ask for recipes seen before."""
    return {
        "space": "layers",
        "space_options": {"allow_merge": False, "models": ["rev9"], "genes": {}},
        "optimizer": {"name": "random", "batch": 8},
        "objectives": [
            {"task": "rev9", "estimator": "subsample:4"},
            {"cost": "params", "reference": 2e6},
        ],
    }


def crash_at(number: int) -> Callable[[Evaluation], None]:
    """An ``on_evaluation`` hook raising RuntimeError("power cut") once trial ``number`` is
    committed: the run dies as a crashed process would, between two commits."""

    def crash(ev: Evaluation) -> None:
        if ev.number == number:
            raise RuntimeError("power cut")

    return crash


def signal_at(number: int, sig: signal.Signals = signal.SIGINT) -> Callable[[Evaluation], None]:
    """An ``on_evaluation`` hook sending ``sig`` to this process once trial ``number`` is
    committed: the real signal through the search's real handler, as Ctrl-C or a scheduler."""

    def interrupt(ev: Evaluation) -> None:
        if ev.number == number:
            os.kill(os.getpid(), sig)

    return interrupt


def run_to_the_end(exp: Path, run_dir: Path, zoo: Path) -> Path:
    """``run_dir`` after a search of ``exp`` spent its whole budget (the search closed even when
    it did not): the run a report or confirm test reads."""
    s, budget = search.start(exp, run_dir, zoo=zoo)
    try:
        assert s.run(budget).status == "finished"
    finally:
        s.close()
    return run_dir


def one_gene_archive(directory: Path, /, **directions: str) -> Archive:
    """An empty archive in ``directory``/a.db over one gene, its objectives named and directed
    by ``directions`` in order: the front, hypervolume and plot tests record values by hand."""
    return Archive(
        f"sqlite:///{directory / 'a.db'}",
        objectives=list(directions),
        directions=list(directions.values()),
        genes=[Gene("g")],
        experiment_hash="x",
    )

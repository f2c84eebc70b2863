"""Every combination of schedule × dispatch × fidelity the experiment accepts runs through the
one loop, for a few evaluations on the unit zoo; the one it refuses is refused for its method's
reason. (Ray's dispatch of the same combinations: tests/test_ray.py.)"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import evomerge
from evomerge.experiment import Experiment, ExperimentError
from evomerge.run import lifecycle as search
from evomerge.run.run_dir import open_archive

ZOO = {"base": "zoo:base", "rev9": "zoo:experts/rev9", "shift3": "zoo:experts/shift3"}
BUDGET, UNTIL, LAYERS = 8, 4, 4  # the unit zoo's 4 layers, 2 per group in the coarse stage

FIDELITY: dict[str, dict[str, Any]] = {
    "none": {},
    "promotion": {"promotion": {"enabled": True}},
    "halving": {"promotion": {"schedule": "successive_halving", "rungs": [8, 24], "eta": 2}},
}


def _experiment(schedule: bool, dispatch: str, fidelity: str) -> dict[str, Any]:
    estimator = "full" if fidelity == "halving" else "subsample:8"
    exp: dict[str, Any] = {
        "name": f"combo-{int(schedule)}-{dispatch}-{fidelity}",
        "sources": ZOO,
        "base": "base",
        "space": "dare_ties-per-layer",
        "space_options": {"granularity": 1},
        "objectives": [
            {"task": "rev9", "estimator": estimator},
            {"task": "shift3", "estimator": estimator},
        ],
        "optimizer": {"name": "random", "batch": 4},
        "budget": BUDGET,
        "seed": 11,
        "workers": {"threads": 1, "dispatch": dispatch},
        **FIDELITY[fidelity],
    }
    if schedule:
        exp["schedule"] = [{"granularity": 2, "until": UNTIL}, {"granularity": 1}]
    return exp


CASES = list(itertools.product([False, True], ["batch", "async"], list(FIDELITY)))


@pytest.mark.parametrize(("schedule", "dispatch", "fidelity"), CASES)
def test_each_combination_runs_or_is_refused_for_its_method(
    unit_zoo: Path, tmp_path: Path, schedule: bool, dispatch: str, fidelity: str
) -> None:
    data = _experiment(schedule, dispatch, fidelity)
    if dispatch == "async" and fidelity == "halving":  # halving ranks a batch; async has none
        with pytest.raises(ExperimentError, match="ranks each batch"):
            Experiment.parse(data)
        return
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    s, budget = search.start(path, tmp_path / "run", zoo=unit_zoo)
    try:
        out = s.run(budget)
        n_genes = len(s.space.genes)
    finally:
        s.close()
    assert out.status == "finished" and out.evaluations == BUDGET
    run = evomerge.load_run(tmp_path / "run")  # the public API: the run as its files hold it
    assert run.info["status"] == "finished" and len(run.archive) == BUDGET
    assert run.experiment.content_hash() == Experiment.load(path).content_hash()
    evs = open_archive(tmp_path / "run").evaluations
    assert len({e.recipe_hash for e in evs}) == BUDGET  # each recipe once
    assert all(e.ok and len(e.genome) == n_genes for e in evs)  # in the final space's genes
    if schedule:  # the coarse stage: the layers of a group share each coefficient's value
        pairs = [np.asarray(e.genome).reshape(-1, LAYERS // 2, 2) for e in evs]
        assert all(np.all(g[..., 0] == g[..., 1]) for g in pairs[:UNTIL])
        assert any(np.any(g[..., 0] != g[..., 1]) for g in pairs[UNTIL:])  # then per layer
    if fidelity == "halving":  # every member scored at rung 0; the best of each batch at rung 1
        rungs = [int(e.timings["rung"]) for e in evs]
        assert 0 in rungs and 1 in rungs
        assert all(e.timings["items"] >= 2 * 8 for e in evs)

"""Every shipped experiment file parses and names a search space that loads; recipes parse."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evomerge.experiment import Experiment, ExperimentError
from evomerge.mergekit_yaml import load_any
from evomerge.space import load_space

FILES = sorted((Path(__file__).resolve().parent.parent / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_experiment_files_are_valid(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    if "objectives" in data:
        exp = Experiment.load(path)
        spec = load_space(exp.space, exp.space_options)
        assert spec.kind in ("parameters", "routing", "layers", "combined")
    else:
        load_any(path)  # a recipe (ours or mergekit's)


def test_experiment_errors_name_the_key(tmp_path: Path) -> None:
    p = tmp_path / "e.yaml"
    p.write_text("name: x\nsources: {a: /a}\nspace: routing\nobjectives: []\nbudget: 3\n")
    with pytest.raises(ExperimentError, match=r"e\.yaml: objectives: List should have at least 1"):
        Experiment.load(p)
    p.write_text(
        "name: x\nsources: {a: /a}\nbase: b\nspace: routing\n"
        "objectives: [{task: rev9}]\nbudget: 3\n"
    )
    with pytest.raises(ExperimentError, match=r"base: 'b' is not one of the sources"):
        Experiment.load(p)

"""Every shipped experiment file parses and names a search space that loads; recipes parse."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evomerge.evaluate.tasks import load_task
from evomerge.experiment import Experiment, ExperimentError
from evomerge.hub import SourceError, is_hub_id, resolve_sources
from evomerge.merge.materialize import plan
from evomerge.mergekit_yaml import load_any
from evomerge.space import SearchSpace, load_space

FILES = sorted((Path(__file__).resolve().parent.parent / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_experiment_files_are_valid(
    path: Path, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each file parses, and its sources open: zoo experiments and recipes are planned on the
    unit zoo (every source read, the space's middle decoded); the real-scale ones name hub ids
    (or a documented local fine-tune), which resolve through the Hugging Face cache: with an
    empty cache and no network, the error names the source and the id."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    data = yaml.safe_load(path.read_text())
    # the SmolLM2 zoo's experiments run on its 2-layer truncation, the others on the unit zoo
    real = "zoo:experts/add" in data.get("sources", {}).values()
    unit_zoo = request.getfixturevalue("smollm2_unit_zoo" if real else "unit_zoo")
    if "objectives" not in data:
        recipe = load_any(path).with_zoo(unit_zoo)  # a recipe (ours or mergekit's)
        assert plan(recipe).jobs
        return
    exp = Experiment.load(path)
    spec = load_space(exp.space, exp.space_options)
    assert spec.kind in ("parameters", "routing", "layers", "combined")
    if all(s.startswith("zoo:") for s in exp.sources.values()):
        sources = exp.resolved_sources(unit_zoo)
        space = SearchSpace(spec, sources=sources, base=exp.base, seed=exp.seed)
        assert plan(space.decode(space.middle())).jobs  # every source opened and read
        for o in exp.objectives:
            if o.task:
                assert load_task(o.task, zoo=unit_zoo).items
        return
    hubs = {k: s for k, s in exp.sources.items() if is_hub_id(s)}
    local = set(exp.sources) - set(hubs)
    assert hubs and all(exp.sources[k].startswith("./") for k in local), exp.sources
    name, ref = next(iter(hubs.items()))
    with pytest.raises(SourceError, match=f"source '{name}': hub id '{ref}'"):
        resolve_sources({name: ref})


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

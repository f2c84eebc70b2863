"""Property-based fuzzing of what reads user input: the YAML loaders (recipe, mergekit, space,
task, experiment) on arbitrary documents and on good ones with a value swapped for junk, and
the genome decoders on arbitrary float arrays (NaN, ±inf, out of range, wrong length). Nothing
but our own EvomergeError subclasses may come out."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evomerge.errors import EvomergeError
from evomerge.evaluate.tasks import load_task
from evomerge.experiment import Experiment
from evomerge.mergekit_yaml import load_any
from evomerge.recipe import Recipe
from evomerge.space import SearchSpace, load_space

ROOT = Path(__file__).resolve().parent.parent
# derandomize: the suite runs the same examples every time (a failure reproduces; CI is stable)
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["zoo:base", "linear", "ties", "rev9", "org/name", "../..", "{", "(["]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.text(max_size=10)
            | st.sampled_from(
                [
                    "method",
                    "sources",
                    "base",
                    "parameters",
                    "weight",
                    "density",
                    "routing",
                    "layer",
                    "scale",
                    "merge_method",
                    "models",
                    "model",
                    "slices",
                    "layer_range",
                    "kind",
                    "genes",
                    "granularity",
                    "name",
                    "items",
                    "prompt",
                    "metric",
                    "objectives",
                    "task",
                    "budget",
                    "space",
                    "optimizer",
                    "estimator",
                    "seed",
                    "dtype",
                ]
            ),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=20,
)

GOOD = {
    "recipe": yaml.safe_load((ROOT / "experiments" / "zoo-dare-ties.yaml").read_text()),
    "mergekit": yaml.safe_load((ROOT / "experiments" / "zoo-ties.mergekit.yaml").read_text()),
    "space": yaml.safe_load((ROOT / "search_spaces" / "ps-dfs.yaml").read_text()),
    "task": {"name": "t", "kind": "logprob", "items": "items.jsonl", "metric": "perplexity"},
    "experiment": yaml.safe_load((ROOT / "experiments" / "zoo-demo.yaml").read_text()),
}


def _load(kind: str, path: Path) -> Any:
    if kind == "recipe":
        return Recipe.load(path)
    if kind == "mergekit":
        return load_any(path)
    if kind == "space":
        return load_space(path)
    if kind == "task":
        (path.parent / "items.jsonl").write_text('{"id": "a", "prompt": "x", "answer": "y"}\n')
        return load_task(path)
    return Experiment.load(path)


def _only_our_errors(kind: str, text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{kind}.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        try:
            _load(kind, path)
        except EvomergeError as e:
            assert str(e)  # says something (the CLI prints it on one line)


def _swap(doc: Any, path: list[int], junk: Any) -> Any:
    """``doc`` with the value at a pseudo-random position (chosen by ``path``) replaced."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return junk
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    k = keys[path[0] % len(keys)]
    out = dict(doc) if isinstance(doc, dict) else list(doc)
    out[k] = _swap(doc[k], path[1:], junk)
    return out


KINDS = sorted(GOOD)


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(doc=documents)
def test_arbitrary_documents(kind: str, doc: Any) -> None:
    _only_our_errors(kind, yaml.safe_dump(doc, allow_unicode=True))


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=5), junk=documents)
def test_good_documents_with_one_value_swapped(kind: str, path: list[int], junk: Any) -> None:
    _only_our_errors(kind, yaml.safe_dump(_swap(GOOD[kind], path, junk), allow_unicode=True))


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(raw=st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_bytes(kind: str, raw: bytes | str) -> None:
    _only_our_errors(kind, raw)


@pytest.fixture(scope="module")
def spaces(family: dict[str, Path]) -> list[SearchSpace]:
    sources = {k: str(v) for k, v in family.items()}
    out = []
    for name in ("linear-per-layer", "dare_ties-per-layer", "routing", "layers", "ps-dfs"):
        out.append(SearchSpace(load_space(name), sources=sources, base="base"))
    return out


genomes = st.lists(
    st.one_of(
        st.floats(0.0, 1.0),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, 1.0, 2.0, -0.0, 0.5, math.nan, math.inf, -math.inf, 1e308]),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data())
def test_decode_arbitrary_genomes(spaces: list[SearchSpace], data: st.DataObject) -> None:
    sp = data.draw(st.sampled_from(spaces))
    n = len(sp.genes)
    x = data.draw(st.one_of(genomes, st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)))
    if data.draw(st.booleans()) and len(x) == n:  # integer genes on valid choices, mostly
        x = [
            float(min(int(abs(v) * g.choices), g.choices - 1))
            if g.choices and math.isfinite(v)
            else v
            for g, v in zip(sp.genes, x, strict=True)
        ]
    try:
        recipe = sp.decode(np.array(x, dtype=float))
    except EvomergeError:
        return
    assert isinstance(recipe, Recipe)
    assert len(x) == n and all(math.isfinite(v) for v in x)  # else it had to be refused


def test_valid_genomes_decode(spaces: list[SearchSpace]) -> None:
    """The fuzzing above accepts a refusal; here a genome inside every gene's range (integer
    genes on one of their choices) must decode, in every space, and the recipe encodes back to a
    genome that decodes to the very same recipe (hash included: a routed slot's scale too)."""
    rng = np.random.default_rng(0)
    for sp in spaces:
        draws = [sp.middle()] + [
            np.array([rng.integers(g.choices) if g.choices else rng.random() for g in sp.genes])
            for _ in range(20)
        ]
        for x in draws:
            recipe = sp.decode(np.asarray(x, dtype=float))
            again = sp.decode(sp.encode(recipe))
            assert again.content_hash() == recipe.content_hash(), (sp.spec.kind, list(x))


def test_a_conditional_list_with_a_non_mapping_entry() -> None:
    """Found by the fuzzing above (random seed): ``lambda: [{}, null]`` raised a TypeError."""
    doc = {**GOOD["mergekit"], "parameters": {"lambda": [{}, None]}}
    with pytest.raises(EvomergeError, match="conditional entry"):
        _only_our_errors_strict("mergekit", yaml.safe_dump(doc))


def _only_our_errors_strict(kind: str, text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{kind}.yaml"
        path.write_text(text)
        _load(kind, path)


def test_the_uniform_merge_is_one_value_per_parameter(spaces: list[SearchSpace]) -> None:
    """``SearchSpace.uniform()``, the reference point beside every front: in each space every
    merged model has, for each parameter, one value on every layer and module (the same for all
    models), inside the space's bounds; no routing."""
    from evomerge.recipe import spec_values

    for sp in spaces:
        recipe = sp.uniform()
        assert recipe is not None and recipe.routing is None, sp.spec.kind
        per_name: dict[str, set[float]] = {}
        for src in recipe.sources.values():
            for param, spec in src.parameters.items():
                per_name.setdefault(param, set()).update(spec_values(spec))
        assert per_name, sp.spec.kind
        for param, values in per_name.items():
            assert len(values) == 1, (sp.spec.kind, param, values)
            bounds = getattr(getattr(sp, "params", None), "bounds", {})
            if param in bounds:
                (v,) = values
                assert bounds[param].low <= v <= bounds[param].high, (sp.spec.kind, param, v)

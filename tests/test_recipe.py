"""Recipes: YAML round trip, stable hash, parameter specs, validation errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evomerge.errors import RecipeError
from evomerge.recipe import (
    ByModule,
    Conditional,
    Gradient,
    PerLayer,
    Recipe,
    resolve,
    rules,
    spec_values,
)

BASIC = {
    "sources": {
        "base": "/m/base",
        "a": {"path": "/m/a", "parameters": {"weight": [0.1, 0.9]}},
        "b": {
            "path": "/m/b",
            "parameters": {
                "weight": {"attention": 0.2, "default": 0.4},
                "density": {"per_layer": [0.3, 0.5, 0.7]},
            },
        },
    },
    "method": "ties",
    "base": "base",
    "parameters": {"lambda": 0.8, "normalize": True},
}


def test_yaml_roundtrip_and_hash(tmp_path: Path) -> None:
    r = Recipe.from_dict(BASIC)
    r.save(tmp_path / "r.yaml")
    back = Recipe.load(tmp_path / "r.yaml")
    assert back == r
    assert back.content_hash() == r.content_hash()
    reordered = {k: BASIC[k] for k in reversed(list(BASIC))}
    reordered["sources"] = dict(reversed(list(BASIC["sources"].items())))
    assert Recipe.from_dict(reordered).content_hash() == r.content_hash()
    changed = {**BASIC, "parameters": {"lambda": 0.9, "normalize": True}}
    assert Recipe.from_dict(changed).content_hash() != r.content_hash()


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "sources: {x: models/x, y: zoo:experts/y, h: org/name, w: ./w}\nmethod: linear\n"
    )
    (tmp_path / "models" / "x").mkdir(parents=True)
    r = Recipe.load(tmp_path / "r.yaml")
    assert r.sources["x"].path == str(tmp_path / "models" / "x")
    assert r.sources["w"].path == str(tmp_path / "w")
    assert r.sources["h"].path == "org/name"  # no such folder: a hub id (as in mergekit)
    assert r.with_zoo("/z").sources["y"].path == "/z/experts/y"


def test_spec_resolution() -> None:
    kw = dict(tensor="model.layers.2.self_attn.q_proj.weight", kind="attention", num_layers=5)
    assert resolve(0.5, layer=2, **kw) == 0.5
    assert resolve([0.0, 1.0], layer=2, **kw) == pytest.approx(0.5)  # t = 2/4
    assert resolve([0.0, 1.0, 0.0], layer=1, **kw) == pytest.approx(0.5)
    assert resolve([0.2, 1.0], layer=None, **kw) == pytest.approx(0.2)  # non-layer: t = 0
    assert resolve(Gradient(gradient=[0.0, 1.0]), layer=4, **kw) == pytest.approx(1.0)
    assert resolve(PerLayer(per_layer=[1, 2, 3, 4, 5]), layer=3, **kw) == 4
    by = ByModule(attention=0.1, mlp=[0.0, 1.0], default=0.9)
    assert resolve(by, layer=2, **kw) == 0.1
    assert resolve(by, layer=2, **{**kw, "kind": "mlp"}) == pytest.approx(0.5)
    assert resolve(by, layer=None, **{**kw, "kind": "norm"}) == 0.9
    with pytest.raises(RecipeError, match="per_layer list has 2 values but the sources have 5"):
        resolve(PerLayer(per_layer=[1, 2]), layer=0, **kw)


def test_nested_specs_are_one_list_of_rules() -> None:
    spec = [
        Conditional(filter="layers.0.", value=ByModule(attention=0.1, default=[0.2, 0.4])),
        Conditional(value=ByModule(mlp=PerLayer(per_layer=[0.5, 0.6]), default=0.7)),
    ]
    found = [(r.kind, r.filters) for r in rules(spec)]
    assert found == [("attention", ("layers.0.",)), (None, ("layers.0.",)), ("mlp", ()), (None, ())]
    assert spec_values(spec) == [0.1, 0.2, 0.4, 0.5, 0.6, 0.7]
    kw = dict(num_layers=2)
    assert resolve(spec, tensor="m.layers.0.q", kind="attention", layer=0, **kw) == 0.1
    assert resolve(spec, tensor="m.layers.0.up", kind="mlp", layer=1, **kw) == pytest.approx(0.4)
    assert resolve(spec, tensor="m.layers.1.up", kind="mlp", layer=1, **kw) == 0.6
    assert resolve(spec, tensor="m.layers.1.q", kind="attention", layer=1, **kw) == 0.7
    # a kind nested inside another kind never applies
    assert rules(ByModule(attention=ByModule(mlp=1.0, default=2.0))) == rules(
        ByModule(attention=2.0)
    )
    with pytest.raises(RecipeError, match="no value for module kind 'norm'"):
        resolve(ByModule(attention=0.1), tensor="x", kind="norm", layer=None, num_layers=2)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=1, max_size=6), st.integers(2, 12))
def test_gradient_stays_within_its_end_points(values, n) -> None:
    for layer in range(n):
        v = resolve(values, tensor="x", kind="mlp", layer=layer, num_layers=n)
        assert min(values) - 1e-9 <= v <= max(values) + 1e-9
    assert resolve(values, tensor="x", kind="mlp", layer=0, num_layers=n) == pytest.approx(
        values[0]
    )
    assert resolve(values, tensor="x", kind="mlp", layer=n - 1, num_layers=n) == pytest.approx(
        values[-1]
    )


def test_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="base: 'nope' is not one of the sources"):
        Recipe.from_dict({**BASIC, "base": "nope"})
    bad = {
        **BASIC,
        "sources": {**BASIC["sources"], "a": {"path": "/m/a", "parameters": {"weight": "heavy"}}},
    }
    with pytest.raises(RecipeError, match=r"sources\.a\.parameters\.weight"):
        Recipe.from_dict(bad)
    with pytest.raises(RecipeError, match=r"routing\.0\.source"):
        Recipe.from_dict({**BASIC, "routing": [{"layer": 0, "source": "zz"}]})
    (tmp_path / "bad.yaml").write_text("sources: {a: x\nmethod: [")
    with pytest.raises(RecipeError, match=r"bad\.yaml: malformed YAML"):
        Recipe.load(tmp_path / "bad.yaml")
    with pytest.raises(RecipeError, match="no such file"):
        Recipe.load(tmp_path / "missing.yaml")

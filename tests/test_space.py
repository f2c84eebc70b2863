"""Search spaces: every preset decodes to a valid recipe and encodes back; canonical decoding;
gene counts; bad spaces fail early with the key at fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import make_model

from evomerge.merge.materialize import plan
from evomerge.space import SearchSpace, SpaceError, available_spaces, load_space

PRESET_OVERRIDES = {"slerp-per-layer": {"models": ["ft0"]}}


def _space(family: dict[str, Path], ref: object, **overrides: object) -> SearchSpace:
    spec = load_space(ref, overrides)  # type: ignore[arg-type]
    return SearchSpace(
        spec, sources={k: str(v) for k, v in family.items()}, base="base", num_layers=3, seed=7
    )


def _genome(sp: SearchSpace, rng: np.random.Generator) -> np.ndarray:
    return np.array(
        [rng.random() if g.choices is None else float(rng.integers(g.choices)) for g in sp.genes]
    )


def _flat(x: object, path: str = "") -> dict[str, object]:
    """Nested dump → {path: leaf}, so recipes compare with a float tolerance."""
    if isinstance(x, dict):
        return {k: v for key, val in x.items() for k, v in _flat(val, f"{path}.{key}").items()}
    if isinstance(x, list):
        return {k: v for i, val in enumerate(x) for k, v in _flat(val, f"{path}[{i}]").items()}
    return {path: x}


def test_presets_exist() -> None:
    for name in ("linear", "task_arithmetic", "ties", "dare_ties", "della", "slerp"):
        assert f"{name}-per-layer" in available_spaces()
    assert {"routing", "layers", "ps-dfs"} <= set(available_spaces())


@pytest.mark.parametrize("name", available_spaces())
def test_every_preset_round_trips(family: dict[str, Path], name: str) -> None:
    sp = _space(family, name, **PRESET_OVERRIDES.get(name, {}))
    rng = np.random.default_rng(0)
    trips = 0
    for g in [sp.middle(), *(_genome(sp, rng) for _ in range(20))]:
        try:
            recipe = sp.decode(g)
        except SpaceError as e:  # routing genomes may drop every layer: a clear, expected error
            assert "no layers" in str(e)
            continue
        trips += 1
        plan(recipe)  # every decoded value is inside the method's ranges; sources fit
        back = sp.encode(recipe)
        assert back.shape == g.shape
        again = sp.decode(back)
        assert _flat(again.model_dump()) == pytest.approx(_flat(recipe.model_dump()), abs=1e-12)
        if sp.spec.kind == "parameters" and not sp.spec.methods:  # no inactive genes: the
            # genome itself comes back
            np.testing.assert_allclose(back, g, atol=1e-9)
    assert trips >= 10, f"{name}: only {trips} of 21 genomes made a model"


def test_parameter_gene_count_and_layout(family: dict[str, Path]) -> None:
    sp = _space(family, "dare_ties-per-layer", granularity=2, split=["attention", "mlp"])
    # 3 models × 2 params × ceil(3/2)=2 groups × 3 kinds (attention, mlp, default)
    assert len(sp.genes) == 3 * 2 * 2 * 3
    assert sp.genes[0].name == "ft0.weight.L0-1.attention"
    g = np.zeros(len(sp.genes))
    g[[i for i, x in enumerate(sp.genes) if x.name == "ft1.weight.L2.mlp"]] = 1.0
    r = sp.decode(g)
    w = r.sources["ft1"].parameters["weight"]
    assert w.mlp.per_layer == [0.0, 0.0, 1.0]  # type: ignore[union-attr]
    assert r.sources["ft1"].parameters["density"].attention.per_layer == [0.1] * 3  # type: ignore[union-attr]
    assert r.parameters["lambda"] == 1.0 and r.seed == 7


def test_smoothing_gives_a_gradient(family: dict[str, Path]) -> None:
    sp = _space(family, "linear-per-layer", smoothing=True)
    assert len(sp.genes) == 4 * 3  # linear has no base: all four sources are weighted
    r = sp.decode(np.linspace(0, 1, len(sp.genes)))
    got = r.sources["ft0"].parameters["weight"].gradient  # type: ignore[union-attr]
    assert got == pytest.approx([3 / 11, 4 / 11, 5 / 11])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    gran=st.integers(1, 3),
    split=st.sampled_from([[], ["attention"], ["attention", "mlp"]]),
    smoothing=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_parameter_spaces_round_trip(
    family: dict[str, Path], gran: int, split: list[str], smoothing: bool, seed: int
) -> None:
    sp = _space(family, "ties-per-layer", granularity=gran, split=split, smoothing=smoothing)
    g = _genome(sp, np.random.default_rng(seed))
    np.testing.assert_allclose(sp.encode(sp.decode(g)), g, atol=1e-9)


def test_routing_slots_and_canonical_scales(family: dict[str, Path]) -> None:
    flat = _space(family, "routing", encoding="flat", repeats=2)
    n_slots = 3 * 3 * 2  # models × layers × repeats
    assert len(flat.genes) == 2 * n_slots
    structured = _space(family, "routing", repeats=2)
    assert len(structured.genes) == n_slots  # one gene per slot: the scale lives inside "on"
    g = np.zeros(len(flat.genes))
    g[0::2] = 1.0  # every slot on
    g[1::2] = 0.25
    g[2 * 5] = 0.0  # slot 5 off…
    a = flat.decode(g)
    g[2 * 5 + 1] = 0.9  # …so its scale gene changes nothing
    assert flat.decode(g).content_hash() == a.content_hash()
    assert len(a.routing or []) == n_slots - 1
    assert a.routing[0].scale == pytest.approx(0.5 + 0.25 * 1.5)  # type: ignore[index]
    # layer-major order: layer 0 of every model, then layer 1…
    assert [(s.source, s.layer) for s in (a.routing or [])[:4]] == [
        ("ft0", 0),
        ("ft1", 0),
        ("ft2", 0),
        ("ft0", 1),
    ]
    s = np.full(len(structured.genes), 0.2)
    s[[1, 4]] = [0.5, 1.0]  # included at the lowest and the highest scale
    r = structured.decode(s)
    assert [(x.source, x.layer, x.scale) for x in r.routing or []] == [
        ("ft1", 0, 0.5),
        ("ft1", 1, 2.0),
    ]
    with pytest.raises(SpaceError, match=r"no layers"):
        structured.decode(np.zeros(len(structured.genes)))


def test_layers_space_removes_takes_and_merges(family: dict[str, Path]) -> None:
    sp = _space(family, "layers")
    ops = sp.genes[0].name
    assert ops == "L0.op[remove|ft0|ft1|ft2|merge]"
    g = sp.middle()
    g[:3] = [4, 0, 2]  # merge, remove, take ft1
    r = sp.decode(g)
    assert [(s.layer, s.source) for s in r.routing or []] == [(0, None), (2, "ft1")]
    m = plan(r)
    assert m.num_layers == 2
    # layer 2 is copied: its coefficients are canonical, so changing them changes nothing
    i = next(i for i, x in enumerate(sp.genes) if x.name == "ft0.weight.L2")
    g2 = g.copy()
    g2[i] = 0.99
    assert sp.decode(g2).content_hash() == r.content_hash()


def test_combined_space_routes_over_the_merge(family: dict[str, Path]) -> None:
    sp = _space(family, "ps-dfs")
    names = [g.name for g in sp.genes]
    assert any(n.startswith("slot") and ".merged." in n for n in names)
    r = sp.decode(np.ones(len(sp.genes)))
    assert r.method == "dare_ties" and any(s.source is None for s in r.routing or [])


def test_bad_spaces_fail_early(family: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"unknown search space 'nope'.*dare_ties-per-layer"):
        load_space("nope")
    with pytest.raises(SpaceError, match=r"genes\.weight.*bounds are empty"):
        load_space("linear-per-layer", {"genes": {"weight": [0.5, 0.5]}})
    with pytest.raises(SpaceError, match=r"genes\.tau: not a parameter of 'ties'"):
        _space(family, "ties-per-layer", genes={"tau": [0, 1]})
    with pytest.raises(SpaceError, match=r"density=0\.0 is outside \(0\.0, 1\.0\]"):
        _space(family, "ties-per-layer", genes={"density": [0.0, 1.0]})
    with pytest.raises(SpaceError, match=r"fixed\.lambda: also a searched gene"):
        _space(family, "ties-per-layer", genes={"lambda": [0.5, 1.5]})
    with pytest.raises(SpaceError, match=r"models: 'math' is not one of the sources"):
        _space(family, "routing", models=["math"])
    with pytest.raises(SpaceError, match=r"granularity"):
        load_space("linear-per-layer", {"granularity": 0})
    # routing over sources with different depths: named, before any search
    deep = make_model(tmp_path / "deep", 3, num_hidden_layers=4)
    with pytest.raises(SpaceError, match=r"do not fit one search space"):
        SearchSpace(
            load_space("routing"),
            sources={"base": str(family["base"]), "deep": str(deep)},
            base="base",
        )


def test_a_new_kind_is_one_registered_class(family: dict[str, Path]) -> None:
    from typing import Literal

    from evomerge.genes import Gene
    from evomerge.recipe import Recipe
    from evomerge.space import SpaceSpec, register_kind
    from evomerge.space import base as space_base

    with pytest.raises(SpaceError, match=r"kind: 'soup' is not a search space kind.*'routing'"):
        load_space({"kind": "soup"})

    class SoupSpec(SpaceSpec):
        kind: Literal["soup"] = "soup"

    @register_kind("soup", SoupSpec)
    class SoupSpace(SearchSpace):
        def __init__(self, spec: SoupSpec, **kw: object) -> None:
            super().__init__(spec, **kw)  # type: ignore[arg-type]
            self._set_genes([Gene("ft0.weight")])

        def decode(self, genome: np.ndarray) -> Recipe:
            (x,) = self._genome(genome)
            w = {"ft0": float(x[0]), "ft1": 1 - float(x[0])}
            sources = {m: {"path": self.sources[m], "parameters": {"weight": w[m]}} for m in w}
            return self._recipe(method="linear", sources=sources)

        def encode(self, recipe: Recipe) -> np.ndarray:
            return np.asarray([recipe.sources["ft0"].parameters["weight"]])

    try:
        sp = _space(family, {"kind": "soup"})
        assert isinstance(sp, SoupSpace) and sp.encode(sp.decode(np.array([0.3])))[0] == 0.3
    finally:
        space_base._KINDS.pop("soup")

"""A merge method per layer group: recipes with ``layer_methods`` against single-method merges
(ours and mergekit's), their export and round trip, and the ``methods:`` space gene."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from evomerge.checkpoint import ModelSource
from evomerge.errors import RecipeError
from evomerge.merge.materialize import merge_to_dir
from evomerge.mergekit_yaml import to_mergekit
from evomerge.recipe import Recipe
from evomerge.space.base import SearchSpace, SpaceError, load_space

# layer 0 (and so embeddings, final norm, head): ties over ft0, ft1; layer 1: slerp of the base
# toward ft1; layer 2: dare_ties over ft0, ft1
PARAMS: dict[str, Any] = {"lambda": 1.0, "normalize": True, "t": [0.3, 0.7]}
SOURCE_PARAMS = {"weight": [0.4, 0.9], "density": 0.6}


def _sources(family: dict[str, Path]) -> dict[str, Any]:
    return {
        "base": str(family["base"]),
        "ft0": {"path": str(family["ft0"]), "parameters": dict(SOURCE_PARAMS)},
        "ft1": {"path": str(family["ft1"]), "parameters": {"weight": 0.5, "density": 0.8}},
    }


def _mixed(family: dict[str, Path]) -> Recipe:
    return Recipe.from_dict(
        {
            "sources": _sources(family),
            "method": "ties",
            "base": "base",
            "parameters": PARAMS,
            "layer_methods": [
                {"layers": [1, 2], "method": "slerp", "models": ["ft1"]},
                {"layers": [2, 3], "method": "dare_ties"},
            ],
            "seed": 5,
            "dtype": "float32",
        }
    )


def _single(family: dict[str, Path], method: str) -> Recipe:
    """The same merge with one method everywhere, written independently of the mixed recipe."""
    sources = _sources(family)
    params = dict(PARAMS)
    if method == "slerp":
        sources = {"base": sources["base"], "ft1": str(family["ft1"])}
        params = {"t": PARAMS["t"]}
    else:
        del params["t"]
    data = {"sources": sources, "method": method, "base": "base", "parameters": params}
    return Recipe.from_dict({**data, "seed": 5, "dtype": "float32"})


def _state(d: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(f).items()}


def _method_of(layer: int | None) -> str:
    return {None: "ties", 0: "ties", 1: "slerp", 2: "dare_ties"}[layer]


def test_each_group_equals_its_single_method_merge(family: dict[str, Path], tmp_path: Path) -> None:
    mixed = _state(merge_to_dir(_mixed(family), tmp_path / "mixed"))
    refs = {
        m: _state(merge_to_dir(_single(family, m), tmp_path / m))
        for m in ("ties", "slerp", "dare_ties")
    }
    ref = ModelSource(family["base"])
    assert set(mixed) == set(ref.tensors)
    seen = set()
    for name, t in mixed.items():
        m = _method_of(ref.tensors[name].layer)
        seen.add(m)
        assert torch.equal(t, refs[m][name]), (name, m)
        others = [o for o in refs if o != m]
        assert not any(torch.equal(t, refs[o][name]) for o in others), name
    assert seen == {"ties", "slerp", "dare_ties"}


def test_groups_equal_mergekit_where_it_can_merge_them(
    family: dict[str, Path], tmp_path: Path
) -> None:
    """mergekit has one merge_method per config: each deterministic group checks against the
    mergekit merge of its single-method config."""
    pytest.importorskip("mergekit")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    mixed = _state(merge_to_dir(_mixed(family), tmp_path / "mixed"))
    ref = ModelSource(family["base"])
    for m in ("ties", "slerp"):
        out = tmp_path / f"mk-{m}"
        config = MergeConfiguration.model_validate(to_mergekit(_single(family, m)))
        run_merge(config, str(out), MergeOptions(copy_tokenizer=False, quiet=True))
        theirs = _state(out)
        names = [n for n in mixed if _method_of(ref.tensors[n].layer) == m]
        assert names
        for n in names:
            assert torch.allclose(mixed[n], theirs[n], atol=1e-5), (m, n)


def test_mergekit_export_refuses_a_method_per_group_and_accepts_one_method(
    family: dict[str, Path],
) -> None:
    with pytest.raises(RecipeError, match=r"layer_methods\.0.*one merge_method per config"):
        to_mergekit(_mixed(family))
    same = _single(family, "ties").model_copy(
        update={"layer_methods": _mixed(family).layer_methods[:0] or None}
    )
    assert to_mergekit(same)["merge_method"] == "ties"
    redundant = Recipe.from_dict(
        {
            **yaml.safe_load(_single(family, "ties").to_yaml()),
            "layer_methods": [{"layers": [0, 3], "method": "ties"}],
        }
    )
    assert to_mergekit(redundant) == to_mergekit(_single(family, "ties"))


def test_recipe_yaml_round_trip(family: dict[str, Path], tmp_path: Path) -> None:
    r = _mixed(family)
    r.save(tmp_path / "r.yaml")
    back = Recipe.load(tmp_path / "r.yaml")
    assert back == r and back.content_hash() == r.content_hash()
    assert _state(merge_to_dir(back, tmp_path / "a")).keys()


@pytest.mark.parametrize(
    ("layer_methods", "params", "match"),
    [
        (
            [{"layers": [0, 2], "method": "slerp"}, {"layers": [1, 3], "method": "ties"}],
            {},
            "overlap",
        ),
        ([{"layers": [1, 1], "method": "slerp"}], {}, "empty"),
        ([{"layers": [0, 1], "method": "slerp", "models": ["base"]}], {}, "non-base"),
    ],
)
def test_bad_layer_methods_are_refused(
    family: dict[str, Path], layer_methods: list, params: dict, match: str
) -> None:
    with pytest.raises(RecipeError, match=match):
        Recipe.from_dict(
            {
                "sources": _sources(family),
                "method": "ties",
                "base": "base",
                "layer_methods": layer_methods,
            }
        )


def test_plan_refusals_name_the_entry(family: dict[str, Path], tmp_path: Path) -> None:
    data = yaml.safe_load(_mixed(family).to_yaml())
    beyond = {**data, "layer_methods": [{"layers": [2, 5], "method": "slerp", "models": ["ft0"]}]}
    with pytest.raises(RecipeError, match=r"layer_methods\.0\.layers.*3 layers"):
        merge_to_dir(Recipe.from_dict(beyond), tmp_path / "x")
    unread = {**data, "parameters": {**data["parameters"], "gamma": 0.1}}
    with pytest.raises(RecipeError, match="gamma: no method of this recipe reads it"):
        merge_to_dir(Recipe.from_dict(unread), tmp_path / "y")
    two = {**data, "layer_methods": [{"layers": [1, 2], "method": "slerp"}]}  # slerp, 2 models
    with pytest.raises(RecipeError, match="slerp"):
        merge_to_dir(Recipe.from_dict(two), tmp_path / "z")


# -- the space -----------------------------------------------------------------------------------
def _space(family: dict[str, Path], **over: Any) -> SearchSpace:
    spec = load_space("methods-per-layer", over)
    srcs = {k: str(v) for k, v in family.items() if k in ("base", "ft0", "ft1", "ft2")}
    return SearchSpace(spec, sources=srcs, base="base")


def _genome(space: SearchSpace, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array(
        [rng.random() if g.choices is None else rng.integers(g.choices) for g in space.genes],
        dtype=float,
    )


def test_inactive_genes_do_not_change_the_recipe(family: dict[str, Path]) -> None:
    space = _space(family)  # 3 layers, granularity 1: three groups
    names = [g.name for g in space.genes]
    for seed in range(20):
        x = _genome(space, seed)
        r = space.decode(x)
        methods = {g: int(x[names.index(f"L{g}.method[ties|dare_ties|slerp]")]) for g in range(3)}
        y = x.copy()
        rng = np.random.default_rng(1000 + seed)
        moved = 0
        for i, n in enumerate(names):
            g = int(n.split(".L")[1].split(".")[0]) if ".L" in n else None
            param = n.split(".")[1] if n.startswith("ft") else n.split(".")[0]
            if g is None:
                continue
            chosen = ("ties", "dare_ties", "slerp")[methods[g]]
            reads = {
                "ties": {"weight", "density"},
                "dare_ties": {"weight", "density"},
                "slerp": {"t"},
            }[chosen]
            if param not in reads:
                y[i], moved = rng.random(), moved + 1
        partner = [i for i, n in enumerate(names) if ".partner[" in n]
        for i in partner:  # a partner gene is read only by a slerp group
            g = int(names[i][1])
            if methods[g] != 2:
                y[i], moved = float(rng.integers(3)), moved + 1
        assert moved
        assert space.decode(y).content_hash() == r.content_hash()
        back = space.decode(space.encode(r))  # equal up to float rounding of value ↔ unit
        assert (back.method, back.layer_methods) == (r.method, r.layer_methods)
        assert np.allclose(space.encode(back), space.encode(r), atol=1e-12)
        # an active gene does change it
        active = next(i for i, n in enumerate(names) if n.endswith(".method[ties|dare_ties|slerp]"))
        z = x.copy()
        z[active] = (z[active] + 1) % 3
        assert space.decode(z).content_hash() != r.content_hash()


def test_one_method_everywhere_decodes_to_a_plain_recipe(family: dict[str, Path]) -> None:
    space = _space(family)
    names = [g.name for g in space.genes]
    x = _genome(space, 0)
    for i, n in enumerate(names):
        if ".method[" in n:
            x[i] = 0.0  # ties
    r = space.decode(x)
    assert r.method == "ties" and r.layer_methods is None and "t" not in r.parameters
    assert to_mergekit(r)["merge_method"] == "ties"


def test_slerp_groups_pair_the_base_with_the_partner_gene(
    family: dict[str, Path], tmp_path: Path
) -> None:
    space = _space(family)
    names = [g.name for g in space.genes]
    x = _genome(space, 1)
    for i, n in enumerate(names):
        if ".method[" in n:
            x[i] = 2.0  # slerp everywhere
        if n.startswith("L1.partner["):
            x[i] = 2.0  # ft2
    r = space.decode(x)
    assert r.layer_methods is not None
    assert [
        (lm.method, lm.models) for lm in r.layer_methods if lm.layers[0] <= 1 < lm.layers[1]
    ] == [("slerp", ["ft2"])]
    merge_to_dir(r, tmp_path / "o")


def test_space_refusals(family: dict[str, Path]) -> None:
    with pytest.raises(SpaceError, match="requires 't'"):
        _space(family, genes={"weight": [0, 1], "density": [0.1, 1]})
    with pytest.raises(SpaceError, match="smoothing"):
        _space(family, smoothing=True)
    with pytest.raises(SpaceError, match="not among methods"):
        _space(family, method="linear")
    with pytest.raises(SpaceError, match="gamma"):
        _space(family, genes={"gamma": [0, 0.1], "t": [0, 1]})


# -- a search -------------------------------------------------------------------------------------
def test_search_with_methods_runs_and_resumes_exactly(unit_zoo: Path, tmp_path: Path) -> None:

    import optuna
    from unit_experiment import experiment, signal_at, write_experiment

    from evomerge.run import lifecycle as search
    from evomerge.run.run_dir import STUDY_NAME, storage_url

    exp = write_experiment(
        tmp_path, experiment("unit-methods", space="methods-per-layer", budget=9)
    )

    def trace(run: Path) -> list[tuple[str, str, tuple[float, ...] | None]]:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run))
        return [
            (t.user_attrs["hash"], t.system_attrs["evomerge:recipe"], tuple(t.values or ()))
            for t in study.get_trials(deepcopy=False)
        ]

    s, budget = search.start(exp, tmp_path / "a", zoo=unit_zoo)
    assert s.run(budget).status == "finished"
    s, budget = search.start(exp, tmp_path / "b", zoo=unit_zoo)

    assert s.run(budget, on_evaluation=signal_at(5)).status == "interrupted"
    s2, budget2 = search.reopen(tmp_path / "b")
    assert s2.run(budget2).status == "finished"
    ref = trace(tmp_path / "a")
    assert trace(tmp_path / "b") == ref and len(ref) == 9
    recipes = [Recipe.from_dict(yaml.safe_load(e.recipe)) for e in s2.archive.evaluations]
    assert any(r.layer_methods for r in recipes)
    assert {r.method for r in recipes} | {
        lm.method for r in recipes for lm in r.layer_methods or []
    } >= {"ties", "slerp"}
    # export: recipe YAML (same hash), hf (a loadable checkpoint), mergekit (a clear refusal)
    from transformers import AutoModelForCausalLM

    from evomerge.run.export import export

    ev = next(e for e in s2.archive.evaluations if e.values and "layer_methods" in e.recipe)
    mixed = Recipe.from_dict(yaml.safe_load(ev.recipe))
    back = Recipe.load(export(ev, tmp_path / "r.yaml", "recipe"))
    assert back.content_hash() == mixed.content_hash() == ev.recipe_hash
    model = AutoModelForCausalLM.from_pretrained(export(ev, tmp_path / "hf", "hf"))
    assert model.config.num_hidden_layers == 4
    if any(lm.method != mixed.method or lm.models for lm in mixed.layer_methods or []):
        with pytest.raises(RecipeError, match="one merge_method per config"):
            export(ev, tmp_path / "mk.yaml", "mergekit")
        assert not (tmp_path / "mk.yaml").exists()

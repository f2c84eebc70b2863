"""Exports give the model the search scored: the hf checkpoint's logits against the candidate's
as a worker loads it, routed recipes through mergekit's own run_merge tensor by tensor, the
random-mask warning, the weighted choice on the front, no silent overwrite, the user's umask,
and the model card read back."""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import RecipeError
from evomerge.evaluate.hf import HFEngine
from evomerge.evaluate.select import load_candidate
from evomerge.genes import Gene
from evomerge.merge.materialize import open_sources
from evomerge.model_card import front_matter
from evomerge.recipe import Recipe
from evomerge.run.archive import Archive, Evaluation
from evomerge.run.export import export, pick
from evomerge.run.run_dir import open_archive

runner = CliRunner()
TOKENS = torch.tensor([[1, 5, 9, 2, 33, 7, 14, 3], [4, 4, 20, 11, 6, 2, 9, 30]])


@pytest.fixture(scope="module")
def run(unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DARE-TIES search on the unit zoo (random masks: the hard case for exports)."""
    d = tmp_path_factory.mktemp("export-run")
    args = ["demo", "--zoo", str(unit_zoo), "--preset", "unit", "--budget", "8"]
    res = runner.invoke(app, [*args, "--run-dir", str(d / "run"), "--out", str(d / "out")])
    assert res.exit_code == 0, res.output
    return d / "run"


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _state(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@torch.no_grad()
def _candidate_logits(recipe: Recipe, base_dir: Path) -> torch.Tensor:
    """The candidate as a worker holds it: the recipe planned over opened sources and streamed
    into a resident engine's model (no checkpoint written)."""
    engine = HFEngine(base_dir, dtype=torch.float32)
    load_candidate(engine, recipe, sources=open_sources(recipe))
    return engine.model(TOKENS).logits


@torch.no_grad()
def _exported_logits(out: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    return model(TOKENS).logits


def _export(run: Path, out: Path, *args: str) -> object:
    return runner.invoke(app, ["export", str(run), "--out", str(out), *args])


# -- hf: the scored model ----------------------------------------------------------------------
def test_hf_export_has_the_logits_of_the_scored_candidate(
    run: Path, unit_zoo: Path, tmp_path: Path
) -> None:
    archive = open_archive(run)
    ev = pick(archive, knee=True)
    res = _export(run, tmp_path / "hf", "--knee", "--format", "hf")
    assert res.exit_code == 0, res.output
    recipe = Recipe.from_dict(yaml.safe_load(ev.recipe))
    assert recipe.method == "dare_ties"  # random masks: the export must carry the same draws
    want = _candidate_logits(recipe, unit_zoo / "base")
    got = _exported_logits(tmp_path / "hf")
    assert torch.equal(got, want)
    # the recipe written beside it rebuilds the same weights with `evomerge merge`
    res = runner.invoke(
        app,
        [
            "merge",
            str(tmp_path / "hf" / "recipe.yaml"),
            str(tmp_path / "re"),
            "--zoo",
            str(unit_zoo),
        ],
    )
    assert res.exit_code == 0, res.output
    a, b = _state(tmp_path / "hf"), _state(tmp_path / "re")
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


def test_model_card_states_what_was_scored(run: Path, unit_zoo: Path, tmp_path: Path) -> None:
    archive = open_archive(run)
    ev = archive.trial(3)
    out = tmp_path / "card"
    assert _export(run, out, "--trial", "3", "--format", "hf").exit_code == 0
    text = (out / "README.md").read_text()
    meta = front_matter(text)
    assert meta["license"] == "other"  # the zoo's models state none: the card says so
    assert "no source states a license" in text
    assert "base_model" not in meta  # zoo sources have no hub id to name
    evo = meta["evomerge"]
    assert evo["trial"] == 3 and evo["recipe_hash"] == ev.recipe_hash
    assert evo["run"].startswith("zoo-demo-")
    assert evo["version"]
    assert [o["name"] for o in evo["objectives"]] == ["rev9", "shift3", "add1"]
    assert [o["value"] for o in evo["objectives"]] == ev.values
    assert [o["fidelity"] for o in evo["objectives"]] == [
        ev.fidelity[k] for k in archive.objectives
    ]
    assert {o["estimator"] for o in evo["objectives"]} == {"subsample:150"}
    assert {s["name"]: s["ref"] for s in evo["sources"]} == {
        "base": "zoo:base",
        "rev9": "zoo:experts/rev9",
        "shift3": "zoo:experts/shift3",
        "add1": "zoo:experts/add1",
    }
    assert any(
        c.startswith("evomerge export RUN_DIR --trial 3 --format hf --out OUT_DIR")
        for c in evo["reproduce"]
    )
    assert any(c.startswith("evomerge merge recipe.yaml") for c in evo["reproduce"])
    # no directory of this machine: the sources are zoo names, not paths
    for secret in (str(tmp_path), str(unit_zoo), str(run.parent)):
        assert secret not in text and secret not in (out / "recipe.yaml").read_text()
    assert Recipe.from_dict(yaml.safe_load((out / "recipe.yaml").read_text())).method == "dare_ties"
    # the body, for people: scores to 4 decimals, shares of items in %, the base named once
    for name, v in zip(archive.objectives, ev.values, strict=True):
        share = ev.fidelity[name]
        assert f"| {name} | maximize | {v:.4f} |" in text and f"| {share:.0%} |" in text
    assert "| base | `zoo:base`" in text and "base (base)" not in text
    # a usage snippet that loads this very directory; the recipe for reading, rounded
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'path = "card"' in snippet and "from_pretrained(path)" in snippet
    shown = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    exact = yaml.safe_load((out / "recipe.yaml").read_text())
    _assert_rounded(shown, exact)


def _assert_rounded(shown: object, exact: object) -> None:
    """The card's recipe is the exact one with every float to 6 decimals, nothing else changed."""
    if isinstance(exact, float):
        assert isinstance(shown, float) and shown == round(exact, 6)
    elif isinstance(exact, dict):
        assert isinstance(shown, dict) and list(shown) == list(exact)
        for k in exact:
            _assert_rounded(shown[k], exact[k])
    elif isinstance(exact, list):
        assert isinstance(shown, list) and len(shown) == len(exact)
        for a, b in zip(shown, exact, strict=True):
            _assert_rounded(a, b)
    else:
        assert shown == exact


def test_the_knees_card_says_it_is_the_knee_and_compares_it(run: Path, tmp_path: Path) -> None:
    """The demo confirmed its knee (and so the references): the card's comparison is on
    held-out items, each cell recomputed from the archive's and reference_points.json's
    stored scores."""
    from evomerge.run.confirm import confirmations
    from evomerge.run.reference_points import read_reference

    archive = open_archive(run)
    knee = archive.knee()
    assert knee is not None
    (c,) = [c for c in confirmations(archive) if c.trial == knee.number]
    out = tmp_path / "knee"
    assert _export(run, out, "--knee", "--format", "hf").exit_code == 0
    text = (out / "README.md").read_text()
    title = next(line for line in text.splitlines() if line.startswith("# "))
    assert f"trial {knee.number}, the knee" in title
    assert "nearest the ideal point" in text
    table = text.split("## Against the models it was made from", 1)[1].split("\n\n")[1]
    rows = {r.split(" | ")[0].strip("| "): r for r in table.splitlines()[2:]}
    _, points = read_reference(run)
    mine = rows.pop(f"**this model (trial {knee.number})**")
    assert all(f"**{c.scores[n]:.4f}**" in mine for n in archive.objectives)
    assert set(rows) == {p.label for p in points}
    for p in points:
        held = p.confirmed["holdout"]["scores"]
        for name in archive.objectives:
            d = c.scores[name] - held[name]
            assert f"{held[name]:.4f} (Δ {d:+.4f}" in rows[p.label]
    assert "held-out items the search never saw" in text


def test_model_card_of_a_confirmed_trial_states_its_held_out_scores(
    run: Path, tmp_path: Path
) -> None:
    from evomerge.run.confirm import confirmations

    confirmed = {c.trial: c for c in confirmations(open_archive(run))}  # the demo confirms its knee
    knee = open_archive(run).knee()
    assert knee is not None and knee.number in confirmed
    out = tmp_path / "card"
    assert _export(run, out, "--knee", "--format", "hf").exit_code == 0
    objectives = front_matter((out / "README.md").read_text())["evomerge"]["objectives"]
    assert {o["name"]: o["heldout"] for o in objectives} == confirmed[knee.number].scores
    out2 = tmp_path / "unconfirmed"
    other = next(n for n in range(8) if n not in confirmed)
    assert _export(run, out2, "--trial", str(other), "--format", "hf").exit_code == 0
    objectives = front_matter((out2 / "README.md").read_text())["evomerge"]["objectives"]
    assert all(o.get("heldout") is None for o in objectives)


def test_license_and_base_model_from_the_sources_cards(tmp_path: Path) -> None:
    from evomerge import model_card as mc

    for name, lic in (("a", "apache-2.0"), ("b", "apache-2.0"), ("c", "mit")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "README.md").write_text(f"---\nlicense: {lic}\n---\n# {name}\n")
    same = [mc.source_fact(n, f"org/{n}@abc", local_dir=str(tmp_path / n)) for n in "ab"]
    facts = mc.CardFacts(
        recipe_yaml="method: linear\n",
        recipe_hash="h",
        method="linear",
        base="b",
        sources=same,
        objectives=mc.objective_facts(["x"], ["maximize"], [0.5], heldout={"x": 0.4}),
        run="r",
        trial=1,
        version="0",
        commands=["evomerge merge recipe.yaml OUT_DIR"],
    )
    meta = front_matter(mc.render(facts))
    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == ["org/b", "org/a"]  # the base first
    assert meta["base_model_relation"] == "merge"
    assert [s["revision"] for s in meta["evomerge"]["sources"]] == ["abc", "abc"]
    assert meta["evomerge"]["objectives"][0]["heldout"] == 0.4
    mixed = [*same, mc.source_fact("c", str(tmp_path / "c"), local_dir=str(tmp_path / "c"))]
    text = mc.render(facts.__class__(**{**vars(facts), "sources": mixed}))
    assert front_matter(text)["license"] == "other"
    assert "c: mit" in text and "Local paths are paths on the machine" in text


# -- files: no overwrite, atomic, umask --------------------------------------------------------
@pytest.mark.parametrize("fmt", ["recipe", "hf"])
def test_no_overwrite_without_force(run: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "o"
    out.mkdir() if fmt == "hf" else out.write_text("mine\n")
    res = _export(run, out, "--trial", "0", "--format", fmt)
    assert res.exit_code == 2 and f"{out} exists" in res.output and "--force" in res.output
    assert (out.is_dir() and not any(out.iterdir())) if fmt == "hf" else out.read_text() == "mine\n"
    res = _export(run, out, "--trial", "0", "--format", fmt, "--force")
    assert res.exit_code == 0, res.output
    assert (out / "config.json").exists() if fmt == "hf" else "method:" in out.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # no temporary left beside it


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_exported_files_follow_the_umask(run: Path, tmp_path: Path, mask: int) -> None:
    with umask(mask):
        assert _export(run, tmp_path / "hf", "--trial", "1", "--format", "hf").exit_code == 0
        assert _export(run, tmp_path / "r.yaml", "--trial", "1").exit_code == 0
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "hf") == 0o777 & ~mask
    files = [*(tmp_path / "hf").iterdir(), tmp_path / "r.yaml"]
    assert {"model.safetensors", "README.md", "recipe.yaml"} <= {f.name for f in files}
    assert {f.name: mode(f) for f in files} == {f.name: 0o666 & ~mask for f in files}


# -- mergekit: the random-mask warning ---------------------------------------------------------
def test_mergekit_export_of_dare_warns(run: Path, tmp_path: Path) -> None:
    res = _export(run, tmp_path / "mk.yaml", "--knee", "--format", "mergekit")
    assert res.exit_code == 0, res.output
    assert "warning:" in res.stderr and "random masks" in res.stderr
    assert "--format hf" in res.stderr
    text = (tmp_path / "mk.yaml").read_text()
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert any("random masks" in c and "NOT the model evomerge scored" in c for c in comments)
    assert yaml.safe_load(text)["merge_method"] == "dare_ties"
    # a recipe without random masks exports quietly
    ev = Evaluation("h", Recipe.from_dict(_ties(run)).to_yaml(), [], [0.0, 0.0, 0.0], number=0)
    warned: list[str] = []
    export(ev, tmp_path / "ties.yaml", "mergekit", warn=warned.append)
    assert warned == [] and "random masks" not in (tmp_path / "ties.yaml").read_text()


def _ties(run: Path) -> dict:
    knee = yaml.safe_load(pick(open_archive(run), knee=True).recipe)
    return {**knee, "method": "ties"}


# -- --prefer: the weighted choice on the front ------------------------------------------------
def _reference_choice(
    values: list[list[float]], directions: list[str], weights: list[float]
) -> int:
    """Independently: the non-dominated members by brute force, each objective scaled to 0
    (worst on the front) … 1 (best), the largest weighted sum, the earliest on ties."""
    sign = [1.0 if d == "maximize" else -1.0 for d in directions]
    g = [[s * v for s, v in zip(sign, row, strict=True)] for row in values]  # larger is better

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and any(
            x > y for x, y in zip(a, b, strict=True)
        )

    front = [i for i, a in enumerate(g) if not any(dominates(b, a) for b in g)]
    best, best_score = -1, -float("inf")
    for i in front:
        score = 0.0
        for j, w in enumerate(weights):
            col = [g[k][j] for k in front]
            lo, hi = min(col), max(col)
            score += w * ((g[i][j] - lo) / (hi - lo) if hi > lo else 1.0)
        if score > best_score:
            best, best_score = i, score
    return best


def test_prefer_picks_the_best_weighted_front_member(tmp_path: Path) -> None:
    rng = random.Random(0)
    directions = ["maximize", "minimize", "maximize"]
    archive = Archive(
        f"sqlite:///{tmp_path / 'a.db'}",
        objectives=["acc", "ppl", "code"],
        directions=directions,
        genes=[Gene("g")],
        experiment_hash="x",
    )
    values = []
    for i in range(40):
        v = [rng.random(), rng.uniform(2, 9), rng.random() ** 2]
        values.append(v)
        archive.record(Evaluation(f"h{i}", f"method: m{i}\n", [0.5], v))
    assert len(archive.front()) >= 5  # enough members for the weights to matter
    picked = set()
    for w in ([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0.2, 0.5, 0.3], [3, 0, 1]):
        ev = pick(archive, prefer=w)
        assert ev.number == _reference_choice(values, directions, w), w
        picked.add(ev.number)
    assert len(picked) >= 3
    # (1, 0, 0) is the best on the first objective among the front
    assert pick(archive, prefer=[1, 0, 0]).number == pick(archive, best="acc").number


def test_prefer_on_the_command_line(run: Path, tmp_path: Path) -> None:
    archive = open_archive(run)
    values = [e.values if e.ok else None for e in archive.evaluations]
    ok = [i for i, v in enumerate(values) if v is not None]
    for w in ("1,0,0", "0,0,1", "1,2,1"):
        weights = [float(x) for x in w.split(",")]
        want = ok[_reference_choice([values[i] for i in ok], archive.directions, weights)]
        res = _export(run, tmp_path / f"{w}.yaml", "--prefer", w)
        assert res.exit_code == 0, res.output
        assert res.output.startswith(f"trial {want} ")
    res = _export(run, tmp_path / "x.yaml", "--prefer", "1,1")
    assert res.exit_code == 2 and "2 weight(s) for 3 objectives" in res.output
    res = _export(run, tmp_path / "x.yaml", "--prefer", "1,-1,0")
    assert res.exit_code == 2 and ">= 0" in res.output
    res = _export(run, tmp_path / "x.yaml", "--prefer", "1,0,0", "--knee")
    assert res.exit_code == 2 and "exactly one of" in res.output


# -- routed recipes: passthrough slices, checked against mergekit's run_merge ------------------
def _routed(family: dict[str, Path], route: list[dict], emb: str = "base", **kw: object) -> Recipe:
    names = {"base", "ft0", "ft1"}
    return Recipe.from_dict(
        {
            "sources": {
                n: {"path": str(family[n]), "parameters": {"weight": 1.0 if n == emb else 0.0}}
                for n in sorted(names)
            },
            "method": "linear",
            "parameters": {"normalize": True},
            "routing": route,
            **kw,
        }
    )


ROUTES = {
    # scales fold into later layers too; a layer repeated, one dropped; the head from base
    "scaled-repeated": [
        {"layer": 0, "source": "base"},
        {"layer": 1, "source": "ft0", "scale": 0.5},
        {"layer": 2, "source": "ft0"},
        {"layer": 2, "source": "ft1", "scale": 1.7},
        {"layer": 0, "source": "base", "scale": 0.9},
    ],
    # consecutive layers of one model become one slice
    "runs": [
        {"layer": 0, "source": "base"},
        {"layer": 1, "source": "base"},
        {"layer": 1, "source": "ft1"},
        {"layer": 2, "source": "ft1"},
        {"layer": 2, "source": "base"},
    ],
    "shallower": [{"layer": 0, "source": "base", "scale": 2.0}, {"layer": 2, "source": "base"}],
    # the embeddings, norm and head from base, which neither the first nor the last slot uses
    "lent": [
        {"layer": 0, "source": "ft1"},
        {"layer": 1, "source": "ft0", "scale": 0.5},
        {"layer": 1, "source": "ft1"},
        {"layer": 2, "source": "ft0", "scale": 1.3},
    ],
    # one slice, both ends lent
    "one-slot": [{"layer": 1, "source": "ft0", "scale": 0.7}],
}


def _run_mergekit(config: dict, out: Path) -> dict[str, torch.Tensor]:
    pytest.importorskip("mergekit", reason="mergekit not installed (dev extra)")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(
        MergeConfiguration.model_validate(config),
        str(out),
        MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True),
    )
    return _state(out)


@pytest.mark.parametrize("case", sorted(ROUTES))
def test_routed_recipe_through_mergekit_is_the_same_model(
    case: str, family: dict[str, Path], tmp_path: Path
) -> None:
    recipe = _routed(family, ROUTES[case])
    ev = Evaluation(recipe.content_hash(), recipe.to_yaml(), [], [0.0], number=0)
    warned: list[str] = []
    export(ev, tmp_path / "mk.yaml", "mergekit", warn=warned.append)
    assert warned == []
    text = (tmp_path / "mk.yaml").read_text()
    config = yaml.safe_load(text)
    lent = case in ("lent", "one-slot")
    assert config["merge_method"] == ("linear" if lent else "passthrough")
    if case == "runs":
        assert [s["sources"][0]["layer_range"] for s in config["slices"]] == [
            [0, 2],
            [1, 3],
            [2, 3],
        ]
    theirs = _run_mergekit(config, tmp_path / "mk")
    export(ev, tmp_path / "hf", "hf")
    ours = _state(tmp_path / "hf")
    assert set(ours) == set(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    # and the exported checkpoint is the candidate a worker scores
    assert torch.equal(_exported_logits(tmp_path / "hf"), _candidate_logits(recipe, family["base"]))


def test_routed_exports_mergekit_cannot_make_exactly_are_refused(
    family: dict[str, Path], tmp_path: Path
) -> None:
    from evomerge.mergekit_yaml import to_mergekit

    r = _routed(family, [{"layer": 0, "source": "base"}, {"layer": 1, "source": "ft0"}])
    # a slot merged across sources is no passthrough slice
    merged = Recipe.from_dict(
        {
            "sources": {n: str(family[n]) for n in ("base", "ft0")},
            "method": "task_arithmetic",
            "base": "base",
            "parameters": {"weight": 0.5},
            "routing": [{"layer": 0, "source": "base"}, {"layer": 1}],
        }
    )
    with pytest.raises(RecipeError, match=r"slot 1 merges layer 1.*--format hf"):
        to_mergekit(merged)
    # embeddings averaged across sources: not a copy of one model
    avg = r.model_copy(
        update={
            "sources": {
                n: s.model_copy(update={"parameters": {"weight": 0.5}})
                for n, s in r.sources.items()
            },
            "routing": [r.routing[0]],  # type: ignore[index]
        }
    )
    with pytest.raises(RecipeError, match=r"merged by 'linear' across sources"):
        to_mergekit(avg)
    ev = Evaluation("h", merged.to_yaml(), [], [0.0], number=0)
    with pytest.raises(RecipeError):
        export(ev, tmp_path / "x.yaml", "mergekit")
    assert not (tmp_path / "x.yaml").exists()


def test_routed_qwen2_with_tied_embeddings_through_mergekit(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The second family: q/k/v biases and no lm_head (tied), the head's source the last slice's."""
    from models import make_family

    fam = make_family(
        tmp_path_factory.mktemp("qwen2"), model_type="qwen2", tie_word_embeddings=True
    )
    route = [
        {"layer": 0, "source": "ft1"},
        {"layer": 1, "source": "ft0", "scale": 0.5},
        {"layer": 2, "source": "ft1", "scale": 1.7},
    ]
    recipe = _routed(fam, route, emb="ft1")
    ev = Evaluation(recipe.content_hash(), recipe.to_yaml(), [], [0.0], number=0)
    warned: list[str] = []
    export(ev, tmp_path / "mk.yaml", "mergekit", warn=warned.append)
    assert warned == []  # same depth: the config's layer_types still fit
    theirs = _run_mergekit(yaml.safe_load((tmp_path / "mk.yaml").read_text()), tmp_path / "mk")
    export(ev, tmp_path / "hf", "hf")
    ours = _state(tmp_path / "hf")
    assert "lm_head.weight" not in ours and set(ours) == set(theirs)
    assert all(torch.equal(ours[n], theirs[n]) for n in ours)

    deeper = _routed(fam, [*route, route[0]], emb="ft1")
    ev = Evaluation(deeper.content_hash(), deeper.to_yaml(), [], [0.0], number=0)
    export(ev, tmp_path / "deeper.yaml", "mergekit", warn=warned.append)
    assert len(warned) == 1 and "layer_types" in warned[0] and "--format hf" in warned[0]
    assert "# WARNING: the route has 4 layers" in (tmp_path / "deeper.yaml").read_text()

"""Sources with different vocabularies (``tokenizer_source``): tensors and tokenizer against
mergekit's ``run_merge`` on a zoo pair whose tokenizers differ by a few added tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from evomerge.errors import RecipeError
from evomerge.merge.materialize import merge_to_dir
from evomerge.mergekit_yaml import from_mergekit, to_mergekit
from evomerge.recipe import Recipe
from evomerge.zoo.added_tokens import with_added_tokens

NEW = ["<|im_start|>", "<|im_end|>", "é"]


@pytest.fixture(scope="module")
def pair(unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The unit zoo's base and add1, rev9 with three added tokens, and shift3 with the same three
    (so a token can be missing from the base but held by two models)."""
    d = tmp_path_factory.mktemp("vocab")
    return {
        "base": unit_zoo / "base",
        "add1": unit_zoo / "experts" / "add1",
        "rev9x": with_added_tokens(unit_zoo / "experts" / "rev9", d / "rev9x", NEW, seed=1),
        "shift3x": with_added_tokens(unit_zoo / "experts" / "shift3", d / "shift3x", NEW, seed=2),
    }


def _recipe(pair: dict[str, Path], models: list[str], **kw: object) -> Recipe:
    weights = {"add1": 0.5, "rev9x": 0.8, "shift3x": 0.6}
    sources: dict[str, object] = {"base": str(pair["base"])}
    for m in models:
        sources[m] = {"path": str(pair[m]), "parameters": {"weight": weights[m], "density": 0.6}}
    return Recipe.from_dict(
        {"sources": sources, "method": "ties", "base": "base", "dtype": "float32", **kw}
    )


def _state(d: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_unequal_vocabularies_without_tokenizer_source_are_refused(
    pair: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(RecipeError) as e:
        merge_to_dir(_recipe(pair, ["add1", "rev9x"]), tmp_path / "o")
    msg = str(e.value)
    assert "tokenizer_source" in msg and "rev9x" in msg and ": 47" in msg and ": 44" in msg


@pytest.mark.parametrize(
    ("models", "tokenizer_source"),
    [
        (["add1", "rev9x"], "base"),
        (["add1", "rev9x"], "union"),
        (["add1", "rev9x"], "rev9x"),
        (["rev9x", "shift3x"], "union"),  # new tokens held by two models: their mean row
        (["add1", "rev9x", "shift3x"], "union"),
    ],
)
def test_same_tensors_and_tokenizer_as_mergekit(
    pair: dict[str, Path], tmp_path: Path, models: list[str], tokenizer_source: str
) -> None:
    pytest.importorskip("mergekit")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    recipe = _recipe(pair, models, tokenizer_source=tokenizer_source)
    ours_dir = merge_to_dir(recipe, tmp_path / "ours")
    config = to_mergekit(recipe)
    expected = "base" if tokenizer_source == "base" else tokenizer_source
    assert config["tokenizer_source"] in (expected, str(pair.get(tokenizer_source, "")))
    run_merge(
        MergeConfiguration.model_validate(config),
        str(tmp_path / "mk"),
        MergeOptions(write_model_card=False, quiet=True),
    )
    ours, theirs = _state(ours_dir), _state(tmp_path / "mk")
    assert set(ours) == set(theirs)
    size = {"base": 44}.get(tokenizer_source, 47)
    assert ours["model.embed_tokens.weight"].shape[0] == size
    for name in ours:
        diff = (ours[name] - theirs[name].float()).abs().max().item()
        assert diff <= 1e-5, f"{name} differs by {diff}"
    mine = AutoTokenizer.from_pretrained(ours_dir)
    ref = AutoTokenizer.from_pretrained(tmp_path / "mk")
    assert mine.get_vocab() == ref.get_vocab() and len(mine) == size
    text = "<|im_start|>ab=é<|im_end|>"
    assert mine(text)["input_ids"] == ref(text)["input_ids"]
    for d in (ours_dir, tmp_path / "mk"):
        assert json.loads((d / "config.json").read_text())["vocab_size"] == size


def test_rows_follow_mergekit_rules_by_formula(pair: dict[str, Path], tmp_path: Path) -> None:
    """Independently of mergekit: with union, a token only rev9x has takes rev9x's row in every
    input, so the merge of identical rows is that row (TIES of equal task vectors)."""
    recipe = _recipe(pair, ["add1", "rev9x"], tokenizer_source="union")
    out = _state(merge_to_dir(recipe, tmp_path / "o"))
    src = _state(pair["rev9x"])
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        for i in range(44, 47):
            assert torch.allclose(out[name][i], src[name][i], atol=1e-6), (name, i)


def test_tokenizer_source_round_trips_through_yaml_and_mergekit(pair: dict[str, Path]) -> None:
    for tok in ("union", "base", "rev9x"):
        r = _recipe(pair, ["add1", "rev9x"], tokenizer_source=tok)
        assert Recipe.from_dict(__import__("yaml").safe_load(r.to_yaml())) == r
        back = from_mergekit(to_mergekit(r))
        assert back.tokenizer_source is not None, tok  # never dropped
        if tok == "rev9x":  # a source: mergekit names it by its path
            assert back.sources[back.tokenizer_source].path == r.sources[tok].path
        else:
            assert back.tokenizer_source == tok


@pytest.mark.parametrize(
    ("value", "match"),
    [("nope", "neither 'base', 'union' nor"), ("union", None)],
)
def test_tokenizer_source_values(pair: dict[str, Path], value: str, match: str | None) -> None:
    if match is None:
        assert _recipe(pair, ["add1"], tokenizer_source=value).tokenizer_source == value
    else:
        with pytest.raises(RecipeError, match=match):
            _recipe(pair, ["add1"], tokenizer_source=value)


def _union_run(pair: dict[str, Path], tmp_path: Path, **changes: object) -> Path:
    """An experiment file searching base, add1 and rev9x with the union vocabulary."""
    from unit_experiment import experiment, write_experiment

    data = experiment(
        "unit-vocab",
        sources={n: str(pair[n]) for n in ("base", "add1", "rev9x")},
        tokenizer_source="union",
        objectives=[
            {"task": "rev9", "estimator": "subsample:8"},
            {"task": "add1", "estimator": "subsample:8"},
        ],
        budget=6,
    )
    return write_experiment(tmp_path, data, **changes)


def test_search_with_tokenizer_source_scores_the_exported_model(
    pair: dict[str, Path], unit_zoo: Path, tmp_path: Path
) -> None:
    """A search over sources with different vocabularies: it resumes exactly, every candidate is
    a union-vocabulary merge, and the checkpoint exported from the archive scores as recorded
    (the resident engine held the merges' vocabulary)."""

    import optuna
    import yaml
    from unit_experiment import signal_at

    from evomerge.evaluate.estimators import make_estimator
    from evomerge.evaluate.hf import HFEngine
    from evomerge.evaluate.scoring import score_task
    from evomerge.evaluate.tasks import load_task
    from evomerge.run import lifecycle as search
    from evomerge.run.run_dir import STUDY_NAME, storage_url

    exp = _union_run(pair, tmp_path)

    def trace(run: Path) -> list[tuple[str, tuple[float, ...]]]:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run))
        return [(t.user_attrs["hash"], tuple(t.values or ())) for t in study.get_trials()]

    s, budget = search.start(exp, tmp_path / "a", zoo=unit_zoo)
    assert s.run(budget).status == "finished"
    s, budget = search.start(exp, tmp_path / "b", zoo=unit_zoo)

    assert s.run(budget, on_evaluation=signal_at(2)).status == "interrupted"
    s2, budget2 = search.reopen(tmp_path / "b")
    s2.run(budget2)
    assert trace(tmp_path / "b") == trace(tmp_path / "a") and len(trace(tmp_path / "a")) == 6
    evs = [e for e in s2.archive.evaluations if e.values]
    assert len(evs) == 6
    best = max(evs, key=lambda e: sum(e.values or ()))
    recipe = Recipe.from_dict(yaml.safe_load(best.recipe))
    assert recipe.tokenizer_source == "union"
    out = merge_to_dir(recipe, tmp_path / "best")
    engine = HFEngine(out)
    assert len(engine.tokenizer) == 47
    for name, recorded in zip(["rev9", "add1"], best.values or (), strict=True):
        task = load_task(name, zoo=unit_zoo)
        est = make_estimator("subsample:8", 3)
        ids = est.select(task.item_ids)
        value = est.estimate(score_task(engine, task, ids).scores, task.item_ids).value
        assert value == pytest.approx(recorded, abs=1e-9)


def test_confirming_a_run_over_different_vocabularies_scores_the_merges_vocabulary(
    pair: dict[str, Path], unit_zoo: Path, tmp_path: Path
) -> None:
    """``evomerge confirm`` opens the engine the search's worker had (the union vocabulary, not
    the base's 44 rows): a confirmed trial's held-out score equals its exported checkpoint's,
    scored on those items through a fresh engine."""
    import yaml

    from evomerge.evaluate.hf import HFEngine
    from evomerge.evaluate.scoring import score_task
    from evomerge.evaluate.tasks import load_task
    from evomerge.run import lifecycle as search
    from evomerge.run.confirm import confirm

    exp = _union_run(
        pair,
        tmp_path,
        name="unit-vocab-confirm",
        space_options={"granularity": 4},
        objectives=[{"task": "rev9", "estimator": "subsample:8"}],
        optimizer={"name": "random"},
        holdout=0.25,
        budget=2,
        seed=5,
    )
    s, budget = search.start(exp, tmp_path / "run", zoo=unit_zoo)
    try:
        s.run(budget)
        held = next(ob.held_out for ob in s.worker.objectives)
        recipe = Recipe.from_dict(yaml.safe_load(s.archive.trial(1).recipe))
    finally:
        s.close()
    [c] = confirm(tmp_path / "run", trials=[1], zoo=unit_zoo)
    engine = HFEngine(merge_to_dir(recipe, tmp_path / "trial1"))
    assert len(engine.tokenizer) == 47
    scores = score_task(engine, load_task("rev9", zoo=unit_zoo), list(held)).scores
    assert c.scores["rev9"] == pytest.approx(sum(scores.values()) / len(scores), abs=1e-9)

"""The hostile-input corpus (tests/corpus/): every file, run through the command that reads it,
gives one line naming the file (and the key at fault), exit code 2, no traceback, and leaves
nothing behind (no output directory, no run directory). Checkpoint cases that need links out of
their directory are made here; the rest are committed, each a few hundred bytes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evomerge.cli import app

CORPUS = Path(__file__).resolve().parent / "corpus"
runner = CliRunner()

# the key (or phrase) each error must name, beyond the file itself
EXPECT: dict[str, str] = {
    "recipes/empty.yaml": "mapping",
    "recipes/not_utf8.yaml": "UTF-8",
    "recipes/unknown_key.yaml": "bogus",
    "recipes/missing_method.yaml": "method",
    "recipes/nan_weight.yaml": "weight",
    "recipes/inf_lambda.yaml": "lambda",
    "recipes/negative_density.yaml": "density",
    "recipes/huge_density.yaml": "density",
    "recipes/duplicate_source.yaml": "duplicate key 'a'",
    "recipes/sources_list.yaml": "sources",
    "recipes/per_layer_wrong_length.yaml": "per_layer",
    "recipes/routing_negative_layer.yaml": "routing.0.layer",
    "recipes/routing_layer_out_of_range.yaml": "routing",
    "recipes/routing_scale_nan.yaml": "routing.0.scale",
    "recipes/unknown_method.yaml": "frobnicate",
    "recipes/base_not_a_source.yaml": "base",
    "recipes/missing_source_dir.yaml": "source 'a'",
    "recipes/malformed_yaml.yaml": "malformed YAML",
    "recipes/top_level_list.yaml": "mapping",
    "recipes/bad_dtype.yaml": "dtype",
    "recipes/string_weight.yaml": "weight",
    "recipes/alias_bomb.yaml": "aliases",
    "recipes/seed_huge.yaml": "seed",
    "recipes/parameters_not_mapping.yaml": "parameters",
    "mergekit/models_not_list.yaml": "models",
    "mergekit/model_entries_strings.yaml": "models.0",
    "mergekit/slices_without_sources.yaml": "slices.0",
    "mergekit/layer_range_short.yaml": "layer_range",
    "mergekit/unknown_key.yaml": "frobnicate",
    "mergekit/lora_reference.yaml": "LoRA",
    "mergekit/weight_strings.yaml": "weight",
    "mergekit/parameters_not_mapping.yaml": "parameters",
    "mergekit/duplicate_keys.yaml": "duplicate key 'models'",
    "experiments/empty.yaml": "mapping",
    "experiments/not_utf8.yaml": "UTF-8",
    "experiments/unknown_key.yaml": "budgett",
    "experiments/negative_budget.yaml": "budget",
    "experiments/infinite_budget.yaml": "budget",
    "experiments/nan_weight.yaml": "weight",
    "experiments/duplicate_sources.yaml": "duplicate key 'base'",
    "experiments/base_not_a_source.yaml": "base",
    "experiments/objective_two_kinds.yaml": "objectives.0",
    "experiments/unknown_task.yaml": "nope",
    "experiments/unknown_optimizer.yaml": "nope",
    "experiments/bad_optimizer_option.yaml": "pop_size",
    "experiments/unknown_space.yaml": "nope",
    "experiments/missing_source_dir.yaml": "rev9",
    "experiments/unknown_space_option.yaml": "bogus",
    "experiments/bad_estimator.yaml": "subsample:-3",
    "experiments/sources_list.yaml": "sources",
    "experiments/huge_threads.yaml": "threads",
    "experiments/hub_id_missing.yaml": "no-such-org/no-such-model",
    "spaces/empty.yaml": "mapping",
    "spaces/unknown_kind.yaml": "teleport",
    "spaces/unknown_key.yaml": "bogus",
    "spaces/granularity_negative.yaml": "granularity",
    "spaces/granularity_huge.yaml": "granularity",
    "spaces/unknown_method.yaml": "frobnicate",
    "spaces/bounds_inverted.yaml": "weight",
    "spaces/bounds_nan.yaml": "weight",
    "spaces/not_utf8.yaml": "UTF-8",
    "tasks/empty.yaml": "mapping",
    "tasks/unknown_kind.yaml": "kind",
    "tasks/metric_mismatch.yaml": "metric",
    "tasks/items_missing.yaml": "nope.jsonl",
    "tasks/bad_regex.yaml": "extract",
    "tasks/bad_prompt_template.yaml": "prompt",
    "tasks/prompt_field_missing.yaml": "nope",
    "tasks/max_new_tokens_negative.yaml": "max_new_tokens",
    "tasks/items_not_utf8.yaml": "UTF-8",
    "tasks/items_bad_json.yaml": "bad.jsonl:2",
    "tasks/items_not_objects.yaml": "lists.jsonl:1",
    "tasks/items_absolute_escape.yaml": "items.jsonl",
    "tasks/nan_field.yaml": "higher_is_better",
    "checkpoints/pickle_only": "pickle",
    "checkpoints/remote_code": "auto_map",
    "checkpoints/header_bomb": "header",
    "checkpoints/truncated_safetensors": "model.safetensors",
    "checkpoints/empty_safetensors": "model.safetensors",
    "checkpoints/config_not_json": "config.json",
    "checkpoints/config_list": "config.json",
    "checkpoints/config_not_utf8": "config.json",
    "checkpoints/config_missing": "config.json",
    "checkpoints/layer_count_mismatch": "num_hidden_layers",
    "checkpoints/index_escapes_dir": "weight_map",
    "checkpoints/index_weight_map_list": "weight_map",
    "checkpoints/index_not_json": "model.safetensors.index.json",
    "checkpoints/no_weights": "safetensors",
    "made/weights_link_out": "outside",
    "made/shard_link_out": "outside",
    "made/config_link_to_dir": "config.json",
}
_DATA = {"tasks/items.jsonl", "tasks/not_utf8.jsonl", "tasks/bad.jsonl", "tasks/lists.jsonl"}


def _committed() -> list[str]:
    out = []
    for kind in ("recipes", "mergekit", "experiments", "spaces", "tasks"):
        out += [f"{kind}/{p.name}" for p in sorted((CORPUS / kind).iterdir())]
    out += [f"checkpoints/{p.name}" for p in sorted((CORPUS / "checkpoints").iterdir())]
    return [c for c in out if c not in _DATA]


def test_every_corpus_file_has_an_expectation() -> None:
    cases = _committed()
    assert sorted(cases) == sorted(k for k in EXPECT if not k.startswith("made/"))
    files = [p for p in CORPUS.rglob("*") if p.is_file()]
    assert len(files) >= 40
    assert max(p.stat().st_size for p in files) < 4096  # small files only


def _made(root: Path, name: str, unit_zoo: Path) -> Path:
    """Checkpoints whose files lead outside their directory (links made here, not committed)."""
    outside = root / "outside"
    outside.mkdir(exist_ok=True)
    shutil.copy(unit_zoo / "base" / "model.safetensors", outside / "w.safetensors")
    d = root / name
    d.mkdir()
    shutil.copy(unit_zoo / "base" / "config.json", d / "config.json")
    if name == "weights_link_out":
        os.symlink(outside / "w.safetensors", d / "model.safetensors")
    elif name == "shard_link_out":
        os.symlink(outside / "w.safetensors", d / "model-00001-of-00001.safetensors")
    else:  # config.json is a directory
        (d / "config.json").unlink()
        (d / "config.json").mkdir()
        shutil.copy(unit_zoo / "base" / "model.safetensors", d / "model.safetensors")
    return d


def _command(case: str, path: Path, unit_zoo: Path, work: Path) -> tuple[list[str], Path]:
    """The CLI call that reads ``path`` and what it must not leave behind."""
    zoo = ["--zoo", str(unit_zoo)]
    kind = case.split("/")[0]
    out = work / "out"
    if kind in ("recipes", "mergekit"):
        return ["merge", str(path), str(out), *zoo], out
    if kind in ("checkpoints", "made"):
        recipe = work / "recipe.yaml"
        recipe.write_text(f"method: linear\nsources:\n  a: {path}\n")
        return ["merge", str(recipe), str(out)], out
    if kind == "experiments":
        return ["run", str(path), "--run-dir", str(out), *zoo], out
    if kind == "spaces":
        srcs = ["--source", "base=zoo:base", "--source", "rev9=zoo:experts/rev9"]
        return ["space", "show", str(path), *srcs, "--base", "base", *zoo], out
    assert kind == "tasks"
    return ["eval", str(unit_zoo / "base"), "--task", str(path), *zoo], out


@pytest.mark.parametrize("case", sorted(EXPECT))
def test_hostile_input_is_one_clear_line(
    case: str, unit_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    if case.startswith("made/"):
        path = _made(tmp_path, case.split("/")[1], unit_zoo)
    else:
        path = CORPUS / case
    args, out = _command(case, path, unit_zoo, work)
    before = sorted(p.name for p in work.iterdir())
    res = runner.invoke(app, args)
    text = res.output.strip()
    assert res.exit_code == 2, f"{case}: exit {res.exit_code}\n{text}\n{res.exception!r}"
    assert "Traceback" not in text and len(text.splitlines()) == 1, f"{case}:\n{text}"
    assert text.startswith("error:"), text
    named = path.name if case.startswith(("checkpoints", "made")) else str(path)
    assert named in text, f"{case}: the error does not name {named}:\n{text}"
    assert EXPECT[case] in text, f"{case}: the error does not name {EXPECT[case]!r}:\n{text}"
    assert not out.exists() and sorted(p.name for p in work.iterdir()) == before, case

"""The command line on the unit zoo: merge (both config formats), convert, and error exits."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from evomerge.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _is_the_merge(d: Path, config: Path, zoo: Path) -> None:
    """transformers loads the written checkpoint, and every parameter is the tensor the
    in-memory merge of the same config makes (the writer, sharding and config are checked)."""
    from evomerge.merge.materialize import materialize, plan
    from evomerge.mergekit_yaml import load_any

    model = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    want = dict(materialize(plan(load_any(config).with_zoo(zoo))))
    got = model.state_dict()
    assert set(want) <= set(got)
    for name, t in want.items():
        assert torch.equal(got[name], t.to(got[name].dtype)), name
    ids = torch.tensor([tok("rev:abcde=")["input_ids"]])
    assert torch.isfinite(model(ids).logits).all()


def test_merge_recipe_and_mergekit_yaml(unit_zoo: Path, tmp_path: Path) -> None:
    for name in ("zoo-dare-ties.yaml", "zoo-ties.mergekit.yaml"):
        out = tmp_path / name
        res = runner.invoke(
            app, ["merge", str(ROOT / "experiments" / name), str(out), "--zoo", str(unit_zoo)]
        )
        assert res.exit_code == 0, res.output
        _is_the_merge(out, ROOT / "experiments" / name, unit_zoo)


def test_convert_to_mergekit(unit_zoo: Path) -> None:
    res = runner.invoke(
        app,
        [
            "convert",
            str(ROOT / "experiments" / "zoo-dare-ties.yaml"),
            "--to",
            "mergekit",
            "--zoo",
            str(unit_zoo),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "merge_method: dare_ties" in res.output and "filter: self_attn" in res.output


def test_errors_exit_cleanly(unit_zoo: Path, tmp_path: Path) -> None:
    out = tmp_path / "exists"
    out.mkdir()
    res = runner.invoke(
        app,
        [
            "merge",
            str(ROOT / "experiments" / "zoo-dare-ties.yaml"),
            str(out),
            "--zoo",
            str(unit_zoo),
        ],
    )
    assert res.exit_code == 2 and "exists" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: ties\nsources: {a: x}\nparameters: {density: [")
    res = runner.invoke(app, ["merge", str(bad), str(tmp_path / "o")])
    assert res.exit_code == 2 and "malformed YAML" in res.output


def test_eval_full_and_estimated(unit_zoo: Path, tmp_path: Path, monkeypatch) -> None:
    import evomerge.evaluate.calibrate as cal

    monkeypatch.setattr(cal, "CACHE_DIR", tmp_path / "cal")
    model = str(unit_zoo / "experts" / "rev9")
    first = runner.invoke(
        app, ["eval", model, "--task", "rev9", "--task", "add1-exact", "--zoo", str(unit_zoo)]
    )
    assert first.exit_code == 0, first.output
    assert "200/200" in first.output and "exact_match" in first.output
    args = [
        "eval",
        model,
        "--task",
        "rev9",
        "--zoo",
        str(unit_zoo),
        "--estimator",
        "anchor:20",
        "--calibration-merges",
        "2",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "20/200" in res.output
    assert list((tmp_path / "cal").glob("*.npz"))  # cached for the next run
    # the scores themselves, through a fresh engine on the model alone (the command's engine
    # held the calibration models before it took the model back)
    from evomerge.evaluate.calibrate import build_calibration, calibration_models, zoo_models
    from evomerge.evaluate.estimators import make_estimator
    from evomerge.evaluate.hf import HFEngine
    from evomerge.evaluate.scoring import score_task
    from evomerge.evaluate.tasks import load_task

    fresh, task = HFEngine(model), load_task("rev9", zoo=unit_zoo)
    full = score_task(fresh, task).scores
    est = make_estimator("anchor:20", 0)
    models = calibration_models(zoo_models(unit_zoo), base="base")
    est.calibrate(build_calibration(fresh, task, models, n_merges=2, seed=0))  # the cached one
    anchored = est.estimate(
        score_task(fresh, task, est.select(task.item_ids)).scores, task.item_ids
    )
    assert f"{anchored.value:.4f}" in res.output
    assert f"{sum(full.values()) / len(full):.4f}" in first.output
    res = runner.invoke(app, ["eval", model, "--task", "nope", "--zoo", str(unit_zoo)])
    assert res.exit_code == 2 and "unknown task" in res.output


def test_max_shard_size_reads_hugging_face_units(unit_zoo: Path, tmp_path: Path) -> None:
    from evomerge.cli.app import parse_size as _parse_size

    assert _parse_size("5GB") == 5 * 10**9  # decimal, as save_pretrained writes shards
    assert _parse_size("5GiB") == 5 * 2**30
    assert _parse_size("500MB") == 500 * 10**6
    assert _parse_size("1048576") == 2**20
    recipe = str(ROOT / "experiments" / "zoo-dare-ties.yaml")
    for bad in ("5XB", "1.5GB", "0MB", "-5GB", "lots"):
        out = tmp_path / f"o-{bad}"
        res = runner.invoke(
            app, ["merge", recipe, str(out), "--zoo", str(unit_zoo), "--max-shard-size", bad]
        )
        assert res.exit_code == 2, (bad, res.output)
        assert "--max-shard-size" in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert not out.exists()
    out = tmp_path / "sharded"
    res = runner.invoke(
        app, ["merge", recipe, str(out), "--zoo", str(unit_zoo), "--max-shard-size", "200KB"]
    )
    assert res.exit_code == 0, res.output
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert all(p.stat().st_size <= 200_000 + 4096 for p in shards[:-1])  # 10³, not 2¹⁰


def test_debug_option_shows_the_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: ties\nsources: {a: x}\nparameters: {density: [")
    res = runner.invoke(app, ["merge", str(bad), str(tmp_path / "o")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    res = runner.invoke(app, ["--debug", "merge", str(bad), str(tmp_path / "o")])
    assert res.exit_code != 0 and type(res.exception).__name__ == "RecipeError"


def test_boolean_options_read_as_flags_in_help() -> None:
    """Every boolean option of every command, --help included, shows as a flag, with no value
    type."""
    import typer.main

    group = typer.main.get_command(app)
    commands = []
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        commands += [[name, sub] for sub in subs] if subs else [[name]]
    flags = 0
    for words in [[], *commands]:
        res = runner.invoke(app, [*words, "--help"], env={"COLUMNS": "120"})
        assert res.exit_code == 0, (words, res.output)
        assert "<bool>" not in res.output, (words, res.output)
        assert "--help" in res.output
        flags += res.output.count("--json") + res.output.count("--force")
    assert flags >= 3  # the commands' flags were seen: front --json, zoo build / export --force

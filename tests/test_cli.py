"""The command line on the unit zoo: merge (both config formats), convert, and error exits."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from evomerge.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _generates(d: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    ids = torch.tensor([tok("rev:abcde=")["input_ids"]])
    out = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_merge_recipe_and_mergekit_yaml(unit_zoo: Path, tmp_path: Path) -> None:
    for name in ("zoo-dare-ties.yaml", "zoo-ties.mergekit.yaml"):
        out = tmp_path / name
        res = runner.invoke(
            app, ["merge", str(ROOT / "experiments" / name), str(out), "--zoo", str(unit_zoo)]
        )
        assert res.exit_code == 0, res.output
        _generates(out)


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
    import evomerge.calibrate as cal

    monkeypatch.setattr(cal, "CACHE_DIR", tmp_path / "cal")
    model = str(unit_zoo / "experts" / "rev9")
    res = runner.invoke(
        app, ["eval", model, "--task", "rev9", "--task", "add1-exact", "--zoo", str(unit_zoo)]
    )
    assert res.exit_code == 0, res.output
    assert "200/200" in res.output and "exact_match" in res.output
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
    res = runner.invoke(app, ["eval", model, "--task", "nope", "--zoo", str(unit_zoo)])
    assert res.exit_code == 2 and "unknown task" in res.output

"""The search commands end to end on the unit zoo: demo, status, front, export, space show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.recipe import Recipe

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_run(unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("demo")
    res = runner.invoke(
        app,
        [
            "demo",
            "--zoo",
            str(unit_zoo),
            "--preset",
            "unit",
            "--run-dir",
            str(d / "run"),
            "--out",
            str(d / "out"),
            "--budget",
            "8",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "Pareto front" in res.output and "members on the front" in res.output
    # it ends with the knee on held-out items, where its recipe went, and what to run next
    tail = res.output[res.output.index("The knee on items the search never saw") :]
    assert f"recipe → {d / 'out' / 'recipe.yaml'}" in tail
    assert all(f"evomerge {cmd} {d / 'run'}" in tail for cmd in ("front", "report", "export"))
    Recipe.load(d / "out" / "recipe.yaml")  # the exported knee is a valid recipe
    return d / "run"


def test_status_and_front(demo_run: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["status", str(demo_run)])
    assert res.exit_code == 0, res.output
    assert "8 of 8" in res.output and "best rev9" in res.output
    res = runner.invoke(app, ["front", str(demo_run), "--json"])
    data = json.loads(res.output)
    assert data["objectives"] == ["rev9", "shift3", "add1"]
    assert data["front"] and sum(r["knee"] for r in data["front"]) == 1
    for ext in ("png", "html"):
        res = runner.invoke(app, ["front", str(demo_run), "--plot", str(tmp_path / f"f.{ext}")])
        assert res.exit_code == 0, res.output
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "f.html").read_text()
    assert "Plotly.newPlot" in page and '<script charset="utf-8" src="plotly.min.js">' in page
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000  # beside it: offline


def test_export_formats(demo_run: Path, unit_zoo: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["export", str(demo_run), "--knee", "--out", str(tmp_path / "k.yaml")])
    assert res.exit_code == 0, res.output
    knee = Recipe.load(tmp_path / "k.yaml")
    res = runner.invoke(
        app,
        [
            "export",
            str(demo_run),
            "--best",
            "rev9",
            "--format",
            "mergekit",
            "--out",
            str(tmp_path / "mk.yaml"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((tmp_path / "mk.yaml").read_text())["merge_method"] == "dare_ties"
    res = runner.invoke(
        app,
        ["export", str(demo_run), "--trial", "0", "--format", "hf", "--out", str(tmp_path / "hf")],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "hf" / "config.json").exists()
    assert knee.method == "dare_ties"
    res = runner.invoke(app, ["export", str(demo_run), "--out", str(tmp_path / "x.yaml")])
    assert res.exit_code == 2 and "exactly one of --trial N, --best OBJECTIVE, --knee" in res.output
    res = runner.invoke(app, ["export", str(demo_run), "--trial", "99", "--out", "x"])
    assert res.exit_code == 2 and "no trial 99" in res.output


def test_run_refuses_another_experiments_dir(demo_run: Path, unit_zoo: Path) -> None:
    exp = Path(__file__).resolve().parent.parent / "experiments" / "zoo-demo.yaml"
    other = demo_run.parent / "other.yaml"
    other.write_text(exp.read_text().replace("seed: 0", "seed: 1"))
    res = runner.invoke(
        app, ["run", str(other), "--run-dir", str(demo_run), "--zoo", str(unit_zoo)]
    )
    assert res.exit_code == 2 and "belongs to another experiment" in res.output


def test_run_takes_a_shipped_experiment_by_name(tmp_path: Path) -> None:
    res = runner.invoke(app, ["run", "no-such-experiment", "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "unknown experiment 'no-such-experiment'" in res.output
    assert "zoo-demo" in res.output and not (tmp_path / "r").exists()


def test_space_show(unit_zoo: Path) -> None:
    srcs = [
        f"--source={n}=zoo:{p}"
        for n, p in [("base", "base"), ("rev9", "experts/rev9"), ("add1", "experts/add1")]
    ]
    res = runner.invoke(
        app, ["space", "show", "routing", *srcs, "--base", "base", "--zoo", str(unit_zoo)]
    )
    assert res.exit_code == 0, res.output
    assert "routing space, 16 genes (16 real, 0 integer) over 4 layers" in res.output
    res = runner.invoke(app, ["space", "show", "nope", *srcs, "--zoo", str(unit_zoo)])
    assert res.exit_code == 2 and "unknown search space 'nope'" in res.output

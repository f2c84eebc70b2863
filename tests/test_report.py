"""The report on a small search of the unit zoo: reference points scored once (outside the
budget and the optimizer), every plot and the report page read back (the front's trials, the
reference labels, the hypervolume against pymoo's, the heatmap against the recipe), and the page
looked at in a real browser where Chromium is installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner
from unit_experiment import experiment, one_gene_archive, run_to_the_end, write_experiment

from evomerge.cli import app
from evomerge.recipe import Recipe
from evomerge.report import RunView, plot_front, plot_progress, plot_recipe
from evomerge.run import lifecycle as search
from evomerge.run.archive import Evaluation
from evomerge.run.reference_points import REFERENCE_FILE, read_reference
from evomerge.run.run_dir import open_archive

runner = CliRunner()

EXPERIMENT: dict[str, Any] = experiment("unit-report")


def _run(root: Path, zoo: Path, **changes: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return run_to_the_end(write_experiment(root, EXPERIMENT, **changes), root / "run", zoo)


@pytest.fixture(scope="session")
def run(unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("report"), unit_zoo)


def _figures(page: str) -> dict[str, list[dict[str, Any]]]:
    """Every plotly figure's traces in a page, by div id."""
    out = {}
    for m in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', page):
        out[m.group(1)], _ = json.JSONDecoder().raw_decode(page, m.end())
    return out


def _offline(page_path: Path) -> None:
    """The page's only script file is plotly.min.js beside it, the installed plotly's own
    bundle (no CDN, no network); inline, the page itself stays small."""
    from plotly.offline import get_plotlyjs

    page = page_path.read_text()
    assert re.findall(r"<script[^>]+src=\"([^\"]+)\"", page) == ["plotly.min.js"]
    assert (page_path.parent / "plotly.min.js").read_text() == get_plotlyjs()
    assert "cdn." not in page.lower() and len(page.encode()) < 1_000_000


def _layouts(page: str) -> dict[str, dict[str, Any]]:
    """Every plotly figure's layout in a page, by div id."""
    out = {}
    for m in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', page):
        dec = json.JSONDecoder()
        _, end = dec.raw_decode(page, m.end())
        rest = page[end:].lstrip(", \n")
        out[m.group(1)], _ = dec.raw_decode(rest)
    return out


def _losses(values: list[list[float]]) -> np.ndarray:
    return -np.asarray(values, dtype=float)  # both objectives maximized


def _dominated(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether loss vector ``a`` is dominated by ``b``."""
    return bool(np.all(b <= a) and np.any(b < a))


def _ranks_by_peeling(values: dict[int, list[float]]) -> dict[int, int]:
    """Front ranks by hand: peel off the non-dominated set again and again."""
    left, ranks, r = dict(values), {}, 1
    while left:
        losses = {t: _losses([v])[0] for t, v in left.items()}
        layer = [t for t in left if not any(_dominated(losses[t], losses[u]) for u in left)]
        for t in layer:
            ranks[t] = r
            del left[t]
        r += 1
    return ranks


# -- reference points ----------------------------------------------------------------------------


def test_reference_points_scored_with_the_runs_estimators(run: Path, unit_zoo: Path) -> None:
    """The base's reference point is what `evomerge eval` gives the base checkpoint with the same
    estimator and seed; they are no trials: the archive holds exactly the budget."""
    from evomerge.evaluate.estimators import make_estimator
    from evomerge.evaluate.scoring import score_task
    from evomerge.evaluate.select import make_engine
    from evomerge.evaluate.tasks import load_task

    infos, points = read_reference(run)
    assert [p.label for p in points] == ["base", "add1", "rev9", "shift3", "uniform dare_ties"]
    assert [p.kind for p in points] == ["base", "source", "source", "source", "uniform"]
    assert (
        infos is not None
        and [(o.metric, o.estimator) for o in infos] == [("token_accuracy", "subsample:8")] * 2
    )
    archive = open_archive(run)
    assert len(archive) == EXPERIMENT["budget"]
    engine = make_engine("hf", unit_zoo / "base", device="cpu", dtype="float32")
    for i, name in enumerate(("rev9", "shift3")):
        task = load_task(name, zoo=unit_zoo)
        est = make_estimator("subsample:8", EXPERIMENT["seed"])
        res = score_task(engine, task, est.select(task.item_ids))
        e = est.estimate(res.scores, task.item_ids)
        assert points[0].values[i] == pytest.approx(e.value, abs=1e-6)
        assert points[0].stderr[name] == pytest.approx(e.stderr, abs=1e-6)
        assert points[0].fidelity[name] == pytest.approx(8 / len(task.item_ids))


def test_uniform_merge_is_alike_everywhere(run: Path) -> None:
    """The uniform merge: dare_ties over the three experts on the base, every model and layer
    with the method's defaults (weight 1, density 1), which the space's bounds allow."""
    _, points = read_reference(run)
    uniform = Recipe.from_dict(yaml.safe_load(points[-1].recipe))
    assert uniform.method == "dare_ties" and uniform.base == "base"
    assert uniform.model_names == ["add1", "rev9", "shift3"]
    for m in uniform.model_names:
        for p in ("weight", "density"):
            spec = uniform.sources[m].parameters[p]
            vals = spec.per_layer if hasattr(spec, "per_layer") else [spec]
            assert set(vals) == {1.0}


def test_reference_points_survive_resume_and_leave_the_search_alone(
    run: Path, unit_zoo: Path, tmp_path: Path
) -> None:
    """A resumed run does not score them again (the file is untouched); a run without them
    (`reference_points: false`) asks and scores the very same recipes."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ref = copy / REFERENCE_FILE
    before = (ref.read_bytes(), ref.stat().st_mtime_ns)
    s, total = search.reopen(copy, budget=EXPERIMENT["budget"] + 4)
    try:
        s.run(total)
    finally:
        s.close()
    assert (ref.read_bytes(), ref.stat().st_mtime_ns) == before
    assert len(open_archive(copy)) == EXPERIMENT["budget"] + 4

    off = _run(tmp_path / "off", unit_zoo, reference_points=False)
    infos, points = read_reference(off)
    assert points == [] and infos is not None  # objectives still described
    trace = [(e.recipe_hash, e.values) for e in open_archive(off).evaluations]
    assert trace == [(e.recipe_hash, e.values) for e in open_archive(run).evaluations]


# -- tables and JSON -----------------------------------------------------------------------------


def test_front_all_ranks_and_json(run: Path) -> None:
    res = runner.invoke(app, ["front", str(run), "--all", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    archive = open_archive(run)
    values = {e.number: e.values for e in archive.evaluations if e.ok}
    assert {r["trial"]: r["rank"] for r in data["evaluated"]} == _ranks_by_peeling(values)
    assert [o["metric"] for o in data["objective_info"]] == ["token_accuracy"] * 2
    assert [o["direction"] for o in data["objective_info"]] == ["maximize"] * 2
    first = data["evaluated"][0]
    ev = archive.trial(first["trial"])
    assert first["stderr"] == ev.stderr and first["fidelity"] == ev.fidelity
    assert {p["label"] for p in data["reference_points"]} >= {"base", "uniform dare_ties"}
    res = runner.invoke(app, ["front", str(run), "--all"])
    assert res.exit_code == 0 and "rank" in res.output


def _table_trials(output: str) -> list[str]:
    """The trial cells of a front table's rows, in order (the reference points' rows aside)."""
    return re.findall(r"^\s*[│|]?\s*(\d+(?: knee)?)\s*[│|]", output, flags=re.MULTILINE)


def test_front_table_knee_first_in_80_columns(
    run: Path, console_width: Callable[[int], None]
) -> None:
    data = json.loads(runner.invoke(app, ["front", str(run), "--json"]).output)["front"]
    (knee,) = [r["trial"] for r in data if r["knee"]]
    console_width(80)
    res = runner.invoke(app, ["front", str(run)])
    assert res.exit_code == 0, res.output
    assert max(map(len, res.output.splitlines())) <= 80
    trials = _table_trials(res.output)
    assert trials[0] == f"{knee} knee" and len(trials) == len(data)
    assert "items scored:" in res.output and "hash: its first 8 digits" in res.output
    by_trial = _table_trials(runner.invoke(app, ["front", str(run), "--sort", "trial"]).output)
    assert [int(t.split()[0]) for t in by_trial] == sorted(r["trial"] for r in data)
    by_rev9 = _table_trials(runner.invoke(app, ["front", str(run), "--sort", "rev9"]).output)
    best_first = sorted(data, key=lambda r: (-r["rev9"], r["trial"]))
    assert [int(t.split()[0]) for t in by_rev9] == [r["trial"] for r in best_first]
    bad = runner.invoke(app, ["front", str(run), "--sort", "nope"])
    assert bad.exit_code == 2 and "--sort nope" in bad.output and "rev9" in bad.output


def test_the_headline_puts_the_knee_beside_the_references(
    run: Path, console_width: Callable[[int], None]
) -> None:
    """Against the stored scores: the archive's knee and reference_points.json."""
    from evomerge.report.headline import headline

    knee = open_archive(run).knee()
    assert knee is not None and knee.values is not None
    _, points = read_reference(run)
    found = headline(RunView.open(run))
    assert found is not None and found.basis == "search"  # nothing confirmed
    point, rows = found.trial, found.rows
    assert point.trial == knee.number and point.values == knee.values
    assert [c.label for c in rows] == [p.label for p in points if p.values is not None]
    names = ["rev9", "shift3"]
    for c, p in zip(rows, points, strict=True):
        assert c.values == p.values
        want = [k - v for k, v in zip(knee.values, p.values, strict=True)]  # type: ignore[arg-type]
        assert c.differences == pytest.approx(want)
        se = [(knee.stderr[n] ** 2 + p.stderr[n] ** 2) ** 0.5 for n in names]  # type: ignore[operator]
        assert c.errors == pytest.approx(se)
    console_width(80)
    res = runner.invoke(app, ["status", str(run)])
    assert res.exit_code == 0, res.output
    assert f"The knee (trial {knee.number}) against the references, search" in res.output
    assert all(p.label in res.output for p in points)
    assert max(map(len, res.output.splitlines())) <= 80


def test_the_headline_on_held_out_items_once_confirmed(
    unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory, console_width: Callable[[int], None]
) -> None:
    """`confirm` scores the references on the knee's held-out items; the headline then compares
    on those alone. A source's held-out score is checked against the source's own checkpoint,
    opened by transformers and scored on the same items (no merge on that path)."""
    from evomerge.evaluate.hf import HFEngine
    from evomerge.evaluate.scoring import score_task
    from evomerge.experiment import Experiment
    from evomerge.report.headline import headline
    from evomerge.run.confirm import confirm
    from evomerge.workers.local import load_objectives

    root = tmp_path_factory.mktemp("headline-holdout")
    run = _run(root, unit_zoo, holdout=0.2, budget=8)
    knee = open_archive(run).knee()
    assert knee is not None
    assert headline(RunView.open(run)).basis == "search"  # type: ignore[union-attr]
    (c,) = confirm(run, trials=[knee.number], zoo=unit_zoo)
    found = headline(RunView.open(run))
    assert found is not None and found.basis == "held-out"
    names = open_archive(run).objectives
    assert found.trial.values == [c.scores[n] for n in names]
    _, points = read_reference(run)
    for row, p in zip(found.rows, points, strict=True):
        held = p.confirmed["holdout"]["scores"]
        assert row.values == [held[n] for n in names]
        assert row.differences == pytest.approx([c.scores[n] - held[n] for n in names])
    experiment = Experiment.load(run / "experiment.yaml")
    objectives = [ob for ob in load_objectives(experiment, unit_zoo) if ob.scored]
    engine = HFEngine(unit_zoo / "experts" / "rev9", dtype="float32")
    (rev9,) = [r for r in found.rows if r.label == "rev9"]
    for ob, v in zip(objectives, rev9.values, strict=True):
        direct = score_task(engine, ob.whole_task, ob.held_out).scores
        assert v == pytest.approx(float(np.mean(list(direct.values()))), abs=1e-6)
    # a second confirm scores nothing again, and the report and status say held-out
    assert "reference points" not in "".join(
        _log_of(lambda log: confirm(run, zoo=unit_zoo, trials=[knee.number], log=log))
    )
    console_width(120)
    res = runner.invoke(app, ["status", str(run)])
    assert "against the references, held-out" in res.output
    out = root / "report"
    assert runner.invoke(app, ["report", str(run), "--out", str(out)]).exit_code == 0
    page = (out / "index.html").read_text()
    table = page.split("<table class=headline>", 1)[1].split("</table>", 1)[0]
    assert f"knee (trial {knee.number})" in table and all(p.label in table for p in points)
    assert f"evomerge export {run} --knee --format hf --out merged" in page


def _log_of(call: Callable[[Callable[[str], None]], Any]) -> list[str]:
    lines: list[str] = []
    call(lines.append)
    return lines


# -- plots ---------------------------------------------------------------------------------------


def test_front_html_holds_the_front_and_reference_points(run: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["front", str(run), "--plot", str(tmp_path / "f.html")])
    assert res.exit_code == 0, res.output
    _offline(tmp_path / "f.html")
    page = (tmp_path / "f.html").read_text()
    traces = {t.get("name"): t for t in _figures(page)["front"]}
    archive = open_archive(run)
    values = {e.number: e.values for e in archive.evaluations if e.ok}
    front = sorted(t for t, r in _ranks_by_peeling(values).items() if r == 1)
    assert sorted(traces["front"]["customdata"]) == front
    assert traces["knee"]["customdata"] == [archive.knee().number]
    labels = ("base", "add1", "rev9", "shift3", "uniform dare_ties")
    for label in labels:
        assert traces[label]["text"] == [label]
    # each reference told apart without a hover: its own marker and colour
    looks = {(traces[x]["marker"]["symbol"], traces[x]["marker"]["color"]) for x in labels}
    assert len(looks) == len(labels) and len({c for _, c in looks}) == len(labels)
    assert "<h1>Pareto front of" in page and "title" not in _layouts(page)["front"]
    # the hover says what sets a member apart: each source's mean weight and density
    raw = yaml.safe_load(archive.trial(front[0]).recipe)
    hov = traces["front"]["hovertext"][traces["front"]["customdata"].index(front[0])]
    merged = {m: src for m, src in raw["sources"].items() if isinstance(src, dict)}
    assert len(merged) == 3  # the experts (the base, a bare path, sets nothing)
    for m, src in merged.items():
        for param in ("weight", "density"):
            mean = float(np.mean(src["parameters"][param]["per_layer"]))
            assert re.search(rf"{param}: .*{m} . {mean:.2f}", hov), (param, m, hov)
    t0 = front[0]
    i = traces["front"]["customdata"].index(t0)
    assert traces["front"]["x"][i] == values[t0][0] and traces["front"]["y"][i] == values[t0][1]
    se = archive.trial(t0).stderr["rev9"]
    assert traces["front"]["error_x"]["array"][i] == pytest.approx(se)
    assert f"rev9 = {values[t0][0]:.4f} ± {se:.4f}" in traces["front"]["hovertext"][i]
    # the table: the knee's row marked, error and fidelity columns, the run and metric named
    assert f"<tr class=knee data-trial={archive.knee().number}>" in page
    assert "± error</th>" in page and "fidelity</th>" in page
    assert "unit-report" in page and "token_accuracy, subsample:8" in page


def test_progress_hypervolume_matches_pymoo(run: Path, tmp_path: Path) -> None:
    from pymoo.indicators.hv import HV

    plot_progress(RunView.open(run), tmp_path / "p.html")
    traces = {t["name"]: t for t in _figures((tmp_path / "p.html").read_text())["progress"]}
    evs = open_archive(run).evaluations
    ref = np.zeros(2)  # token accuracy, maximized: the worst end 0 (negated: 0)
    expected = []
    for n in range(1, len(evs) + 1):
        pts = _losses([e.values for e in evs[:n] if e.ok])
        pts = pts[np.all(pts < ref, axis=1)]
        expected.append(float(HV(ref_point=ref)(pts)) if len(pts) else 0.0)
    assert traces["hypervolume"]["y"] == pytest.approx(expected, rel=1e-12)
    best = [max(e.values[0] for e in evs[:n] if e.ok) for n in range(1, len(evs) + 1)]
    assert traces["best rev9"]["y"] == pytest.approx(best)
    # the best mean and the knee's mean so far: the knee recomputed by peeling each prefix
    means = [max(np.mean(e.values) for e in evs[:n] if e.ok) for n in range(1, len(evs) + 1)]
    assert traces["best mean"]["y"] == pytest.approx(means)
    knees = []
    for n in range(1, len(evs) + 1):
        vals = {e.number: e.values for e in evs[:n] if e.ok}
        front = np.array([vals[t] for t, r in sorted(_ranks_by_peeling(vals).items()) if r == 1])
        ideal = front.max(axis=0)  # accuracies: one common unit, the knee's rule
        knees.append(float(np.mean(front[np.argmin(np.linalg.norm(ideal - front, axis=1))])))
    assert traces["knee's mean"]["y"] == pytest.approx(knees)
    _, points = read_reference(run)
    for p in points:
        assert traces[f"{p.label} (mean)"]["y"][0] == pytest.approx(np.mean(p.values))
    page = (tmp_path / "p.html").read_text()
    assert "hypervolume (reference point: rev9 0, shift3 0)" in page
    assert plot_progress(RunView.open(run), tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_progress_marks_failures_and_boxes_unbounded_objectives(tmp_path: Path) -> None:
    """Failed trials are marked; with no reference the box is the run's worst values."""
    from pymoo.indicators.hv import HV

    archive = one_gene_archive(tmp_path, ppl="minimize", lp="maximize")
    rows = [(5.0, -2.0), None, (3.0, -3.0), (8.0, -1.0), None, (4.0, -1.5)]
    for i, r in enumerate(rows):
        archive.record(
            Evaluation(
                f"h{i}",
                "",
                [0.1],
                None if r is None else list(r),
                status="ok" if r else "failed",
                error=None if r else "RecipeError: x",
            )
        )
    prog = RunView.of(archive).progress()
    assert prog["failed"] == [1, 4]
    losses = np.array([[r[0], -r[1]] for r in rows if r])
    ref = losses.max(axis=0)
    expected = []
    for n in range(1, len(rows) + 1):
        pts = np.array([[r[0], -r[1]] for r in rows[:n] if r])
        pts = pts[np.all(pts < ref, axis=1)]
        expected.append(float(HV(ref_point=ref)(pts)) if len(pts) else 0.0)
    assert prog["hypervolume"] == pytest.approx(expected)
    page = plot_progress(archive, tmp_path / "p.html").read_text()
    failed = next(t for t in _figures(page)["progress"] if t["name"] == "failed")
    assert failed["customdata"] == [1, 4]


def _plot_recipe(run: Path, out: Path, *options: str) -> Any:
    """``evomerge plot RUN --what recipe --out OUT [options]``, through the CLI."""
    return runner.invoke(app, ["plot", str(run), "--what", "recipe", "--out", str(out), *options])


def test_recipe_heatmap_shows_the_recipes_values(run: Path, tmp_path: Path) -> None:
    archive = open_archive(run)
    knee = archive.knee()
    res = _plot_recipe(run, tmp_path / "r.html", "--trial", str(knee.number))
    assert res.exit_code == 0, res.output
    traces = {t["name"]: t for t in _figures((tmp_path / "r.html").read_text())["recipe"]}
    raw = yaml.safe_load(knee.recipe)  # the per_layer lists as stored, no resolver involved
    for param in ("weight", "density"):
        t = traces[param]
        for col, m in enumerate(t["x"]):
            column = [row[col] for row in t["z"]]
            assert column == pytest.approx(raw["sources"][m]["parameters"][param]["per_layer"])
    assert traces["lambda"]["z"] == [[1.0]] * 4
    # one colour scale per parameter, its bounds (DARE-TIES: density in (0, 1]; weight and
    # lambda unbounded: [0, 1] widened to the values), each with its colour bar
    assert (traces["density"]["zmin"], traces["density"]["zmax"]) == (0.0, 1.0)
    weights = [v for row in traces["weight"]["z"] for v in row]
    assert traces["weight"]["zmin"] == min(0.0, *weights)
    assert traces["weight"]["zmax"] == max(1.0, *weights)
    assert all(t.get("showscale", True) and "colorbar" in t for t in traces.values())
    assert plot_recipe(archive, knee.number, tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_progress_marks_the_stage_boundaries(tmp_path: Path) -> None:
    """The schedule's `until` and `last: N` (of the run's budget) as dashed lines, named."""
    archive = one_gene_archive(tmp_path, a="maximize", b="maximize")
    for i in range(12):
        archive.record(Evaluation(f"s{i}", "", [0.1], [i / 12, 1 - i / 12]))
    schedule = [{"granularity": 4, "until": 4}, {"curve": 2, "until": 8}, {"granularity": 1}]
    schedule.append({"granularity": 1, "target": "knee", "last": 2})
    view = RunView(archive, RunView.of(archive).objectives, experiment={"schedule": schedule})
    view.info = {"budget": 12}
    assert view.stage_starts() == [
        (4, "stage 1 (curve 2)"),
        (8, "stage 2 (granularity 1)"),
        (10, "stage 3 (granularity 1, target knee)"),
    ]
    page = plot_progress(view, tmp_path / "p.html").read_text()
    shapes = _layouts(page)["progress"]["shapes"]
    assert sorted({sh["x0"] for sh in shapes}) == [3.5, 7.5, 9.5]  # on every panel
    assert len(shapes) == 3 * 4  # hypervolume, mean, a, b
    assert "stage 3 (granularity 1, target knee)" in page
    assert plot_progress(view, tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_routing_recipe_as_slot_diagram(tmp_path: Path) -> None:
    recipe = Recipe.from_dict(
        {
            "sources": {"a": "/a", "b": "/b"},
            "method": "linear",
            "parameters": {"normalize": True},
            "routing": [
                {"layer": 0, "source": "a"},
                {"layer": 1, "source": "b", "scale": 1.5},
                {"layer": 1, "source": "a", "scale": 0.75},
            ],
        }
    )
    archive = one_gene_archive(tmp_path, x="maximize")
    archive.record(Evaluation("h0", recipe.to_yaml(), [0.5], [1.0]))
    page = plot_recipe(archive, 0, tmp_path / "r.html").read_text()
    slots = next(t for t in _figures(page)["recipe"] if t["name"] == "routing")
    assert slots["x"] == [0, 1, 2] and slots["y"] == ["a", "b", "a"]
    assert slots["text"] == ["L0", "L1", "L1"]
    assert slots["marker"]["color"] == [1.0, 1.5, 0.75]


@pytest.mark.parametrize(("k", "kind"), [(3, "splom"), (4, "parcoords")])
def test_more_objectives(tmp_path: Path, k: int, kind: str) -> None:
    names = [f"o{i}" for i in range(k)]
    archive = one_gene_archive(tmp_path, **dict.fromkeys(names, "maximize"))
    rng = np.random.default_rng(0)
    for i in range(8):
        archive.record(Evaluation(f"h{i}", "", [0.1], list(rng.random(k))))
    page = plot_front(archive, tmp_path / "f.html").read_text()
    traces = _figures(page)["front"]
    assert {t["type"] for t in traces} == {kind}
    drawn = {x for t in traces for x in t["customdata"]}
    assert drawn == set(range(8))
    assert plot_front(archive, tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


# -- the report page -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rep") / "report"
    res = runner.invoke(app, ["report", str(run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out / "index.html"


def test_report_page_structure(run: Path, report: Path) -> None:
    _offline(report)
    page = report.read_text()
    figs = _figures(page)
    assert set(figs) == {"front", "progress", "knee-recipe"}
    archive = open_archive(run)
    front = {t["name"]: t for t in figs["front"]}
    assert sorted(front["front"]["customdata"]) == sorted(e.number for e in archive.front())
    assert "uniform dare_ties" in front and "base" in front
    for text in (
        "unit-report",
        "budget</th><td>12",
        "evaluations</th><td>12 (0 failed)",
        "estimator subsample:8",
        "Not confirmed",
    ):
        assert text in page
    assert f"The knee&#x27;s recipe (trial {archive.knee().number})" in page


def test_report_shows_the_held_out_confirmation(
    unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A run with held-out items, its knee confirmed: the page's confirmation table holds the
    confirmed scores and the summary the estimator error, both recomputed here from the scores
    the archive stores."""
    from evomerge.run.confirm import confirm

    root = tmp_path_factory.mktemp("report-holdout")
    run = _run(root, unit_zoo, holdout=0.2, budget=8, reference_points=False)
    knee = open_archive(run).knee()
    assert knee is not None
    (c,) = confirm(run, trials=[knee.number], zoo=unit_zoo)
    out = root / "report"
    assert runner.invoke(app, ["report", str(run), "--out", str(out)]).exit_code == 0
    page = (out / "index.html").read_text()
    assert "Not confirmed" not in page
    table = page.split("<table class=confirm>", 1)[1].split("</table>", 1)[0]
    rows = [re.findall(r"<td>([^<]*)</td>", r) for r in table.split("<tr>")[2:]]
    assert len(rows) == 2  # one per objective
    for row in rows:
        trial, kind, objective, estimate, score = row[:5]
        assert (int(trial), kind) == (knee.number, "holdout")
        i = open_archive(run).objectives.index(objective)
        assert float(estimate) == pytest.approx(knee.values[i], abs=5e-5)
        assert float(score) == pytest.approx(c.scores[objective], abs=5e-5)
    for objective in ("rev9", "shift3"):
        gap = abs(c.scores[objective] - knee.values[open_archive(run).objectives.index(objective)])
        assert f"estimator error {objective}</th><td>mean |estimate − held-out| {gap:.4f}" in page


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("EVOMERGE_BROWSER_REQUIRED"):  # CI installs it
        pytest.fail("EVOMERGE_BROWSER_REQUIRED is set and no chromium binary is on PATH")
    return found


_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    base = [
        str(_chromium()),
        *_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=8000",
    ]
    return base, {**os.environ, "HOME": str(tmp_path)}


def _dom(page: Path, tmp_path: Path) -> str:
    base, env = _browser(tmp_path)
    return subprocess.run(
        [*base, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    ).stdout


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary")
def test_report_in_a_real_browser(run: Path, report: Path, tmp_path: Path) -> None:
    """Chromium opens the page offline: plotly (loaded from the file beside the page) draws,
    its SVG in the DOM with the reference names; the headline table names the knee and every
    reference; the front's trial ids are there; the screenshot is not blank."""
    from PIL import Image

    dom = _dom(report, tmp_path)
    assert 'class="main-svg"' in dom  # plotly ran, with nothing fetched
    _, points = read_reference(run)
    for p in points:
        assert re.search(rf'class="legendtext"[^>]*>{re.escape(p.label)}<', dom), p.label
    knee = open_archive(run).knee()
    headline = dom.split('<table class="headline">', 1)[1].split("</table>", 1)[0]
    assert f"knee (trial {knee.number})" in headline
    assert all(f"<th>{p.label}</th>" in headline for p in points)
    for e in open_archive(run).front():
        assert f"data-trial={e.number}" in dom or f'data-trial="{e.number}"' in dom
    shot = tmp_path / "shot.png"
    base, env = _browser(tmp_path)
    subprocess.run(
        [*base, "--window-size=1200,1600", f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        timeout=120,
        env=env,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1200) and pixels.std() > 10
    # the progress page on its own: the references' means named in its legend
    page = plot_progress(RunView.open(run), tmp_path / "pages" / "progress.html")
    dom = _dom(page, tmp_path)
    assert 'class="main-svg"' in dom and ">knee's mean<" in dom
    assert all(f">{p.label} (mean)<" in dom for p in points)


def test_plot_options_refused_clearly(run: Path, tmp_path: Path) -> None:
    res = _plot_recipe(run, tmp_path / "x.html")
    assert res.exit_code == 0, res.output  # no --trial: the knee's recipe
    knee = open_archive(run).knee()
    assert knee is not None
    res = _plot_recipe(run, tmp_path / "k.html", "--trial", str(knee.number))
    assert res.exit_code == 0, res.output
    default, explicit = ((tmp_path / f).read_text() for f in ("x.html", "k.html"))
    assert _figures(default) == _figures(explicit) and _figures(default)
    res = runner.invoke(
        app, ["plot", str(run), "--what", "nope", "--out", str(tmp_path / "x.html")]
    )
    assert res.exit_code == 2 and "progress or recipe" in res.output
    res = runner.invoke(app, ["front", str(run), "--plot", str(tmp_path / "x.svg")])
    assert res.exit_code == 2 and "FILE.png" in res.output


def test_a_system_fault_while_scoring_reference_points_stops_the_run_cleanly(
    unit_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fails under the first reference point: the run stops as on a trial (status,
    reason in run.json, nothing recorded), and a resume scores them and runs the search."""
    from evomerge.run import reference_points
    from evomerge.run.run_dir import read_info
    from evomerge.workers.faults import WorkerFault

    real = reference_points._score

    def failing(*a: Any, **k: Any) -> Any:
        raise WorkerFault("I/O error twice (OSError: [Errno 5] Input/output error)")

    monkeypatch.setattr(reference_points, "_score", failing)
    exp = write_experiment(tmp_path, EXPERIMENT, budget=4)
    s, budget = search.start(exp, tmp_path / "run", zoo=unit_zoo)
    try:
        out = s.run(budget)
    finally:
        s.close()
    info = read_info(tmp_path / "run")
    assert out.status == info["status"] == "stopped" and "I/O error" in info["reason"]
    assert len(open_archive(tmp_path / "run")) == 0
    assert (
        not (tmp_path / "run" / REFERENCE_FILE).exists()
        or read_reference(tmp_path / "run")[1] == []
    )
    monkeypatch.setattr(reference_points, "_score", real)
    s, budget = search.reopen(tmp_path / "run")
    try:
        assert s.run(budget).status == "finished"
    finally:
        s.close()
    labels = {p.label for p in read_reference(tmp_path / "run")[1]}
    assert {"base", "rev9", "shift3", "add1"} <= labels


def test_status_splits_the_time_per_evaluation(
    run: Path, console_width: Callable[[int], None]
) -> None:
    """The wall time of the run and its parts, per evaluation, from what the run recorded: the
    worker's timings per trial, the loop's in run.json when it stopped."""
    from evomerge.run.lifecycle import summary
    from evomerge.run.run_dir import read_info

    info, evs = read_info(run), open_archive(run).evaluations
    split = summary(run)["time_split"]
    n = len(evs)
    scoring = sum(v for e in evs for k, v in e.timings.items() if k.startswith("score:"))
    scoring += sum(e.timings.get("estimate", 0.0) for e in evs)
    assert split["scoring"] == pytest.approx(scoring / n)
    loop = info["loop_seconds"]
    assert split["optimizer"] == pytest.approx((loop["ask"] + loop["tell"]) / n)
    assert split["wall"] == pytest.approx(info["wall_seconds"] / n)
    parts = split["scoring"] + split["merge"] + split["optimizer"] + split["commit"]
    assert 0 < parts <= split["wall"]  # the parts are inside the wall time, not beside it
    console_width(160)
    res = runner.invoke(app, ["status", str(run)])
    assert f"{split['wall']:.2f}s: scoring {split['scoring']:.2f}s" in res.output

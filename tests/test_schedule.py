"""Coarse to fine (run/schedule.py, space/curves.py): curves decode to mergekit's piecewise-
linear gradients; a coarse genome lifted into the finest stage is the same merge; a run killed
around a stage change resumes to the uninterrupted run; an experiment with a schedule runs end to
end through the CLI."""

from __future__ import annotations

import pickle
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_runs import _cli, _env
from test_search import EXPERIMENT, _trace, _write
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.experiment import Experiment, ExperimentError
from evomerge.killpoints import ENV as KILL_AT
from evomerge.recipe import Gradient, Recipe, at_layer, select
from evomerge.run import lifecycle as search
from evomerge.run.archive import Evaluation
from evomerge.run.run_dir import open_archive, read_optimizer_state
from evomerge.run.schedule import StagedSpace, from_box, to_box
from evomerge.space import SearchSpace, SpaceError, load_space

N_LAYERS = 8
FIXTURE = HealthCheck.function_scoped_fixture
FINE = {"granularity": 1}


def _space(family: dict[str, Path], **options: Any) -> SearchSpace:
    return SearchSpace(
        load_space("dare_ties-per-layer", options),
        sources={k: str(v) for k, v in family.items()},
        base="base",
        num_layers=N_LAYERS,
        seed=7,
    )


def _staged(family: dict[str, Path], *stages: dict[str, Any]) -> StagedSpace:
    return StagedSpace(
        "dare_ties-per-layer",
        {},
        list(stages),
        sources={k: str(v) for k, v in family.items()},
        base="base",
        num_layers=N_LAYERS,
        seed=7,
    )


def _per_layer(recipe: Recipe, model: str, name: str) -> list[float]:
    spec = recipe.sources[model].parameters[name]
    values = select(spec, tensor="", kind="default")  # type: ignore[arg-type]
    return [at_layer(values, la, N_LAYERS) for la in range(N_LAYERS)]


# -- curves ------------------------------------------------------------------------------------


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(k=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_a_curve_decodes_to_mergekits_gradient(family: dict[str, Path], k: int, seed: int) -> None:
    sp = _space(family, curve=k)
    models = ["ft0", "ft1", "ft2"]
    assert len(sp.genes) == 2 * len(models) * k  # weight and density, k points per model
    x = np.random.default_rng(seed).random(len(sp.genes))
    recipe = sp.decode(x)
    bounds = {"weight": (0.0, 1.0), "density": (0.1, 1.0)}
    for i, (name, (lo, hi)) in enumerate(bounds.items()):
        for j, model in enumerate(models):
            u = x[(i * len(models) + j) * k : (i * len(models) + j + 1) * k]
            control = lo + u * (hi - lo)
            # mergekit: a gradient list of k values over n layers, linear between neighbours
            pos = np.arange(N_LAYERS) * (k - 1) / (N_LAYERS - 1)
            want = np.interp(pos, np.arange(k), control)
            got = _per_layer(recipe, model, name)
            assert got == pytest.approx(want, abs=1e-12)
            if k > 1:  # and evomerge's own reading of a mergekit gradient agrees
                grad = Gradient(gradient=[float(c) for c in control])
                assert got == pytest.approx([at_layer(grad, la, N_LAYERS) for la in range(8)])
    # encode reads the curve back from the recipe
    assert sp.encode(recipe) == pytest.approx(x, abs=1e-9)


def test_curve_and_granularity_exclude_each_other(family: dict[str, Path]) -> None:
    with pytest.raises(SpaceError, match="curve"):
        _space(family, curve=3, granularity=2)


# -- stages ------------------------------------------------------------------------------------


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**16))
def test_a_coarse_genome_lifts_to_the_same_merge(family: dict[str, Path], seed: int) -> None:
    st_ = _staged(
        family,
        {"granularity": N_LAYERS, "until": 10},
        {"curve": 3, "until": 20},
        {"granularity": 2, "until": 30},
        FINE,
    )
    rng = np.random.default_rng(seed)
    for stage, space in enumerate(st_.spaces):
        x = rng.random(len(space.genes))
        fine = st_.lift(stage, x)
        assert len(fine) == len(st_.final.genes)
        lifted, own = st_.final.decode(fine), space.decode(x)
        for model in ("ft0", "ft1", "ft2"):
            for name in ("weight", "density"):
                # every layer's coefficient, read independently from both recipes, is the same
                assert _per_layer(lifted, model, name) == _per_layer(own, model, name)
        if stage > 0:  # no whole-model scalar: the very same recipe
            assert lifted.content_hash() == own.content_hash()
        # and back: the stage's genome is recovered from the fine one (the seeds of a stage)
        assert st_.project(stage, fine) == pytest.approx(x, abs=1e-12)
    # the whole-model stage: each fine gene is the coarse gene of its coefficient
    x = rng.random(len(st_.spaces[0].genes))
    fine = st_.lift(0, x)
    assert np.array_equal(fine, np.repeat(x, N_LAYERS))


def test_stages_are_counted_in_evaluations(family: dict[str, Path]) -> None:
    st_ = _staged(family, {"granularity": 4, "until": 5}, {"granularity": 2, "until": 9}, FINE)
    assert [st_.stage_at(n) for n in (0, 4, 5, 8, 9, 100)] == [0, 0, 1, 1, 2, 2]
    for bad in (
        [{"granularity": 4}, FINE],  # no until
        [{"granularity": 4, "until": 5}, {"granularity": 2, "until": 5}, FINE],  # not rising
        [{"granularity": 4, "until": 5}, {"granularity": 1, "until": 9}],  # last has one
    ):
        with pytest.raises(ExperimentError, match="schedule"):
            Experiment.parse({**_exp_data(), "schedule": bad})
    with pytest.raises(SpaceError, match=r"schedule\[1\]"):
        _staged(family, {"granularity": 4, "until": 5}, {"granularity": 0})
    with pytest.raises(ExperimentError, match="until"):
        Experiment.parse({**_exp_data(), "schedule": [{"granularity": 4}, FINE]})
    # stages end where their evaluations are spent, asynchronous dispatch included
    Experiment.parse({**_exp_data(), "workers": {"dispatch": "async"}})
    # an experiment without a schedule hashes as it did before the key existed
    plain = {k: v for k, v in _exp_data().items() if k != "schedule"}
    assert "schedule" not in Experiment.parse(plain).model_dump(exclude_defaults=True)
    assert (
        Experiment.parse(plain).content_hash()
        == Experiment.parse({**plain, "schedule": []}).content_hash()
    )


# -- runs --------------------------------------------------------------------------------------

# the unit zoo has 4 layers: two NSGA-II batches of 4 whole-model merges, then per layer
SCHEDULE = [{"granularity": 4, "until": 8}, {"granularity": 1}]


def _exp_data(**changes: Any) -> dict[str, Any]:
    return {**EXPERIMENT, "schedule": SCHEDULE, "budget": 16, **changes}


def _write_staged(tmp_path: Path, **changes: Any) -> Path:
    return _write(tmp_path, **_exp_data(**changes))


@pytest.fixture(scope="module")
def staged_reference(unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("staged")
    s, budget = search.start(_write_staged(d), d / "run", zoo=unit_zoo)
    out = s.run(budget)
    s.close()
    assert out.status == "finished" and out.evaluations == 16
    return d / "run"


def test_the_fine_stage_starts_from_the_coarse_candidates(staged_reference: Path) -> None:
    archive = open_archive(staged_reference)
    evs = archive.evaluations
    assert len(archive.genes) == 2 * 3 * 4  # the archive speaks the fine space's genes
    for ev in evs[:8]:  # coarse: one value per coefficient, on every layer
        g = np.asarray(ev.genome).reshape(-1, 4)
        assert np.all(g == g[:, :1])
    assert any(len(set(np.asarray(ev.genome).reshape(-1, 4)[0])) > 1 for ev in evs[8:])
    assert len({e.recipe_hash for e in evs}) == 16  # seeds re-asked cost no evaluation
    state = pickle.loads(read_optimizer_state(staged_reference))  # type: ignore[arg-type]
    assert state["annotations"]["stage"] == 1


@pytest.mark.parametrize("stop_call", [7, 8, 15, 16, 18])
def test_resume_around_the_stage_change_equals_uninterrupted(
    unit_zoo: Path, tmp_path: Path, staged_reference: Path, stop_call: int
) -> None:
    """Calls 0–7 are the coarse batches, 8–15 the coarse candidates re-asked as the fine
    stage's first population (archive hits), 16 on the fine stage's own."""
    run_dir = _crash_then_resume(_write_staged(tmp_path), tmp_path / "run", unit_zoo, stop_call)
    assert _trace(run_dir) == _trace(staged_reference)


def _crash_then_resume(exp: Path, run_dir: Path, zoo: Path, stop_call: int) -> Path:
    """The run stopped by an exception at its ``stop_call``-th evaluation, then reopened to the
    end."""
    s, budget = search.start(exp, run_dir, zoo=zoo)
    calls = [0]

    def crash(_ev: Evaluation) -> None:
        calls[0] += 1
        if calls[0] - 1 == stop_call:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        s.run(budget, on_evaluation=crash)
    s.close()
    s2, budget2 = search.reopen(run_dir)
    s2.run(budget2)
    s2.close()
    return run_dir


@pytest.mark.parametrize("point", ["tell:2", "write:optimizer.pkl:3"])
def test_sigkill_at_the_stage_change_then_resume(
    unit_zoo: Path, tmp_path: Path, staged_reference: Path, point: str
) -> None:
    """Killed after the last coarse batch is told (before its checkpoint), or while the fine
    stage's first state is written."""
    run_dir = tmp_path / "run"
    exp = _write_staged(tmp_path)
    res = subprocess.run(
        _cli("run", str(exp), "--run-dir", str(run_dir), "--zoo", str(unit_zoo)),
        capture_output=True,
        env=_env(**{KILL_AT: point}),
        timeout=600,
    )
    assert res.returncode < 0, res.stdout.decode()[-2000:] + res.stderr.decode()[-2000:]
    s, budget = search.reopen(run_dir)
    s.run(budget)
    s.close()
    assert _trace(run_dir) == _trace(staged_reference)


def test_an_experiment_with_a_schedule_runs_end_to_end(unit_zoo: Path, tmp_path: Path) -> None:
    data = _exp_data(
        schedule=[
            {"granularity": 4, "until": 4},
            {"curve": 2, "until": 8},
            {"granularity": 1},
        ],
        optimizer={"name": "optuna-tpe", "batch": 4},
        budget=12,
    )
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(
        app, ["run", str(path), "--run-dir", str(tmp_path / "run"), "--zoo", str(unit_zoo)]
    )
    assert res.exit_code == 0, res.output
    evs = open_archive(tmp_path / "run").evaluations
    assert len(evs) == 12 and all(e.ok for e in evs)
    g = np.asarray([e.genome for e in evs]).reshape(12, -1, 4)
    assert np.all(g[:4] == g[:4, :, :1])  # whole-model
    steps = np.diff(g[4:8], axis=2)  # a straight line over depth: equal steps
    assert steps == pytest.approx(np.repeat(steps[:, :, :1], 3, axis=2), abs=1e-9)
    assert not np.allclose(steps, 0.0)
    assert (
        Experiment.parse(data).content_hash()
        != Experiment.parse({k: v for k, v in data.items() if k != "schedule"}).content_hash()
    )


# -- a stage's own optimizer -------------------------------------------------------------------

# whole model by scalarized CMA-ES (one loss: the objectives' weighted sum), then per layer by
# multi-objective TPE (one loss per objective): the switch changes what the optimizer is told
MIXED = [
    {"granularity": 4, "until": 8, "optimizer": {"name": "cma", "popsize": 4}},
    {"granularity": 1},
]


def _mixed(**changes: Any) -> dict[str, Any]:
    return _exp_data(
        **{"schedule": MIXED, "optimizer": {"name": "optuna-tpe", "batch": 4}, **changes}
    )


@pytest.fixture(scope="module")
def mixed_reference(unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mixed")
    s, budget = search.start(_write(d, **_mixed()), d / "run", zoo=unit_zoo)
    assert s.run(budget).status == "finished"
    s.close()
    return d / "run"


def test_a_stage_runs_its_own_optimizer(
    unit_zoo: Path, tmp_path: Path, mixed_reference: Path
) -> None:
    # the first stage is the whole-model CMA-ES run: the same merges (as per-layer recipes),
    # in the same order, scored the same
    plain = _exp_data(
        schedule=[], space_options={"granularity": 4}, optimizer=MIXED[0]["optimizer"], budget=8
    )
    s, budget = search.start(_write(tmp_path, **plain), tmp_path / "plain", zoo=unit_zoo)
    s.run(budget)
    s.close()
    trace = _trace(mixed_reference)
    assert [v for _, v in trace[:8]] == [v for _, v in _trace(tmp_path / "plain")]
    assert len({h for h, _ in trace}) == 16  # the TPE stage re-asks CMA-ES's merges for free
    state = pickle.loads(read_optimizer_state(mixed_reference))  # type: ignore[arg-type]
    assert state["annotations"]["stage"] == 1
    assert state["identity"]["optimizer"] == "optuna-tpe"
    assert state["identity"]["n_objectives"] == 2


def test_a_cma_stage_searches_around_the_best_candidate_so_far(
    unit_zoo: Path, tmp_path: Path
) -> None:
    """The coarse stage's candidates seed CMA-ES (archive hits, no evaluation spent); it starts
    at the one with the best weighted sum, sigma0 around it: a trust region of the fine stage."""
    stages = [
        {"granularity": 4, "until": 8},
        {"granularity": 1, "optimizer": {"name": "cma", "popsize": 4, "sigma0": 0.01}},
    ]
    exp = _exp_data(schedule=stages, optimizer={"name": "optuna-tpe", "batch": 4}, budget=12)
    s, budget = search.start(_write(tmp_path, **exp), tmp_path / "run", zoo=unit_zoo)
    assert s.run(budget).evaluations == 12
    evs = [e for e in s.archive.evaluations if e.ok]
    s.close()
    coarse, fine = evs[:8], evs[8:]
    best = max(coarse, key=lambda e: float(np.mean(e.values)))  # equal weights, maximized
    for e in fine:
        assert np.abs(np.asarray(e.genome) - np.asarray(best.genome)).max() < 0.08


@pytest.mark.parametrize("stop_call", [8, 16])
def test_resume_across_a_change_of_optimizer_equals_uninterrupted(
    unit_zoo: Path, tmp_path: Path, mixed_reference: Path, stop_call: int
) -> None:
    exp = _write(tmp_path, **_mixed())
    run_dir = _crash_then_resume(exp, tmp_path / "run", unit_zoo, stop_call)
    assert _trace(run_dir) == _trace(mixed_reference)


def test_a_stage_optimizer_is_checked_before_any_evaluation(unit_zoo: Path, tmp_path: Path) -> None:
    unknown = [{**MIXED[0], "optimizer": {"name": "nsga9"}}, MIXED[1]]
    with pytest.raises(ExperimentError, match=r"schedule\[0\]\.optimizer: unknown optimizer"):
        Experiment.parse(_mixed(schedule=unknown))
    with pytest.raises(ExperimentError, match=r"schedule\[1\]\.optimizer: a mapping"):
        Experiment.parse(_mixed(schedule=[MIXED[0], {**MIXED[1], "optimizer": "nsga2"}]))
    # an option the last stage's optimizer does not take fails at start, not 8 evaluations in
    bad = [MIXED[0], {**MIXED[1], "optimizer": {"name": "nsga2", "pop_sise": 4}}]
    with pytest.raises(Exception, match=r"schedule\[1\]\.optimizer:.*pop_sise"):
        search.start(_write(tmp_path, **_mixed(schedule=bad)), tmp_path / "run", zoo=unit_zoo)
    assert not (tmp_path / "run").exists()


# -- the budget's last evaluations, nearer the knee ---------------------------------------------

# per layer from 8 (NSGA-II, the experiment's), then the budget's last 4 by single-loss TPE
KNEE = [
    {"granularity": 4, "until": 8},
    {"granularity": 1},
    {
        "granularity": 1,
        "target": "knee",
        "last": 4,
        "optimizer": {"name": "optuna-tpe", "batch": 4},
    },
]


def test_a_last_stage_is_counted_from_the_end_of_the_budget(family: dict[str, Path]) -> None:
    st_ = _staged(family, {"granularity": 4, "until": 5}, {"granularity": 2}, {**FINE, "last": 4})
    assert [st_.stage_at(n, 12) for n in (0, 4, 5, 7, 8, 11)] == [0, 0, 1, 1, 2, 2]
    # a smaller budget cuts the earlier stages short; a budget of 4 is the last stage alone
    assert [st_.stage_at(n, 7) for n in (0, 2, 3, 6)] == [0, 0, 2, 2]
    assert st_.stage_at(0, 4) == 2
    assert st_.stage_at(100) == 1  # no budget: the last stage never begins
    for bad, where in (
        ([{"granularity": 4, "until": 5, "last": 2}, FINE], r"schedule\[0\]\.last"),
        ([{"granularity": 4, "until": 5}, {**FINE, "last": 0}], r"schedule\[1\]\.last"),
        ([{"granularity": 4, "until": 5}, {**FINE, "last": True}], r"schedule\[1\]\.last"),
        ([{"granularity": 2, "until": 5}, {**FINE, "last": 3}], r"schedule\[0\]\.until"),
        ([{**FINE, "last": 3}], r"schedule\[0\]\.last"),
        ([{"granularity": 4, "until": 5}, {**FINE, "target": "best"}], r"schedule\[1\]\.target"),
        ([{"granularity": 4, "until": 5}, {**FINE, "radius": 0}], r"schedule\[1\]\.radius"),
        ([{"granularity": 4, "until": 5}, {**FINE, "radius": 1.5}], r"schedule\[1\]\.radius"),
        ([{"granularity": 4, "until": 5, "radius": 0.2}, FINE], r"schedule\[0\]\.radius.*knee"),
    ):
        with pytest.raises(ExperimentError, match=where):
            Experiment.parse({**_exp_data(), "schedule": bad})


@pytest.fixture(scope="module")
def knee_run(unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    """The uninterrupted run, and what its knee stage's TPE was told."""
    d = tmp_path_factory.mktemp("knee")
    s, budget = search.start(_write_staged(d, schedule=KNEE), d / "run", zoo=unit_zoo)
    assert s.run(budget).status == "finished"
    # what the knee stage's TPE was told, in the order it asked: the 12 candidates so far
    # (seeds, re-asked in archive order), then its own 4
    told = [t.values[0] for t in s.optimizer._study.get_trials(deepcopy=False)]
    s.close()
    return d / "run", told


@pytest.fixture(scope="module")
def knee_reference(knee_run: tuple[Path, list[float]]) -> Path:
    return knee_run[0]


def test_the_knee_stage_is_told_the_distance_to_the_ideal_point(
    knee_run: tuple[Path, list[float]], staged_reference: Path
) -> None:
    knee_reference, told = knee_run
    trace = _trace(knee_reference)
    # the stages before are untouched: the first 12 evaluations are the plain schedule's
    assert trace[:12] == _trace(staged_reference)[:12]
    values = np.array([v for _, v in trace])
    assert len(values) == 16 and np.isfinite(values).all()
    # the ideal point: each skill's best over the 12 evaluations before the stage (the best of
    # any one objective is always on the front)
    ideal = values[:12].max(axis=0)
    want = np.sqrt((np.maximum(ideal - values, 0.0) ** 2).sum(axis=1))
    assert told == pytest.approx(want.tolist(), abs=1e-12)
    state = pickle.loads(read_optimizer_state(knee_reference))  # type: ignore[arg-type]
    assert state["annotations"]["stage"] == 2
    assert state["annotations"]["ideal"] == pytest.approx((-ideal).tolist())
    assert state["identity"]["optimizer"] == "optuna-tpe"
    assert state["identity"]["n_objectives"] == 1


def test_the_ideal_point_stays_where_the_knee_stage_began(
    knee_reference: Path, tmp_path: Path
) -> None:
    """A candidate past the ideal point moves the front's ideal, not the stage's: later losses
    are still measured from where the stage began, and passing it is not charged."""
    run_dir = tmp_path / "run"
    shutil.copytree(knee_reference, run_dir)
    ideal = np.array([v for _, v in _trace(knee_reference)][:12]).max(axis=0)
    s, _ = search.reopen(run_dir, budget=20)  # more budget: the knee stage goes on
    try:
        genome = [0.5] * len(s.archive.genes)
        past = Evaluation("past", "method: linear\n", genome, [ideal[0] + 0.05, ideal[1] - 0.1])
        s.archive.record(past)
        assert s.archive.ideal_point()[0][0] == pytest.approx(-(ideal[0] + 0.05))  # type: ignore[index]
        assert s.losses_of(past) == [pytest.approx(0.1)]
        short = Evaluation("short", "method: linear\n", genome, [ideal[0] - 0.03, ideal[1] - 0.04])
        assert s.losses_of(short) == [pytest.approx(0.05)]  # from the moved ideal: ≈ 0.089
    finally:
        s.close()


def test_a_smaller_budget_reaches_the_knee_stage_sooner(
    unit_zoo: Path, tmp_path: Path, staged_reference: Path
) -> None:
    s, budget = search.start(
        _write_staged(tmp_path, schedule=KNEE, budget=12), tmp_path / "run", zoo=unit_zoo
    )
    s.run(budget)
    s.close()
    assert _trace(tmp_path / "run")[:8] == _trace(staged_reference)[:8]
    state = pickle.loads(read_optimizer_state(tmp_path / "run"))  # type: ignore[arg-type]
    assert state["annotations"]["stage"] == 2  # per layer by NSGA-II was skipped


@pytest.mark.parametrize("stop_call", [19, 20, 33, 34])
def test_resume_around_the_knee_stage_equals_uninterrupted(
    unit_zoo: Path, tmp_path: Path, knee_reference: Path, stop_call: int
) -> None:
    """Calls 0–7: the coarse evaluations; 8–15: the per-layer stage re-asks them (archive
    hits); 16–19: its own 4 (19: the last before the knee stage, its batch untold); 20–31: the
    knee stage re-asks the 12 (20: the first, before its ideal point is saved with a batch
    told); 32–35: its own (35 the last: nothing left to resume)."""
    exp = _write_staged(tmp_path, schedule=KNEE)
    run_dir = _crash_then_resume(exp, tmp_path / "run", unit_zoo, stop_call)
    assert _trace(run_dir) == _trace(knee_reference)


# -- trust regions -----------------------------------------------------------------------------


@given(
    lo=st.floats(0.0, 0.9),
    width=st.floats(0.01, 1.0),
    frac=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8),
)
@settings(max_examples=300, deadline=None)
def test_a_genome_in_the_box_has_a_trust_region_genome_to_the_last_bit(
    lo: float, width: float, frac: list[float]
) -> None:
    hi = min(lo + width, 1.0)
    box = [[lo] * len(frac), [hi] * len(frac)]
    x = np.clip(lo + np.asarray(frac) * (hi - lo), lo, hi)
    y = to_box(box, x)
    assert y is not None and np.all((y >= 0.0) & (y <= 1.0))
    assert np.array_equal(from_box(box, y), x)  # bit for bit: the archive's recipe, re-asked
    assert to_box(box, np.append(x[:-1], hi + 1e-9)) is None  # outside: no seed


TRUST = [{"granularity": 4, "until": 8}, {"granularity": 1, "radius": 0.1}]


@pytest.fixture(scope="module")
def trust_reference(unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("trust")
    s, budget = search.start(_write_staged(d, schedule=TRUST), d / "run", zoo=unit_zoo)
    assert s.run(budget).status == "finished"
    s.close()
    return d / "run"


def test_a_trust_region_stage_searches_near_the_knee_of_the_stages_before(
    trust_reference: Path, staged_reference: Path
) -> None:
    evs = open_archive(trust_reference).evaluations
    assert len(evs) == 16 and len({e.recipe_hash for e in evs}) == 16
    assert _trace(trust_reference)[:8] == _trace(staged_reference)[:8]
    state = pickle.loads(read_optimizer_state(trust_reference))  # type: ignore[arg-type]
    lo, hi = (np.asarray(b) for b in state["annotations"]["box"])
    coarse = [np.asarray(e.genome) for e in evs[:8]]
    values = np.array([e.values for e in evs[:8]])  # both skills maximized
    beaten = [
        any(np.all(values[j] >= values[i]) and np.any(values[j] > values[i]) for j in range(8))
        for i in range(8)
    ]
    front = [i for i in range(8) if not beaten[i]]
    # centred on a member of the coarse front, ±0.1 clipped to the unit cube
    centres = [i for i in front if np.allclose(np.clip(coarse[i] - 0.1, 0, 1), lo, atol=1e-12)]
    assert len(centres) == 1
    assert hi == pytest.approx(np.clip(coarse[centres[0]] + 0.1, 0, 1), abs=1e-12)
    fine = np.array([e.genome for e in evs[8:]])
    assert np.all((fine >= lo - 1e-12) & (fine <= hi + 1e-12))
    assert any(len(set(g.reshape(-1, 4)[0])) > 1 for g in fine)  # per layer, not a group


@pytest.mark.parametrize("stop_call", [7, 8, 9, 15])
def test_resume_around_a_trust_region_stage_equals_uninterrupted(
    unit_zoo: Path, tmp_path: Path, trust_reference: Path, stop_call: int
) -> None:
    exp = _write_staged(tmp_path, schedule=TRUST)
    run_dir = _crash_then_resume(exp, tmp_path / "run", unit_zoo, stop_call)
    assert _trace(run_dir) == _trace(trust_reference)

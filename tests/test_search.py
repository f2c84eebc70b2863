"""The search loop on the unit zoo: resume equivalence after SIGINT or a crash at several points,
failed candidates recorded, the archive readable by Optuna, and bad run directories refused."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from unit_experiment import (
    crash_at,
    experiment,
    failing_della,
    signal_at,
    tiny_layers_space,
    write_experiment,
)

from evomerge.errors import EvomergeError
from evomerge.experiment import ExperimentError
from evomerge.recipe import Recipe
from evomerge.run import lifecycle as search
from evomerge.run.run_dir import ARCHIVE_FILE, EXPERIMENT_FILE, STUDY_NAME, RunError, storage_url

EXPERIMENT: dict[str, Any] = experiment("unit-search")


def _write(tmp_path: Path, name: str = "exp.yaml", **changes: Any) -> Path:
    return write_experiment(tmp_path, EXPERIMENT, name, **changes)


def _trace(run_dir: Path) -> list[tuple[str, tuple[float, ...] | None]]:
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run_dir))
    return [
        (t.user_attrs["hash"], tuple(t.values) if t.values else None)
        for t in study.get_trials(deepcopy=False)
    ]


@pytest.fixture(scope="module")
def reference(unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    d = tmp_path_factory.mktemp("ref")
    s, budget = search.start(_write(d), d / "run", zoo=unit_zoo)
    out = s.run(budget)
    assert out.status == "finished" and out.evaluations == 12
    return d / "run"


@pytest.mark.parametrize(
    ("stop_at", "sig"),  # the first candidate, mid-batch, a batch's last candidate
    [(0, signal.SIGINT), (5, signal.SIGTERM), (7, signal.SIGINT)],
)
def test_signal_then_resume_equals_uninterrupted(
    unit_zoo: Path, tmp_path: Path, reference: Path, stop_at: int, sig: signal.Signals
) -> None:
    run_dir = tmp_path / "run"
    s, budget = search.start(_write(tmp_path), run_dir, zoo=unit_zoo)
    before = {x: signal.getsignal(x) for x in (signal.SIGINT, signal.SIGTERM)}
    out = s.run(budget, on_evaluation=signal_at(stop_at, sig))  # the real signal and handler
    assert out.status == "interrupted" and out.evaluations == stop_at + 1
    assert {x: signal.getsignal(x) for x in before} == before  # the caller's handlers restored
    s2, budget2 = search.reopen(run_dir)
    out2 = s2.run(budget2)
    assert out2.status == "finished"
    assert _trace(run_dir) == _trace(reference)
    assert [e.number for e in out2.front] == [e.number for e in s2.archive.front()]


def test_crash_then_resume_equals_uninterrupted(
    unit_zoo: Path, tmp_path: Path, reference: Path
) -> None:
    run_dir = tmp_path / "run"
    s, budget = search.start(_write(tmp_path), run_dir, zoo=unit_zoo)

    with pytest.raises(RuntimeError, match="power cut"):
        s.run(budget, on_evaluation=crash_at(9))
    assert len(_trace(run_dir)) == 10  # committed before anything else happened
    s2, budget2 = search.reopen(run_dir)
    s2.run(budget2)
    assert _trace(run_dir) == _trace(reference)


def test_budget_can_grow_on_resume_and_spent_budget_is_refused(
    unit_zoo: Path, tmp_path: Path, reference: Path
) -> None:
    run_dir = tmp_path / "run"
    s, _ = search.start(_write(tmp_path), run_dir, zoo=unit_zoo, budget=6)
    assert s.run(6).evaluations == 6
    with pytest.raises(RunError, match=r"spent its budget \(6 of 6.*--budget N with N > 6"):
        search.reopen(run_dir)
    s2, total = search.reopen(run_dir, budget=12)
    s2.run(total)
    assert _trace(run_dir) == _trace(reference)


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_resume_refuses_a_run_whose_archive_lost_its_trials(
    reference: Path, tmp_path: Path, damage: str
) -> None:
    """A deleted or emptied archive.db: resume refuses, naming the archive, before anything is
    scored or written (it would otherwise start over as if nothing had run)."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    for f in run_dir.glob(f"{ARCHIVE_FILE}*"):
        if damage == "deleted" or f.name != ARCHIVE_FILE:
            f.unlink()
    if damage == "emptied":
        (run_dir / ARCHIVE_FILE).write_bytes(b"")

    def files() -> dict[str, bytes]:  # the run lock's holder file aside: taken, then released
        return {f.name: f.read_bytes() for f in run_dir.iterdir() if "lock" not in f.name}

    before = files()
    with pytest.raises(
        RunError, match=r"archive .*archive\.db\) holds 0 trials, but the run had 12"
    ):
        search.reopen(run_dir, budget=16)
    assert files() == before  # nothing written: no fresh archive, run.json as it was


def test_optuna_loads_the_run_and_its_best_trials_are_our_front(reference: Path) -> None:
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(reference))
    s, _ = search.reopen(reference, budget=13)  # opens the archive as the loop does
    ours = sorted(e.number for e in s.archive.front())
    assert ours and sorted(t.number for t in study.best_trials) == ours
    t = study.trials[0]
    assert set(t.user_attrs) >= {"hash", "fidelity", "timings", "worker", "status"}
    assert Recipe.from_dict(yaml.safe_load(t.system_attrs["evomerge:recipe"]))  # kept there
    assert t.user_attrs["fidelity"] == {"rev9": 8 / 200, "shift3": 8 / 200}  # 8 of 200 items
    assert {"merge", "swap", "score:rev9", "total"} <= set(t.user_attrs["timings"])
    # the area the front dominates above (0, 0), both objectives maximized: a sweep by hand
    pts = sorted((e.values for e in s.archive.front()), key=lambda v: -v[0])  # type: ignore[arg-type,return-value]
    area, top = 0.0, 0.0
    for x, y in pts:
        if y > top:
            area += x * (y - top)
            top = y
    assert area > 0 and s.archive.hypervolume([0.0, 0.0]) == pytest.approx(area)
    knee = s.archive.knee()
    assert knee is not None and knee.number in ours


def test_failed_candidates_are_recorded_and_do_not_stop_the_run(
    unit_zoo: Path, tmp_path: Path
) -> None:
    # DELLA needs density ± epsilon inside (0, 1): candidates outside fail in the merge planner.
    path = _write(tmp_path, **failing_della())
    s, budget = search.start(path, tmp_path / "run", zoo=unit_zoo)
    out = s.run(budget)
    assert out.status == "finished" and out.evaluations == 8
    evs = s.archive.evaluations
    failed = [e for e in evs if not e.ok]
    assert failed and len(failed) < 8
    assert all("della needs density" in (e.error or "") for e in failed)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(tmp_path / "run"))
    assert sum(t.state.name == "FAIL" for t in study.trials) == len(failed)


def test_cached_recipes_are_not_evaluated_again(unit_zoo: Path, tmp_path: Path) -> None:
    # an integer-only space (layers: remove/take) has few recipes: duplicates must come back
    # from the archive, not from the engine, and are not counted as evaluations
    path = _write(
        tmp_path,
        **tiny_layers_space(),  # 2⁴ recipes
        budget=10,
        reference_points=False,  # engine calls counted here are the trials' alone
    )
    s, budget = search.start(path, tmp_path / "run", zoo=unit_zoo)
    calls = []
    real = s.worker.evaluate
    s.worker.evaluate = lambda *a, **k: calls.append(1) or real(*a, **k)  # type: ignore[method-assign]
    seen: list[bool] = []
    s.run(budget, on_progress=lambda p: seen.append(p.cached))
    hashes = [e.recipe_hash for e in s.archive.evaluations]
    assert len(hashes) == len(set(hashes)) == 10
    # the engine ran once per recorded recipe (genomes that drop every layer never reach it)…
    assert len(calls) == sum(1 for e in s.archive.evaluations if e.recipe)
    assert seen[-1] > 0  # …and repeated proposals were served from the archive
    costs = [e.values[1] for e in s.archive.evaluations if e.values]
    assert len(set(costs)) > 1  # dropping layers changes the parameter count


def test_bad_runs_are_refused_and_lose_nothing(unit_zoo: Path, tmp_path: Path) -> None:
    exp = _write(tmp_path, budget=4, optimizer={"name": "random", "batch": 2})
    run_dir = tmp_path / "run"
    s, _ = search.start(exp, run_dir, zoo=unit_zoo)
    s.run(4)
    before = _trace(run_dir)
    other = _write(tmp_path, "other.yaml", seed=99)
    with pytest.raises(RunError, match=r"belongs to another experiment"):
        search.start(other, run_dir, zoo=unit_zoo)
    with pytest.raises(RunError, match=r"already holds this experiment's run"):
        search.start(exp, run_dir, zoo=unit_zoo)
    with pytest.raises(ExperimentError, match=r"differs from the experiment of"):
        search.reopen(run_dir, budget=8, experiment_file=other)
    copy = run_dir / EXPERIMENT_FILE
    copy.write_text(copy.read_text().replace("seed: 3", "seed: 4"))
    with pytest.raises(ExperimentError, match=r"changed since the run started"):
        search.reopen(run_dir, budget=8)
    assert _trace(run_dir) == before  # nothing lost or overwritten
    for changes, pattern in [
        ({"optimizer": {"name": "hillclimb"}}, r"unknown optimizer 'hillclimb'; known: .*nsga2"),
        ({"space": "nope"}, r"unknown search space 'nope'"),
        ({"space_options": {"genes": {"weight": [1, 0]}}}, r"bounds are empty"),
        ({"objectives": [{"task": "rev9", "cost": "params"}]}, r"exactly one of"),
        ({"objectives": [{"cost": "params"}]}, r"cost 'params' needs `reference:`"),
        ({"objectives": [{"task": "nope"}]}, r"unknown task 'nope'"),
        ({"optimizer": {"name": "cma", "popsize": 1}}, r"popsize"),
    ]:
        bad = _write(tmp_path, "bad.yaml", **changes)
        with pytest.raises(EvomergeError, match=pattern):
            search.start(bad, tmp_path / "bad-run", zoo=unit_zoo)
        assert not (tmp_path / "bad-run").exists()  # no half-made run left behind


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "cma", "popsize": 4},
        {"name": "optuna-tpe", "batch": 4, "n_startup_trials": 3},
        {"name": "nsga3", "pop_size": 4},
    ],
)
def test_every_optimizer_family_resumes_exactly(
    unit_zoo: Path, tmp_path: Path, optimizer: dict[str, Any]
) -> None:
    exp = _write(tmp_path, optimizer=optimizer, budget=9)
    s, budget = search.start(exp, tmp_path / "a", zoo=unit_zoo)
    s.run(budget)
    s, budget = search.start(exp, tmp_path / "b", zoo=unit_zoo)
    assert s.run(budget, on_evaluation=signal_at(5)).status == "interrupted"
    s2, budget2 = search.reopen(tmp_path / "b")
    s2.run(budget2)
    assert _trace(tmp_path / "b") == _trace(tmp_path / "a")
    assert len(_trace(tmp_path / "a")) == 9


def test_lmeval_objective_and_promotion(family: dict[str, Path], tmp_path: Path) -> None:
    """An lm-evaluation-harness task as an objective, estimated on a subset; candidates that
    could enter the front are promoted to the full item set."""
    pytest.importorskip("lm_eval", reason="lm-eval is the optional 'lmeval' extra")
    data = Path(__file__).parent / "data" / "lmeval"
    task = tmp_path / "tiny_mc.yaml"
    task.write_text((data / "tiny_mc.yaml").read_text().replace("@DATA_DIR@", str(data)))
    exp = {
        "name": "lmeval-search",
        "sources": {k: str(v) for k, v in family.items()},
        "base": "base",
        "space": "task_arithmetic-per-layer",
        "space_options": {"granularity": 3},
        "objectives": [
            {"lmeval": str(task), "estimator": "subsample:5", "metric": "acc"},
            {"cost": "params", "reference": 1e6},
        ],
        "optimizer": {"name": "random", "batch": 3},
        "budget": 3,
        "promotion": {"enabled": True},
        "workers": {"threads": 1},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    s, budget = search.start(path, tmp_path / "run", zoo=None)
    s.run(budget)
    evs = s.archive.evaluations
    assert all(e.ok for e in evs), [e.error for e in evs]
    assert evs[0].fidelity["tiny_mc"] == 1.0  # the first candidate always enters the front
    assert {e.fidelity["tiny_mc"] for e in evs} <= {5 / 20, 1.0}
    for e in evs:  # accuracy over the items scored: a multiple of 1/5 or of 1/20
        n = 20 if e.fidelity["tiny_mc"] == 1.0 else 5
        assert e.values is not None and e.values[0] * n == pytest.approx(round(e.values[0] * n))


def test_time_limit_stops_resumably(unit_zoo: Path, tmp_path: Path, reference: Path) -> None:
    s, budget = search.start(_write(tmp_path), tmp_path / "run", zoo=unit_zoo)
    out = s.run(budget, hours=1e-9)  # the limit has passed before the first candidate
    assert (out.status, out.evaluations) == ("time limit", 0)
    info = search.summary(tmp_path / "run")
    assert info["status"] == "time limit" and info["trials"] == 0
    s2, total = search.reopen(tmp_path / "run")
    assert s2.run(total).status == "finished"
    assert _trace(tmp_path / "run") == _trace(reference)


def test_exported_knee_scores_as_recorded(unit_zoo: Path, reference: Path, tmp_path: Path) -> None:
    """The checkpoint exported from the archive is the model that was scored: loaded from disk,
    it gives exactly the recorded objective values on the same items."""
    from evomerge.evaluate.estimators import make_estimator
    from evomerge.evaluate.hf import HFEngine
    from evomerge.evaluate.scoring import score_task
    from evomerge.evaluate.tasks import load_task
    from evomerge.merge.materialize import merge_to_dir
    from evomerge.recipe import Recipe

    s, _ = search.reopen(reference, budget=13)
    knee = s.archive.knee()
    assert knee is not None and knee.values is not None
    out = merge_to_dir(Recipe.from_dict(yaml.safe_load(knee.recipe)), tmp_path / "knee")
    engine = HFEngine(out)
    for name, recorded in zip(["rev9", "shift3"], knee.values, strict=True):
        task = load_task(name, zoo=unit_zoo)
        est = make_estimator("subsample:8", EXPERIMENT["seed"])
        ids = est.select(task.item_ids)
        value = est.estimate(score_task(engine, task, ids).scores, task.item_ids).value
        assert value == pytest.approx(recorded, abs=1e-9)


@pytest.mark.parametrize("space", ["routing", "ps-dfs", "layers"])
def test_routing_spaces_search_end_to_end(unit_zoo: Path, tmp_path: Path, space: str) -> None:
    """Depth-changing candidates (slots dropped or repeated, scales folded) go through the
    resident engine; `status` reads the run while it runs."""
    exp = _write(
        tmp_path,
        space=space,
        space_options={},
        objectives=[
            {"task": "rev9", "estimator": "subsample:8"},
            {"cost": "layers", "reference": 40},
        ],
        optimizer={"name": "random", "batch": 4},
        budget=4,
    )
    run_dir = tmp_path / "run"
    s, budget = search.start(exp, run_dir, zoo=unit_zoo)
    live: list[int] = []
    s.run(budget, on_evaluation=lambda e: live.append(search.summary(run_dir)["trials"]))
    assert live == [1, 2, 3, 4]  # readable (and up to date) while the run writes
    evs = s.archive.evaluations
    assert len(evs) == 4
    for e in evs:
        assert e.ok or "no layers" in (e.error or ""), e.error
    depths = {e.values[1] for e in evs if e.values}
    assert depths and all(1 <= d <= 24 for d in depths)


def test_runs_share_an_external_database(unit_zoo: Path, tmp_path: Path) -> None:
    """`storage:` puts the archive in any SQLAlchemy database; each run is its own study."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    for seed in (1, 2):
        exp = _write(
            tmp_path,
            f"e{seed}.yaml",
            seed=seed,
            budget=2,
            storage=url,
            optimizer={"name": "random", "batch": 2},
        )
        s, budget = search.start(exp, tmp_path / f"run{seed}", zoo=unit_zoo)
        s.run(budget)
        assert not (tmp_path / f"run{seed}" / ARCHIVE_FILE).exists()
        assert search.summary(tmp_path / f"run{seed}")["trials"] == 2
    names = optuna.get_all_study_names(storage=url)
    assert len(names) == 2 and all(n.startswith("unit-search-") for n in names)


def test_archive_leaves_optuna_logging_as_it_found_it(tmp_path: Path) -> None:
    from evomerge.genes import Gene
    from evomerge.run.archive import Archive, ArchiveError

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        Archive(
            f"sqlite:///{tmp_path / 'a.db'}",
            objectives=["x"],
            directions=["maximize"],
            genes=[Gene("w")],
            experiment_hash="h",
        )
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
        with pytest.raises(ArchiveError, match=r"cannot open the run's storage nope://"):
            Archive(
                "nope://x", objectives=["x"], directions=["maximize"], genes=[], experiment_hash="h"
            )
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        optuna.logging.set_verbosity(before)


def test_one_driver_per_shared_study(unit_zoo: Path, tmp_path: Path) -> None:
    """A second run directory of the same experiment on the same `storage:` would feed the same
    study from a second driver: refused, and nothing is left behind."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    exp = _write(tmp_path, budget=2, storage=url, optimizer={"name": "random", "batch": 2})
    search.start(exp, tmp_path / "run1", zoo=unit_zoo)
    with pytest.raises(RunError, match=r"belongs to the run .*run1; several drivers feeding"):
        search.start(exp, tmp_path / "run2", zoo=unit_zoo)
    assert not (tmp_path / "run2").exists()
    search.reopen(tmp_path / "run1")  # its own run directory still opens it


def test_workers_kind_is_the_old_name_of_backend() -> None:
    from evomerge.experiment import Experiment

    base = {**EXPERIMENT, "workers": {"kind": "local", "threads": 1}}
    old = Experiment.parse(base)
    assert old.workers.backend == "local"
    ray = Experiment.parse({**EXPERIMENT, "workers": {"backend": "ray", "count": 4, "threads": 1}})
    assert ray.content_hash() == old.content_hash()  # placement is not part of the search
    with pytest.raises(ExperimentError, match="disagree"):
        Experiment.parse({**EXPERIMENT, "workers": {"kind": "local", "backend": "ray"}})

"""Successive halving across fidelities on the unit zoo: who goes on is the top ``1/eta`` by
rung score, recomputed here from the merged models' own per-item scores; the items scored
follow the schedule's formula; a crashed or interrupted run resumes to the same archive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from unit_experiment import crash_at, experiment, signal_at, write_experiment

from evomerge.experiment import Experiment, ExperimentError
from evomerge.run import lifecycle as search
from evomerge.run.run_dir import open_archive
from evomerge.workers.halving import keep, ranking, rung_sizes

RUNGS, ETA, POP = [4, 12, 100], 3, 6
EXPERIMENT: dict[str, Any] = experiment(
    "unit-halving",
    objectives=[{"task": "rev9"}, {"task": "shift3"}],
    optimizer={"name": "nsga2", "pop_size": POP},
    budget=2 * POP,
    promotion={"schedule": "successive_halving", "rungs": RUNGS, "eta": ETA},
)


def _write(tmp_path: Path, **changes: Any) -> Path:
    return write_experiment(tmp_path, EXPERIMENT, **changes)


def _trace(run_dir: Path) -> list[tuple[Any, ...]]:
    s = open_archive(run_dir)
    return [
        (e.recipe_hash, e.values, e.fidelity, e.timings.get("rung"), e.timings.get("items"))
        for e in s.evaluations
    ]


@pytest.fixture(scope="module")
def reference(unit_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sh")
    s, budget = search.start(_write(d), d / "run", zoo=unit_zoo)
    out = s.run(budget)
    assert out.status == "finished" and out.evaluations == 2 * POP
    return d / "run"


def test_promoted_are_the_top_third_by_rung_score(
    unit_zoo: Path, reference: Path, tmp_path: Path
) -> None:
    """Each batch: the merged models scored here on every item of the rungs; the candidates
    that reached rung r+1 are exactly the top ``n // eta`` of rung r's (Pareto level, then the
    sum), and each recorded value is the mean over the recorded rung's items."""
    from evomerge.evaluate.estimators import make_estimator
    from evomerge.evaluate.hf import HFEngine
    from evomerge.evaluate.scoring import score_task
    from evomerge.evaluate.tasks import load_task
    from evomerge.merge.materialize import merge_to_dir
    from evomerge.recipe import Recipe

    evs = open_archive(reference).evaluations
    tasks = [load_task(t, zoo=unit_zoo) for t in ("rev9", "shift3")]
    n = len(tasks[0].item_ids)
    sizes = rung_sizes(RUNGS, n)
    assert sizes == [4, 12, 100]  # the unit tasks have more items than the last rung
    # the rungs' items: a subsample:K of the run's seed, the first K of one order
    order = [make_estimator(f"subsample:{sizes[-1]}", 3).select(t.item_ids) for t in tasks]
    per_item: dict[int, list[np.ndarray]] = {}
    for e in evs:
        out = merge_to_dir(Recipe.from_dict(yaml.safe_load(e.recipe)), tmp_path / f"m{e.number}")
        engine = HFEngine(out)
        per_item[e.number] = []
        for t, ids in zip(tasks, order, strict=True):
            scores = score_task(engine, t, ids).scores
            per_item[e.number].append(np.array([scores[i] for i in ids]))

    def value(number: int, rung: int) -> list[float]:
        return [float(y[: sizes[rung]].mean()) for y in per_item[number]]

    total_items = 0
    for b in range(2):
        batch = [e.number for e in evs[b * POP : (b + 1) * POP]]
        assert all(isinstance(x, int) for x in batch)
        alive = list(batch)
        for r in range(len(sizes)):
            reached = [x for x in batch if evs[x].timings["rung"] >= r]
            assert reached == alive, (b, r)
            total_items += len(alive) * (sizes[r] - (sizes[r - 1] if r else 0)) * 2
            if r + 1 < len(sizes):
                ranked = ranking([value(x, r) for x in alive], [1.0, 1.0])
                alive = sorted(alive[j] for j in ranked[: keep(len(alive), ETA)])
        for x in batch:
            r = int(evs[x].timings["rung"])
            assert evs[x].values == pytest.approx(value(x, r), abs=1e-12)
            assert evs[x].fidelity == {"rev9": sizes[r] / n, "shift3": sizes[r] / n}
    # per batch: 6 at 4 items, 2 more at 12, 1 more at 100, on two tasks
    assert total_items == 2 * 2 * (6 * 4 + 2 * 8 + 1 * 88)
    assert sum(e.timings["items"] for e in evs) == total_items


def test_ranking_and_keep_on_hand_made_values() -> None:
    # (1, 0) and (0, 1) are the first front; (0.5, 0.5) too; (0.4, 0.4) is dominated
    values = [[0.4, 0.4], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.2, 0.1]]
    assert ranking(values, [1.0, 1.0]) == [1, 2, 3, 0, 4]  # sums 1, 1, 1: batch order breaks
    assert ranking(values, [2.0, 1.0]) == [1, 2, 3, 0, 4]
    assert ranking(values, [1.0, 2.0]) == [3, 2, 1, 0, 4]
    assert [keep(n, 3) for n in (0, 1, 2, 3, 8, 9)] == [0, 1, 1, 1, 2, 3]
    assert rung_sizes([50, 200, 2000], 300) == [50, 200, 300]
    assert rung_sizes([50, 200, 2000], 200) == [50, 200]
    assert rung_sizes([50, 200, 2000], 30) == [30]


def test_crash_while_committing_then_resume_equals_uninterrupted(
    unit_zoo: Path, tmp_path: Path, reference: Path
) -> None:
    """The second batch dies after three of its six commits: the resumed run scores the
    three again at their rungs (not recorded twice) and promotes exactly as before."""
    run_dir = tmp_path / "run"
    s, budget = search.start(_write(tmp_path), run_dir, zoo=unit_zoo)

    with pytest.raises(RuntimeError, match="power cut"):
        s.run(budget, on_evaluation=crash_at(POP + 2))
    assert len(_trace(run_dir)) == POP + 3
    s2, budget2 = search.reopen(run_dir)
    assert s2.run(budget2).status == "finished"
    assert _trace(run_dir) == _trace(reference)


def test_signal_between_batches_then_resume_equals_uninterrupted(
    unit_zoo: Path, tmp_path: Path, reference: Path
) -> None:
    run_dir = tmp_path / "run"
    s, budget = search.start(_write(tmp_path), run_dir, zoo=unit_zoo)

    out = s.run(budget, on_evaluation=signal_at(1))
    assert out.status == "interrupted" and out.evaluations == POP  # the batch is committed whole
    s2, budget2 = search.reopen(run_dir)
    assert s2.run(budget2).status == "finished"
    assert _trace(run_dir) == _trace(reference)


@pytest.mark.parametrize(
    ("promotion", "extra", "message"),
    [
        ({"schedule": "successive_halving"}, {}, r"rungs.*at least two increasing"),
        ({"schedule": "successive_halving", "rungs": [50, 50]}, {}, "increasing"),
        ({"schedule": "successive_halving", "rungs": [5, 9], "eta": 1}, {}, "eta"),
        (
            {"schedule": "successive_halving", "rungs": [5, 9], "enabled": True},
            {},
            "drop `enabled`",
        ),
        ({"enabled": True, "rungs": [5, 9]}, {}, "belong to `schedule: successive_halving`"),
        (
            {"schedule": "successive_halving", "rungs": [5, 9]},
            {"workers": {"dispatch": "async", "count": 1}},
            "dispatch: async",
        ),
        (
            {"schedule": "successive_halving", "rungs": [5, 9]},
            {"objectives": [{"task": "rev9", "estimator": "subsample:8"}]},
            "estimator 'subsample:8'",
        ),
    ],
)
def test_bad_schedules_are_refused(
    promotion: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ExperimentError, match=message):
        Experiment.parse({**EXPERIMENT, "promotion": promotion, **extra})


def test_the_front_schedule_hashes_as_before() -> None:
    """Runs started before successive halving existed still resume: the keys it added stay
    out of the hash at their defaults, and a halving schedule changes it."""
    plain = Experiment.parse({**EXPERIMENT, "promotion": {"enabled": True}})
    dumped = plain.model_dump(mode="json")["promotion"]
    assert dumped == {"enabled": True, "margin": 0.0, "z": 1.0, **_NEW_KEYS}
    halving = Experiment.parse(EXPERIMENT)
    assert plain.content_hash() != halving.content_hash()
    before = _old_hash(plain)
    assert plain.content_hash() == before


_NEW_KEYS = {"schedule": "front", "rungs": None, "eta": 3}


def _old_hash(e: Experiment) -> str:
    """The hash as computed before the schedule keys: promotion without them."""
    import hashlib
    import json

    data = e.model_dump(mode="json")
    data["promotion"] = {k: v for k, v in data["promotion"].items() if k not in _NEW_KEYS}
    data.pop("budget")
    for key in ("backend", "count", "address", "resources", "retries", "timeout_s"):
        data["workers"].pop(key)
    data["workers"].pop("max_failures")
    data["workers"].pop("prefetch")  # added later, how not what: never in the hash
    data["workers"]["kind"] = "local"
    for key, default in {"engine": "hf", "dtype": "float32", "engine_options": {}}.items():
        if data["workers"].get(key) == default:
            del data["workers"][key]
    data["workers"].pop("dispatch")
    # keys other features added since, all at their defaults here (out of the hash too)
    for key in ("holdout", "tokenizer_source", "reference_points", "schedule"):
        data.pop(key, None)
    for objective in data["objectives"]:
        objective.pop("holdout", None)
    canon = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]

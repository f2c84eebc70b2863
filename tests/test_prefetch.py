"""Merging the next candidate while this one is scored (``workers.prefetch``): it changes
nothing a search records, and a prefetched merge fails exactly as a merge in place fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from test_search import EXPERIMENT as SEARCH_EXPERIMENT
from test_search import _trace

from evomerge.errors import MergeError
from evomerge.run import lifecycle as search

# the search tests' experiment, another seed, without the once-per-run reference points
EXPERIMENT: dict[str, Any] = {
    **{k: v for k, v in SEARCH_EXPERIMENT.items() if k != "workers"},
    "name": "unit-prefetch",
    "seed": 5,
    "reference_points": False,
}


def _start(tmp: Path, zoo: Path, prefetch: bool) -> Any:
    path = tmp / f"exp-{prefetch}.yaml"
    exp = {**EXPERIMENT, "workers": {"threads": 1, "prefetch": prefetch}}
    path.write_text(yaml.safe_dump(exp))
    return search.start(path, tmp / f"run-{prefetch}", zoo=zoo)


def test_prefetch_changes_nothing_a_search_records(unit_zoo: Path, tmp_path: Path) -> None:
    runs = {}
    for prefetch in (False, True):
        s, budget = _start(tmp_path, unit_zoo, prefetch)
        assert s.worker.prefetches is prefetch
        assert s.run(budget).status == "finished"
        runs[prefetch] = s
    assert _trace(tmp_path / "run-True") == _trace(tmp_path / "run-False")
    # every candidate but a batch's first was merged ahead, in the background
    ahead = [e for e in runs[True].archive.evaluations if "merge_background" in e.timings]
    assert len(ahead) == 12 - 12 // 4
    assert not any("merge_background" in e.timings for e in runs[False].archive.evaluations)
    for s in runs.values():
        s.worker.close()


def test_prefetch_is_the_default_only_with_a_core_to_spare(unit_zoo: Path, tmp_path: Path) -> None:
    import torch

    from evomerge.workers.local import _core_and_memory_to_spare

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(max(1, (__import__("os").cpu_count() or 1)))
        assert not _core_and_memory_to_spare(1)
    finally:
        torch.set_num_threads(before)
    assert not _core_and_memory_to_spare(2**62)  # two such models do not fit


def test_a_prefetched_merge_fails_as_the_candidates_own(
    unit_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merge of the next recipe raises in the background thread; the error is that
    candidate's (a failed evaluation, the run goes on), as without prefetch."""
    from evomerge.workers import local

    s, _ = _start(tmp_path, unit_zoo, True)
    rng = np.random.default_rng(0)
    r1, r2 = (s.space.decode(rng.random(len(s.space.genes))) for _ in range(2))
    real = local.materialize

    def broken(mp: Any, device: Any = "cpu") -> Any:
        if mp.recipe.content_hash() == r2.content_hash():
            raise MergeError("output tensor 'x' is not finite (test)")
        return real(mp, device)

    monkeypatch.setattr(local, "materialize", broken)
    w = s.worker
    ok = w.evaluate(r1, [0.0], then=r2)
    assert ok.status == "ok" and w._prefetch is not None
    ahead = w.evaluate(r2, [0.0])
    assert ahead.status == "failed" and "not finite (test)" in (ahead.error or "")
    assert "merge_background" not in ahead.timings

    # the same candidate merged in place fails the same way: the engine's resident model
    # streams through materialize there (monkeypatched in evaluate.select's namespace)
    import evomerge.merge.materialize as mat

    monkeypatch.setattr(mat, "materialize", broken)
    w.prefetches = False
    in_place = w.evaluate(r2, [0.0])
    assert (in_place.status, in_place.error) == (ahead.status, ahead.error)
    w.close()


def test_no_merge_ahead_reads_the_sources_once_evaluate_returns(
    unit_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source file truncated between two candidates must be caught by the next candidate's
    check, not by SIGBUS in a background read of its memory map: the merge ahead, however
    slow, is over when ``evaluate`` hands back."""
    import time

    from evomerge.workers import local

    s, _ = _start(tmp_path, unit_zoo, True)
    rng = np.random.default_rng(1)
    r1, r2 = (s.space.decode(rng.random(len(s.space.genes))) for _ in range(2))
    real = local.materialize

    def slow(mp: Any, device: Any = "cpu") -> Any:
        time.sleep(1.0)  # longer than scoring r1
        return real(mp, device)

    monkeypatch.setattr(local, "materialize", slow)
    w = s.worker
    assert w.evaluate(r1, [0.0], then=r2).status == "ok"
    assert w._prefetch is not None and w._prefetch[1].done()
    assert "merge_background" in w.evaluate(r2, [0.0]).timings  # and it is still used
    w.close()


def test_prefetch_is_not_part_of_the_experiment_hash() -> None:
    """How, not what: a run resumes with it switched either way."""
    from evomerge.experiment import Experiment

    hashes = {
        Experiment.parse({**EXPERIMENT, "workers": {"threads": 1, **w}}).content_hash()
        for w in ({}, {"prefetch": True}, {"prefetch": False})
    }
    assert len(hashes) == 1

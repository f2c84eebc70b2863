"""Fronts, hypervolume references and plots for metrics outside [0, 1]: perplexity is minimized
and has no finite worst value, log-prob is maximized and has none either."""

from __future__ import annotations

from pathlib import Path

import pytest
from unit_experiment import one_gene_archive

from evomerge.experiment import Experiment
from evomerge.report import front_table, plot_front
from evomerge.run.archive import Evaluation


def _exp(objectives: list[dict]) -> Experiment:
    return Experiment.parse(
        {
            "name": "u",
            "sources": {"a": "/a"},
            "space": "linear-per-layer",
            "objectives": objectives,
            "budget": 3,
        }
    )


def test_default_references_follow_the_metric_and_direction() -> None:
    exp = _exp([{"task": "t1"}, {"task": "t2", "reference": 40.0}])
    o1, o2 = exp.objectives
    assert exp.default_reference(o1, "token_accuracy") == 0.0
    assert exp.default_reference(o1, "acc", "minimize") == 1.0
    assert exp.default_reference(o1, "exact_match,strict-match") == 0.0  # lm-eval's key
    assert exp.default_reference(o1, "perplexity") is None
    assert exp.default_reference(o1, "logprob") is None
    assert exp.default_reference(o2, "perplexity") == 40.0


def test_front_and_hypervolume_of_perplexity_and_logprob(tmp_path: Path) -> None:
    archive = one_gene_archive(tmp_path, ppl="minimize", lp="maximize")
    points = [(3.0, -1.0), (5.0, -0.5), (4.0, -2.0), (30.0, -3.0)]
    for i, (ppl, lp) in enumerate(points):
        archive.record(Evaluation(f"h{i}", "method: linear\n", [i / 4], [ppl, lp]))
    assert sorted(e.number for e in archive.front()) == [0, 1]  # (4, -2) and (30, -3) dominated
    # by hand: box up to the worst values seen (ppl 30, lp -3):
    # (30-3)·(-1+3) + (30-5)·(-0.5+1) = 54 + 12.5
    assert archive.hypervolume([None, None]) == pytest.approx(66.5)
    assert archive.hypervolume([10.0, -4.0]) == pytest.approx(7 * 3 + 5 * 0.5)
    assert "ppl ↓" in str(front_table(archive).columns[1].header)
    assert plot_front(archive, tmp_path / "f.png").stat().st_size > 0

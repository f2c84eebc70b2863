"""A third-party optimizer installed as a distribution with an ``evomerge.optimizers`` entry point
is found by name, built, and listed among the known optimizers."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from evomerge import optimize
from evomerge.optimize import OptimizerError, make_optimizer, optimizer_class

PLUGIN = textwrap.dedent(
    """
    from typing import Any, ClassVar

    import numpy as np

    from evomerge.optimize.base import Count, Optimizer, OptimizerOptions


    class Corner(Optimizer):
        name: ClassVar[str] = "corner"
        multi_objective: ClassVar[bool] = True

        class Options(OptimizerOptions):
            batch: Count = 2

        def _setup(self) -> None:
            self.told = 0

        def _ask(self) -> list[np.ndarray]:
            return [np.zeros(len(self.genes)) for _ in range(self.options["batch"])]

        def _tell(self, losses: list[np.ndarray | None]) -> None:
            self.told += len(losses)

        def _payload(self) -> Any:
            return self.told

        def _load(self, payload: Any) -> None:
            self.told = payload


    NOT_AN_OPTIMIZER = object()
    """
)


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real (if tiny) installed distribution: a module and its dist-info on sys.path."""
    (tmp_path / "evomerge_corner.py").write_text(PLUGIN)
    info = tmp_path / "evomerge_corner-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evomerge-corner\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[evomerge.optimizers]\n"
        "corner = evomerge_corner:Corner\n"
        "broken = evomerge_corner:NOT_AN_OPTIMIZER\n"
        "missing = evomerge_corner_absent:Thing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(optimize, "OPTIMIZERS", dict(optimize.OPTIMIZERS))
    yield tmp_path
    sys.modules.pop("evomerge_corner", None)


def test_entry_point_optimizer_is_found_lazily_and_built(plugin_dist: Path) -> None:
    from importlib.metadata import entry_points

    assert "corner" in {ep.name for ep in entry_points(group=optimize.ENTRY_POINT_GROUP)}
    assert "corner" not in optimize.OPTIMIZERS  # nothing loaded before it is asked for
    assert "evomerge_corner" not in sys.modules
    cls = optimizer_class("corner")
    assert cls.__module__ == "evomerge_corner" and optimize.OPTIMIZERS["corner"] is cls
    opt = make_optimizer("corner", [optimize.Gene("w"), optimize.Gene("k", 3)], 2, options={})
    genomes = opt.ask()
    assert len(genomes) == 2
    opt.tell(genomes, [[1.0, 2.0], None])
    again = make_optimizer("corner", [optimize.Gene("w"), optimize.Gene("k", 3)], 2)
    again.restore(opt.state())
    assert again.told == 2  # type: ignore[attr-defined]
    with pytest.raises(OptimizerError, match=r"optimizer 'corner': unknown option\(s\) 'bogus'"):
        make_optimizer("corner", [optimize.Gene("w")], 1, options={"bogus": 1})


def test_plugins_are_listed_and_bad_ones_named(plugin_dist: Path) -> None:
    with pytest.raises(OptimizerError, match=r"unknown optimizer 'nope'; known: .*corner.*nsga2"):
        optimizer_class("nope")
    with pytest.raises(OptimizerError, match=r"'broken' .*evomerge_corner:NOT_AN_OPTIMIZER.*not"):
        optimizer_class("broken")
    with pytest.raises(OptimizerError, match=r"'missing' .*cannot be loaded"):
        optimizer_class("missing")
    assert optimizer_class("nsga2") is optimize.OPTIMIZERS["nsga2"]  # built-ins come first

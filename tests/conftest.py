from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from models import make_family, unit_real_preset

# the shared search helpers assert too: their failures explained as a test's are
pytest.register_assert_rewrite("unit_experiment")


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama base and three fine-tunes of it (random task vectors)."""
    return make_family(tmp_path_factory.mktemp("family"))


@pytest.fixture(scope="session")
def unit_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from evomerge.zoo import build_zoo

    d = tmp_path_factory.mktemp("zoo")
    build_zoo(d / "zoo", preset="unit", seed=0)
    return d / "zoo"


@pytest.fixture(scope="session")
def unit_zoo_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unit zoo in the second family: Qwen2 (q/k/v biases, tied embeddings)."""
    from evomerge.zoo import build_zoo

    d = tmp_path_factory.mktemp("zoo-qwen2")
    build_zoo(d / "zoo", preset="unit", seed=0, arch="qwen2")
    return d / "zoo"


@pytest.fixture(scope="session")
def smollm2_unit_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SmolLM2 zoo's layout and code paths on the model's first 2 layers, 2 training steps
    per expert: the real zoo's experiments and tasks run on it (its figures mean nothing)."""
    from evomerge.zoo.real import build_real_zoo

    d = tmp_path_factory.mktemp("zoo-smollm2") / "zoo"
    build_real_zoo(d, preset=unit_real_preset(held_out=40), num_layers=2, threads=1)
    return d


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """One local Ray cluster for a module's in-process runs (2 logical CPUs, no dashboard);
    the tests that ask for it skip where Ray is not installed."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """optuna-botorch fits a GP per ask: minutes per test on 2 CPU cores. Its cases (and tests
    marked ``heavy``) run with ``EVOMERGE_HEAVY=1``; the suite keeps its fast botorch checks."""
    if os.environ.get("EVOMERGE_HEAVY") == "1":
        return
    skip = pytest.mark.skip(reason="a GP fit per ask: EVOMERGE_HEAVY=1 runs it")
    for item in items:
        if "heavy" in item.keywords or "[optuna-botorch" in item.nodeid:
            item.add_marker(skip)


@pytest.fixture
def console_width(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Sets the CLI console's width for one test: rich reads COLUMNS once, when the console is
    built, so an ``env={"COLUMNS": …}`` per invoke does not reach it everywhere."""
    from evomerge.cli.app import console

    def set_width(columns: int) -> None:
        monkeypatch.setattr(console, "_width", columns)

    return set_width

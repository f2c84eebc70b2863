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


CHEAP = {"num_restarts": 2, "raw_samples": 32, "mc_samples": 16, "maxiter": 20}


def _data(m: int, n: int = 6, d: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(m)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    obj = torch.stack([-((x - c) ** 2).sum(-1) for c in (0.3, 0.7)][:m], -1)
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).double()
    return x, obj, bounds, x[:1] * 0.5 + 0.25  # a pending point


def test_qlogei_at_upstream_settings_is_optuna_integrations() -> None:
    """Our candidates function with optuna-integration's settings asks what theirs asks."""
    from botorch.utils.sampling import manual_seed

    from evomerge.optimize.botorch import _candidates_func

    x, obj, bounds, pending = _data(1)
    ours = _candidates_func("qlogei", {"num_restarts": 10, "raw_samples": None})
    assert ours is not ob.qlogei_candidates_func  # a setting given: our function
    with manual_seed(3):
        want = ob.qlogei_candidates_func(x, obj, None, bounds, pending)
    with manual_seed(3):
        got = ours(x, obj, None, bounds, pending)
    assert torch.equal(got, want)


def test_qnehvi_builds_optuna_integrations_acquisition(monkeypatch) -> None:
    """Same GP and qLogNEHVI values as optuna-integration's; the settings reach optimize_acqf;
    only the (wrong, for a log acquisition) ``nonnegative`` start heuristic is dropped."""
    import botorch.optim
    from botorch.utils.sampling import manual_seed
    from optuna_integration.botorch import botorch as upstream

    from evomerge.optimize.botorch import _candidates_func

    calls = []

    def record(acq_function, bounds, **kw):
        calls.append((acq_function, kw))
        return bounds[:1].clone(), None

    monkeypatch.setattr(botorch.optim, "optimize_acqf", record)
    monkeypatch.setattr(upstream, "optimize_acqf", record)
    x, obj, bounds, pending = _data(2)
    for fn in (ob.qnehvi_candidates_func, _candidates_func("qnehvi", {"maxiter": 200})):
        with manual_seed(5):
            fn(x, obj, None, bounds, pending)
    (theirs, kw_theirs), (ours, kw_ours) = calls
    probe = torch.rand(9, 1, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(ours(probe), theirs(probe), rtol=1e-9, atol=1e-12)
    assert kw_theirs["options"].pop("nonnegative") is True
    assert kw_ours == kw_theirs  # 20 restarts, 1024 raw samples, maxiter 200, q=1, sequential
    assert ours.sampler.sample_shape == theirs.sampler.sample_shape == torch.Size([256])

    calls.clear()
    _candidates_func("qnehvi", CHEAP)(x, obj, None, bounds, pending)
    ((acq, kw),) = calls
    assert (kw["num_restarts"], kw["raw_samples"], kw["options"]["maxiter"]) == (2, 32, 20)
    assert acq.sampler.sample_shape == torch.Size([16])


def test_cheaper_acquisition_resumes_exactly() -> None:
    m, options = 2, {**OPTIONS, **CHEAP}
    whole = drive(make_optimizer("optuna-botorch", GENES, m, seed=2, options=options), m, 3)
    first = make_optimizer("optuna-botorch", GENES, m, seed=2, options=options)
    asked = drive(first, m, 2, disturb=True)
    resumed = make_optimizer("optuna-botorch", GENES, m, seed=2, options=options)
    resumed.restore(first.state())
    asked += drive(resumed, m, 1)
    assert all(np.array_equal(u, v) for u, v in zip(asked, whole, strict=True))
    other = {**options, "mc_samples": 4, "maxiter": 2}  # the settings change what is asked
    assert not np.array_equal(
        drive(make_optimizer("optuna-botorch", GENES, m, seed=2, options=other), m, 2)[2], whole[2]
    )


def test_acquisition_settings_only_for_qnehvi_and_qlogei() -> None:
    with pytest.raises(OptimizerError, match="apply to acquisition qnehvi or qlogei"):
        make_optimizer("optuna-botorch", GENES, 2, options={"acquisition": "qparego", **CHEAP})
    with pytest.raises(OptimizerError, match="raw_samples"):
        make_optimizer("optuna-botorch", GENES, 2, options={"raw_samples": 0})


def test_unset_acquisition_settings_keep_older_checkpoints_comparable() -> None:
    """Options are compared on restore; the four settings came later, so when unset they are
    not among the options kept (a checkpoint written before them holds the same dict)."""
    default = make_optimizer("optuna-botorch", GENES, 2, options=OPTIONS)
    assert not {"num_restarts", "raw_samples", "mc_samples", "maxiter"} & set(default.options)
    cheap = make_optimizer("optuna-botorch", GENES, 2, options={**OPTIONS, "num_restarts": 2})
    assert cheap.options["num_restarts"] == 2

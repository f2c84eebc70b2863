"""The optimizer layer: bounds, learning, exact resume, failures and errors, for every optimizer."""

from __future__ import annotations

import functools
import importlib.util
import math
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from evomerge.errors import EvomergeError
from evomerge.optimize import ALIASES, OPTIMIZERS, Gene, Optimizer, OptimizerError, make_optimizer
from evomerge.optimize.base import penalty, update_worst
from evomerge.optimize.cmaes import CMAES
from evomerge.testing import optimizers as kit
from evomerge.testing.optimizers import GENES, N_REAL, same, toy_loss
from evomerge.testing.optimizers import drive as _drive

# Small settings so every optimizer reaches its model-based phase within a few batches. The GP
# fits a model per suggestion (~0.3 s, ~1 s with two objectives on a loaded 2-core machine), so
# it gets tiny batches, one objective and fewer batches; test_gp_two_objectives covers the rest.
TEST_OPTIONS: dict[str, dict] = {
    "nsga2": {"pop_size": 8},
    "nsga3": {"pop_size": 8},
    "optuna-tpe": {"n_startup_trials": 8},
    "optuna-nsga2": {"population_size": 8},
    "optuna-nsga3": {"population_size": 8},
    "optuna-gp": {"batch": 2, "n_startup_trials": 2},
    "optuna-botorch": {"batch": 2, "n_startup_trials": 2},
}
GPS = ("optuna-gp", "optuna-botorch")  # a GP fit per suggestion: fewer, smaller batches


def _param(name: str) -> object:
    if name == "optuna-cmaes" and importlib.util.find_spec("cmaes") is None:
        return pytest.param(name, marks=pytest.mark.skip(reason="the 'cmaes' package is absent"))
    if name == "optuna-botorch" and importlib.util.find_spec("botorch") is None:
        return pytest.param(name, marks=pytest.mark.skip(reason="the 'botorch' extra is absent"))
    return name


NAMES = [_param(name) for name in sorted(OPTIMIZERS)]
SINGLE = [name for name, cls in sorted(OPTIMIZERS.items()) if not cls.multi_objective]


def _m(name: str) -> int:
    return 2 if OPTIMIZERS[name].multi_objective and name not in GPS else 1


def _batches(name: str) -> int:
    """Batches in a recorded trajectory."""
    return 3 if name in GPS else 4


def _make(name: str, n_objectives: int | None = None, seed: int = 7) -> Optimizer:
    m = _m(name) if n_objectives is None else n_objectives
    return make_optimizer(name, GENES, m, seed=seed, options=TEST_OPTIONS.get(name))


@functools.cache
def _trajectory(name: str) -> list[list[np.ndarray]]:
    return _drive(_make(name), _m(name), range(_batches(name)))


# -- bounds and integers ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_genomes_respect_bounds_and_integer_genes(name: str) -> None:
    asks = _trajectory(name)
    assert len(asks) == _batches(name) and all(asks)
    kit.check_bounds(asks + _learning_run(name)[0])


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_on_integer_only_and_tiny_gene_sets(name: str) -> None:
    kit.check_tiny_gene_sets(name, _m(name), TEST_OPTIONS.get(name))


# -- learning --------------------------------------------------------------------------------


@functools.cache
def _learning_run(name: str) -> tuple[list[list[np.ndarray]], list[list[float]]]:
    """Asks and, per batch, summed losses of ~100 evaluations (20 for the costly GP)."""
    m = _m(name)
    options, budget = TEST_OPTIONS.get(name), 96
    if name in GPS:  # botorch's qLogEI explores longer before it settles: 8 more evaluations
        options, budget = (
            {"batch": 4, "n_startup_trials": 4},
            28 if name == "optuna-botorch" else 20,
        )
    opt = make_optimizer(name, GENES, m, seed=3, options=options)
    asks: list[list[np.ndarray]] = []
    scores: list[list[float]] = []
    while sum(map(len, scores)) < budget:
        genomes = opt.ask()
        losses = [toy_loss(x, m) for x in genomes]
        opt.tell(genomes, losses)
        asks.append(genomes)
        scores.append([sum(loss) for loss in losses])
    return asks, scores


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_improves_on_toy_problem(name: str) -> None:
    scores = _learning_run(name)[1]
    first, rest = min(scores[0]), min(s for batch in scores[1:] for s in batch)
    # Random search (the baseline) only gets lucky; a learner must do clearly better.
    assert rest < (0.75 if name == "random" else 0.5) * first, (first, rest)
    if name not in ("random", *GPS):  # population methods: the proposals themselves move
        assert np.median(scores[-1]) < 0.5 * np.median(scores[0]), (scores[0], scores[-1])


# -- exact resume ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_resume_is_bit_identical(name: str) -> None:
    """After any batch, and with a batch pending, numpy's global generator disturbed between."""
    reference = kit.check_resume(name, _m(name), TEST_OPTIONS.get(name), _batches(name))
    assert same(reference, _trajectory(name))


@pytest.mark.parametrize("name", NAMES)
def test_global_numpy_rng_is_left_alone(name: str) -> None:
    kit.check_global_rng(name, _m(name), TEST_OPTIONS.get(name))


def test_same_seed_same_asks_other_seed_other_asks() -> None:
    for name in ("random", "cma", "nsga2", "optuna-tpe"):
        kit.check_determinism(name, _m(name), TEST_OPTIONS.get(name))


def test_gp_two_objectives() -> None:
    options = {"batch": 2, "n_startup_trials": 2}
    a = make_optimizer("optuna-gp", GENES, 2, seed=1, options=options)
    asks = _drive(a, 2, range(2))
    b = make_optimizer("optuna-gp", GENES, 2, seed=1, options=options)
    _drive(b, 2, range(1))
    resumed = make_optimizer("optuna-gp", GENES, 2, seed=1, options=options)
    resumed.restore(b.state())
    assert same(asks[1:], _drive(resumed, 2, range(1, 2)))


# -- cma specifics ---------------------------------------------------------------------------


def test_cma_ipop_restart_doubles_the_population() -> None:
    opt = make_optimizer("cma", GENES, 1, seed=0, options={"popsize": 4, "restarts": 2})
    assert isinstance(opt, CMAES)
    sizes = []
    for _ in range(6):
        genomes = opt.ask()
        sizes.append(len(genomes))
        opt.tell(genomes, [[1.0]] * len(genomes))  # flat fitness: cma stops at once
    assert sizes == [4, 8, 16, 16, 16, 16]
    assert opt.restarts_done == 2
    state = opt.state()
    again = make_optimizer("cma", GENES, 1, seed=0, options={"popsize": 4, "restarts": 2})
    again.restore(state)
    assert again.restarts_done == 2 and len(again.ask()) == 16


def test_cma_started_from_genomes_asks_them_then_searches_around_the_best() -> None:
    """A schedule's later stage: the coarser stage's candidates are asked first (archive hits),
    then cma starts at the one with the lowest loss, sigma0 around it (a trust region)."""
    seeds = [np.array([0.1, 0.2, 0.3, 0.4, 1.0, 0.0]), np.array([0.9, 0.7, 0.6, 0.8, 2.0, 1.0])]
    seeds.append(np.array([0.5, 0.5, 0.5, 0.5, 0.0, 1.0]))
    opt = make_optimizer("cma", GENES, 1, seed=0, options={"sigma0": 0.02})
    assert opt.start_from(seeds) == 3
    asked = opt.ask()
    assert [a.tolist() for a in asked] == [s.tolist() for s in seeds]
    state = opt.state()
    opt.tell(asked, [[3.0], [1.0], [2.0]])
    best = seeds[1]
    assert np.allclose(opt._es.mean[:N_REAL], best[:N_REAL])
    batch = np.stack(opt.ask())
    assert np.abs(batch[:, :N_REAL] - best[:N_REAL]).max() < 0.15  # 0.02 × 6 at most, almost surely
    # restored between the seeds' ask and tell, it starts from the same best
    again = make_optimizer("cma", GENES, 1, seed=0, options={"sigma0": 0.02})
    again.restore(state)
    again.tell(asked, [[3.0], [1.0], [2.0]])
    assert np.array_equal(np.stack(again.ask()), batch)


def test_cma_x0_and_alias() -> None:
    opt = make_optimizer("cmaes", GENES, 1, options={"x0": [0.1] * 4 + [1.0, 0.0], "sigma0": 1e-3})
    assert isinstance(opt, CMAES)
    batch = np.stack(opt.ask())
    assert np.allclose(batch[:, :N_REAL], 0.1, atol=0.02)
    assert set(batch[:, N_REAL]) == {2.0} and set(batch[:, N_REAL + 1]) == {0.0}


# -- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_failed_candidates_are_survived(name: str) -> None:
    kit.check_failures(name, _m(name), TEST_OPTIONS.get(name))


def test_penalty_is_worse_than_every_finite_loss() -> None:
    worst = np.full(2, np.nan)
    assert np.all(penalty(worst) == 1.0)
    worst = update_worst(worst, [None, np.array([-5.0, 3.0]), np.array([-7.0, 10.0])])
    assert np.array_equal(worst, [-5.0, 10.0])
    assert np.all(penalty(worst) > worst)
    assert np.array_equal(update_worst(worst, [None]), worst)


def test_nsga2_failures_never_outrank_later_finite_losses() -> None:
    opt = make_optimizer("nsga2", GENES, 1, seed=0, options={"pop_size": 8})
    genomes = opt.ask()
    opt.tell(genomes, [None] * len(genomes))  # penalty 1.0: nothing finite seen yet
    genomes = opt.ask()
    opt.tell(genomes, [[100.0 + i] for i in range(len(genomes))])
    pop = opt._algorithm.pop  # the survivors: all finite ones beat the re-penalized failures
    assert sorted(pop.get("F")[:, 0]) == [100.0 + i for i in range(8)]


def test_optuna_failures_are_failed_trials() -> None:
    from optuna.trial import TrialState

    opt = make_optimizer("optuna-tpe", GENES, 1, options={"batch": 4})
    genomes = opt.ask()
    opt.tell(genomes, [None, [math.nan], [math.inf], [0.5]])
    states = [t.state for t in opt._study.trials]
    assert states == [TrialState.FAIL] * 3 + [TrialState.COMPLETE]


@pytest.mark.parametrize("multivariate", [True, False])
def test_tpe_sampler_options_reach_optuna(multivariate: bool) -> None:
    """``multivariate`` (the demo's TPE setting; optuna's multi-objective default is independent)
    is the sampler's own: our asks are those of optuna's TPESampler driven by hand."""
    import optuna
    from optuna.distributions import FloatDistribution

    genes = [Gene(f"w{i}") for i in range(5)]
    options = {"batch": 4, "n_startup_trials": 4, "multivariate": multivariate}
    opt = make_optimizer("optuna-tpe", genes, 2, seed=3, options=options)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=3, n_startup_trials=4, multivariate=multivariate)
    study = optuna.create_study(directions=["minimize"] * 2, sampler=sampler)
    dists = {g.name: FloatDistribution(0.0, 1.0) for g in genes}

    def losses(x: np.ndarray) -> list[float]:
        return [float(np.sum((x - 0.2) ** 2)), float(np.sum((x - 0.7) ** 2))]

    asked = []
    for _ in range(4):
        genomes = opt.ask()
        trials = [study.ask(dists) for _ in genomes]
        ref = [np.array([t.params[g.name] for g in genes]) for t in trials]
        np.testing.assert_array_equal(np.asarray(genomes), np.asarray(ref))
        opt.tell(genomes, [losses(x) for x in genomes])
        for t, x in zip(trials, ref, strict=True):
            study.tell(t, losses(x))
        asked.append(np.asarray(genomes))
    other = make_optimizer(
        "optuna-tpe", genes, 2, seed=3, options={**options, "multivariate": not multivariate}
    )
    theirs = []
    for _ in asked:
        got = other.ask()
        other.tell(got, [losses(x) for x in got])
        theirs.append(np.asarray(got))
    np.testing.assert_array_equal(theirs[0], asked[0])  # the random start: the same
    assert not np.array_equal(theirs[-1], asked[-1])  # the modelled batches: the option tells


# -- errors ----------------------------------------------------------------------------------


def test_unknown_optimizer_lists_known_ones() -> None:
    with pytest.raises(OptimizerError, match=r"unknown optimizer 'nope'; known: .*cma.*nsga2"):
        make_optimizer("nope", GENES, 1)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("cma", {"popsiz": 4}, r"unknown option\(s\) 'popsiz'; accepted: .*popsize"),
        ("random", {"pop_size": 4}, r"unknown option\(s\) 'pop_size'; accepted: batch"),
        ("optuna-tpe", {"bogus": 1}, r"'bogus'; accepted: .*n_startup_trials"),
        ("optuna-tpe", {"seed": 1}, r"'seed' is an argument of make_optimizer, not an option"),
        ("cma", {"popsize": 1}, r"'popsize' must be an integer >= 2"),
        ("cma", {"popsize": 4.0}, r"'popsize' must be an integer"),
        ("cma", {"sigma0": 0}, r"'sigma0' must be a finite number > 0"),
        ("cma", {"sigma0": -0.1}, r"'sigma0'"),
        ("cma", {"restarts": -1}, r"'restarts' must be an integer >= 0"),
        ("cma", {"x0": [0.5] * 5}, r"'x0' must list 6 numbers"),
        ("cma", {"x0": [0.5] * 5 + [1.5]}, r"'x0' must list 6 numbers in \[0, 1\]"),
        ("random", {"batch": 0}, r"'batch' must be an integer >= 1"),
        ("nsga2", {"pop_size": 1}, r"'pop_size' must be an integer >= 2"),
        ("optuna-tpe", {"batch": 0}, r"'batch' must be an integer >= 1"),
        ("optuna-nsga2", {"population_size": 1}, r"bad option .*population_size"),
    ],
)
def test_bad_options(name: str, options: dict, match: str) -> None:
    with pytest.raises(OptimizerError, match=match):
        make_optimizer(name, GENES, 1, options=options)


@pytest.mark.skipif(importlib.util.find_spec("cmaes") is not None, reason="cmaes is installed")
def test_optuna_cmaes_without_the_cmaes_package_says_what_to_install() -> None:
    with pytest.raises(OptimizerError, match=r"needs the 'cmaes' package \(pip install cmaes\)"):
        make_optimizer("optuna-cmaes", GENES, 1)


def test_nsga3_partitions_default_to_fit_the_population() -> None:
    opt = make_optimizer("nsga3", GENES, 3, options={"pop_size": 16})
    assert opt.options["n_partitions"] == 4  # 15 directions; 5 partitions would need 21
    assert len(opt.ask()) == 16
    with pytest.raises(OptimizerError, match=r"more than pop_size=2"):
        make_optimizer("nsga3", GENES, 3, options={"pop_size": 2})
    with pytest.raises(OptimizerError, match=r"13 reference directions .* pop_size=8"):
        make_optimizer("nsga3", GENES, 2, options={"pop_size": 8, "n_partitions": 12})


@pytest.mark.parametrize("name", SINGLE)
def test_single_objective_optimizer_asks_to_scalarize(name: str) -> None:
    with pytest.raises(OptimizerError, match=r"single-objective .* 2 objectives; scalarize"):
        make_optimizer(name, GENES, 2)


@pytest.mark.parametrize(
    ("genes", "n_objectives", "seed", "match"),
    [
        ([], 1, 0, r"at least one gene"),
        ([Gene("a"), Gene("a", 3)], 1, 0, r"'a' appears twice"),
        ([Gene("a", 1)], 1, 0, r"choices must be an integer >= 2"),
        ([Gene("a", 2.5)], 1, 0, r"choices must be an integer >= 2"),  # type: ignore[arg-type]
        ([Gene("a", True)], 1, 0, r"choices must be an integer >= 2"),
        ([Gene("a")], 0, 0, r"n_objectives must be an integer >= 1"),
        ([Gene("a")], 1, -1, r"seed must be a non-negative integer"),
    ],
)
def test_bad_genes_objectives_and_seed(genes: list, n_objectives: int, seed: int, match: str):
    with pytest.raises(OptimizerError, match=match):
        make_optimizer("random", genes, n_objectives, seed=seed)


def test_optimizer_error_is_an_evomerge_and_value_error() -> None:
    assert issubclass(OptimizerError, EvomergeError) and issubclass(OptimizerError, ValueError)


@pytest.mark.parametrize("name", ["random", "cma", "nsga2", "optuna-tpe"])
def test_tell_must_match_the_batch_asked(name: str) -> None:
    m = _m(name)
    opt = _make(name)
    with pytest.raises(OptimizerError, match=r"tell\(\) without a pending ask\(\)"):
        opt.tell([], [])
    genomes = opt.ask()
    losses = [toy_loss(x, m) for x in genomes]
    with pytest.raises(OptimizerError, match=r"ask\(\) called twice"):
        opt.ask()
    with pytest.raises(OptimizerError, match=r"told \d+ genomes but the batch asked has"):
        opt.tell(genomes[:-1], losses[:-1])
    changed = [x.copy() for x in genomes]
    changed[1][0] = 1.0 - changed[1][0] + 1e-3
    with pytest.raises(OptimizerError, match=r"genome 1 told differs from the one asked"):
        opt.tell(changed, losses)
    with pytest.raises(OptimizerError, match=r"expected \d+ losses \(one per genome\)"):
        opt.tell(genomes, losses[:-1])
    with pytest.raises(OptimizerError, match=rf"loss 0 has shape \(3,\), expected {m} value"):
        opt.tell(genomes, [[1.0, 2.0, 3.0], *losses[1:]])
    with pytest.raises(OptimizerError, match=r"loss 1 is not numeric"):
        opt.tell(genomes, [losses[0], ["x"] * m, *losses[2:]])
    opt.tell(genomes, losses)  # the failed attempts changed nothing
    assert opt.ask()


def test_scalar_losses_are_accepted_for_one_objective() -> None:
    opt = make_optimizer("cma", GENES, 1)
    genomes = opt.ask()
    opt.tell(genomes, [toy_loss(x, 1)[0] for x in genomes])
    two = make_optimizer("nsga2", GENES, 2, options={"pop_size": 4})
    genomes = two.ask()
    with pytest.raises(OptimizerError, match=r"expected 2 value"):
        two.tell(genomes, [1.0] * len(genomes))


def test_restore_rejects_foreign_states() -> None:
    cma_state = make_optimizer("cma", GENES, 1).state()
    with pytest.raises(OptimizerError, match=r"different optimizer \(optimizer, options differ"):
        make_optimizer("optuna-tpe", GENES, 1).restore(cma_state)
    with pytest.raises(OptimizerError, match=r"genes differ"):
        make_optimizer("cma", GENES[:-1], 1).restore(cma_state)
    with pytest.raises(OptimizerError, match=r"seed differ"):
        make_optimizer("cma", GENES, 1, seed=1).restore(cma_state)
    with pytest.raises(OptimizerError, match=r"options differ"):
        make_optimizer("cma", GENES, 1, options={"sigma0": 0.3}).restore(cma_state)
    nsga_state = make_optimizer("nsga2", GENES, 2).state()
    with pytest.raises(OptimizerError, match=r"n_objectives differ: state has n_objectives=2"):
        make_optimizer("nsga2", GENES, 1).restore(nsga_state)
    with pytest.raises(OptimizerError, match=r"\(optimizer, options differ"):
        make_optimizer("nsga3", GENES, 2).restore(nsga_state)
    with pytest.raises(OptimizerError, match=r"unreadable state"):
        make_optimizer("random", GENES, 1).restore(b"not a pickle")
    with pytest.raises(OptimizerError, match=r"not an optimizer state"):
        make_optimizer("random", GENES, 1).restore(b"\x80\x04K\x01.")  # pickle of 1


@pytest.mark.parametrize(
    ("name", "library"), [("cma", "cma"), ("nsga2", "pymoo"), ("optuna-tpe", "optuna")]
)
def test_state_from_other_library_versions_is_refused_before_unpickling(
    name: str, library: str
) -> None:
    import pickle
    from importlib.metadata import version

    opt = _make(name)
    opt.tell(genomes := opt.ask(), [toy_loss(x, _m(name)) for x in genomes])
    header = pickle.loads(opt.state())
    assert header["versions"] == {"numpy": version("numpy"), library: version(library)}
    for lib in ("numpy", library):
        written = {**header["versions"], lib: "0.0.1"}
        # a payload the other version wrote may not even unpickle here: it is never tried
        fake = pickle.dumps({**header, "versions": written, "payload": b"\x80\x04garbage"})
        pattern = rf"written with {lib} 0\.0\.1, but {lib} {re.escape(version(lib))} is installed"
        with pytest.raises(OptimizerError, match=pattern):
            _make(name).restore(fake)
    again = _make(name)
    again.restore(opt.state())  # the same versions: resumes
    assert same([again.ask()], [opt.ask()])


def test_states_written_before_versions_were_kept_still_resume() -> None:
    from evomerge.optimize.base import dumps_state

    opt = _make("cma")
    pending = opt.ask()
    old = dumps_state(  # format 1: one pickle, payload inline, no versions
        {"format": 1, "identity": opt._identity(), "pending": pending, "payload": opt._payload()}
    )
    again = _make("cma")
    again.restore(old)
    assert same([again.pending or []], [pending])


def test_importing_the_package_loads_no_optimizer_library() -> None:
    code = (
        "import sys, evomerge.optimize; "
        "print(sorted(m for m in ('cma', 'pymoo', 'optuna', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registry() -> None:
    assert set(OPTIMIZERS) == {
        "random",
        "cma",
        "nsga2",
        "nsga3",
        "optuna-tpe",
        "optuna-cmaes",
        "optuna-nsga2",
        "optuna-nsga3",
        "optuna-gp",
        "optuna-botorch",
    }
    assert ALIASES == {"cmaes": "cma"}
    for name, cls in OPTIMIZERS.items():
        assert cls.name == name and isinstance(cls.multi_objective, bool)
    assert not OPTIMIZERS["cma"].multi_objective and not OPTIMIZERS["optuna-cmaes"].multi_objective
    assert OPTIMIZERS["nsga2"].multi_objective and OPTIMIZERS["optuna-gp"].multi_objective


@pytest.mark.parametrize("name", ["nsga2", "nsga3"])
def test_pymoo_variation_strength_is_an_option(name: str) -> None:
    def second_batch(**options: float) -> np.ndarray:
        opt = make_optimizer(name, GENES, 2, seed=0, options={"pop_size": 6, **options})
        first = opt.ask()
        opt.tell(first, [[float(x[0]), float(1 - x[0])] for x in first])
        return np.stack(opt.ask())

    default = second_batch()
    assert np.array_equal(default, second_batch())  # deterministic
    assert not np.array_equal(default, second_batch(eta_crossover=2.0, eta_mutation=2.0))
    with pytest.raises(OptimizerError, match=r"'eta_mutation' must be a finite number > 0"):
        make_optimizer(name, GENES, 2, options={"eta_mutation": 0})


def test_locks_in_optimizer_state_pickle_as_fresh_locks() -> None:
    """optuna 5.1's GA samplers hold a threading.Lock; a state must not depend on the library
    leaving none in its objects (plain pickle refuses them)."""
    import threading

    from evomerge.optimize.base import dumps_state

    held, rheld = threading.Lock(), threading.RLock()
    held.acquire()
    rheld.acquire()
    state = {"lock": held, "rlock": rheld, "value": np.arange(3)}
    with pytest.raises(TypeError, match="lock"):
        pickle.dumps(state)
    back = pickle.loads(dumps_state(state))
    assert isinstance(back["lock"], type(threading.Lock()))
    assert isinstance(back["rlock"], type(threading.RLock()))
    assert back["lock"].acquire(blocking=False)  # fresh: not the held one's state
    assert back["rlock"].acquire(blocking=False)
    assert back["value"].tolist() == [0, 1, 2]


def test_gp_acquisition_options_reach_the_sampler() -> None:
    """The GP's acquisition effort is set on optuna's private attributes (no keyword exists):
    this pins their names, and that the sampler really uses them."""
    from unittest import mock

    # the sampler's own handle: optuna's lazy import copies the module's functions into it
    from optuna.samplers._gp.sampler import optim_mixed

    opt = make_optimizer(
        "optuna-gp", GENES, 2, seed=3,
        options={"batch": 1, "n_startup_trials": 2, "acquisition_candidates": 64,
                 "acquisition_restarts": 3},
    )  # fmt: skip
    sampler = opt._study.sampler
    assert (sampler._n_preliminary_samples, sampler._n_local_search) == (64, 3)
    seen: list[tuple[int, int]] = []
    real = optim_mixed.optimize_acqf_mixed

    def spy(*args: object, **kwargs: object) -> object:
        seen.append((kwargs["n_preliminary_samples"], kwargs["n_local_search"]))  # type: ignore[arg-type]
        return real(*args, **kwargs)

    with mock.patch.object(optim_mixed, "optimize_acqf_mixed", spy):
        _drive(opt, 2, range(4))
    assert seen and set(seen) == {(64, 3)}  # asks past the random start used them
    again = _make("optuna-gp", 2)  # and the defaults stay optuna's
    assert again._study.sampler._n_local_search == 10
    with pytest.raises(OptimizerError, match="acquisition_restarts must be at least 2"):
        make_optimizer("optuna-gp", GENES, 2, options={"acquisition_restarts": 1})

"""What the search loop relies on from an optimizer: genomes inside the genes' bounds (integer
genes integral and searched), the same asks for the same seed, a state that resumes to the last
bit (a batch pending included), failures survived, and numpy's global generator left alone."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from evomerge.optimize import Gene, Optimizer, OptimizerError, optimizer_class

# four real genes and two integer ones: the shape of a space with routing or method choices
GENES = [Gene(f"w{i}") for i in range(4)] + [Gene("layer", 3), Gene("method", 3)]
N_REAL = 4
Asks = list[list[np.ndarray]]
OptimizerRef = str | type[Optimizer]


def build(
    optimizer: OptimizerRef,
    n_objectives: int,
    *,
    seed: int = 7,
    options: Mapping[str, Any] | None = None,
    genes: list[Gene] | None = None,
) -> Optimizer:
    """An optimizer by registered name or by class, over the kit's genes by default."""
    cls = optimizer_class(optimizer) if isinstance(optimizer, str) else optimizer
    return cls(GENES if genes is None else genes, n_objectives, seed=seed, **dict(options or {}))


def toy_loss(x: np.ndarray, m: int) -> list[float]:
    """Two mildly conflicting spheres; each integer gene has a best choice."""
    ints = 0.05 * abs(x[N_REAL] - 2) + 0.05 * abs(x[N_REAL + 1] - 1)
    f1 = float(np.sum((x[:N_REAL] - 0.3) ** 2) + ints)
    f2 = float(np.sum((x[:N_REAL] - 0.45) ** 2) + ints)
    return [f1, f2][:m]


def drive(
    opt: Optimizer, m: int, batches: range, between: Callable[[], object] | None = None
) -> Asks:
    """Ask and tell ``batches``; batch 1 carries failures: a None, a NaN and an inf loss."""
    asks = []
    for j in batches:
        genomes = opt.ask()
        asks.append(genomes)
        if between is not None:
            between()
        losses: list[list[float] | None] = [toy_loss(x, m) for x in genomes]
        if j == 1:
            losses[0] = None
            losses[-1] = [math.nan] * m
            if len(losses) > 2:
                losses[1] = [math.inf] * m
        opt.tell(genomes, losses)
    return asks


def same(a: Asks, b: Asks) -> bool:
    """Bit for bit the same asks, batch by batch."""
    if [len(x) for x in a] != [len(y) for y in b]:
        return False
    pairs = zip([u for x in a for u in x], [v for y in b for v in y], strict=True)
    return all(np.array_equal(u, v) for u, v in pairs)


def _noise() -> None:
    """Another user of numpy's global generator, between asks."""
    np.random.seed(12345)
    np.random.rand(17)


def check_bounds(asks: Asks, genes: list[Gene] = GENES) -> None:
    """Float64 genomes inside [0, 1] (a real gene) or on a choice (an integer gene), no -0.0,
    and every integer gene searched (two choices at least over the asks)."""
    genomes = np.stack([x for batch in asks for x in batch])
    assert genomes.dtype == np.float64, f"genomes are {genomes.dtype}, not float64"
    assert genomes.shape[1] == len(genes), f"{genomes.shape[1]} genes asked, not {len(genes)}"
    for k, g in enumerate(genes):
        col = genomes[:, k]
        if g.choices:
            assert np.all(col == np.round(col)), f"gene {g.name!r}: a non-integer choice"
            assert np.all((col >= 0) & (col < g.choices)), f"gene {g.name!r}: outside its choices"
            assert len(set(col)) >= 2, f"integer gene {g.name!r} is never searched"
        else:
            assert np.all((col >= 0) & (col <= 1)), f"gene {g.name!r}: outside [0, 1]"
    assert not np.any(np.signbit(genomes)), "a -0.0 in a genome (it hashes apart from 0.0)"


def check_determinism(optimizer: OptimizerRef, m: int, options: Mapping[str, Any] | None) -> None:
    """The same seed asks the same genomes; another seed, others."""
    a = drive(build(optimizer, m, seed=5, options=options), m, range(2))
    b = drive(build(optimizer, m, seed=5, options=options), m, range(2))
    c = drive(build(optimizer, m, seed=6, options=options), m, range(2))
    assert same(a, b), "the same seed asked different genomes"
    assert not same(a, c), "another seed asked the very same genomes"


def check_resume(
    optimizer: OptimizerRef, m: int, options: Mapping[str, Any] | None, batches: int = 4
) -> Asks:
    """A state saved after any batch, or with a batch asked and not told, restores into a fresh
    optimizer that goes on to ask what the uninterrupted one asks, to the last bit (numpy's
    global generator disturbed in between). Returns the uninterrupted asks."""
    reference = drive(build(optimizer, m, options=options), m, range(batches))
    for j in range(batches):
        first = build(optimizer, m, options=options)
        asks = drive(first, m, range(j), between=_noise)
        state = first.state()
        _noise()
        resumed = build(optimizer, m, options=options)
        resumed.restore(state)
        asks += drive(resumed, m, range(j, batches), between=_noise)
        assert same(asks, reference), f"resumed after {j} batch(es): other asks"
    first = build(optimizer, m, options=options)
    asks = drive(first, m, range(2))
    asked = first.ask()
    resumed = build(optimizer, m, options=options)
    resumed.restore(first.state())
    try:
        resumed.ask()
    except OptimizerError:
        pass  # the batch asked before the state was saved must be told first
    else:
        raise AssertionError("a restored optimizer with a batch pending asked another")
    pending = resumed.pending  # what a resumed search loop evaluates first
    assert pending is not None and same([pending], [asked]), "the pending batch is lost"
    resumed.tell(pending, [toy_loss(x, m) for x in pending])
    assert resumed.pending is None
    asks += [pending, *drive(resumed, m, range(3, batches))]
    assert same(asks, reference), "resumed with a batch pending: other asks"
    return reference


def check_failures(optimizer: OptimizerRef, m: int, options: Mapping[str, Any] | None) -> None:
    """A batch that fails whole before any loss is known, then failures among losses (None, a
    NaN component), and the optimizer still asks."""
    opt = build(optimizer, m, seed=11, options=options)
    genomes = opt.ask()
    opt.tell(genomes, [None] * len(genomes))
    genomes = opt.ask()
    losses: list[list[float] | None] = [
        None if i % 3 == 0 else toy_loss(x, m) for i, x in enumerate(genomes)
    ]
    losses[-1] = [math.nan] + [0.0] * (m - 1)
    opt.tell(genomes, losses)
    for _ in range(2):
        genomes = opt.ask()
        assert genomes, "no genomes asked after failures"
        opt.tell(genomes, [toy_loss(x, m) for x in genomes])


def check_global_rng(optimizer: OptimizerRef, m: int, options: Mapping[str, Any] | None) -> None:
    """Asking, telling, saving and restoring leave numpy's global generator where it was (a
    user's own draws, and other optimizers', must not move with ours)."""
    np.random.seed(99)
    expected = np.random.rand(3)
    np.random.seed(99)
    opt = build(optimizer, m, options=options)
    drive(opt, m, range(2))
    opt.restore(opt.state())
    assert np.array_equal(np.random.rand(3), expected), "numpy's global generator moved"


def check_tiny_gene_sets(
    optimizer: OptimizerRef, m: int, options: Mapping[str, Any] | None
) -> None:
    """One integer gene of two choices, or one real gene: still asks, inside the bounds."""
    for genes in ([Gene("only", 2)], [Gene("a")]):
        opt = build(optimizer, m, seed=1, options=options, genes=genes)
        for _ in range(4):
            batch = opt.ask()
            assert batch and all(x.shape == (1,) for x in batch), f"{genes}: bad genome shape"
            if genes[0].choices:
                assert all(float(x[0]) in (0.0, 1.0) for x in batch), f"{genes}: not a choice"
            else:
                assert all(0.0 <= float(x[0]) <= 1.0 for x in batch), f"{genes}: out of bounds"
            opt.tell(batch, [[float(x[0])] * m for x in batch])


class OptimizerSuite:
    """Subclass with ``optimizer`` (a registered name or the class) and its ``options``;
    pytest runs every check. ``n_objectives`` defaults to 2 for a multi-objective optimizer."""

    optimizer: ClassVar[OptimizerRef]
    options: ClassVar[dict[str, Any] | None] = None
    n_objectives: ClassVar[int | None] = None
    batches: ClassVar[int] = 4

    def _m(self) -> int:
        if self.n_objectives is not None:
            return self.n_objectives
        cls = optimizer_class(self.optimizer) if isinstance(self.optimizer, str) else self.optimizer
        return 2 if cls.multi_objective else 1

    def test_bounds(self) -> None:
        check_bounds(
            drive(
                build(self.optimizer, self._m(), options=self.options),
                self._m(),
                range(self.batches),
            )
        )

    def test_determinism(self) -> None:
        check_determinism(self.optimizer, self._m(), self.options)

    def test_resume(self) -> None:
        check_resume(self.optimizer, self._m(), self.options, self.batches)

    def test_failures(self) -> None:
        check_failures(self.optimizer, self._m(), self.options)

    def test_global_rng(self) -> None:
        check_global_rng(self.optimizer, self._m(), self.options)

    def test_tiny_gene_sets(self) -> None:
        check_tiny_gene_sets(self.optimizer, self._m(), self.options)

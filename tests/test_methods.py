"""Merge operators against their formulas on small hand-made tensors, plus invariants."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from merge_params import params

from evomerge.errors import RecipeError
from evomerge.merge.methods import METHODS, Params, get_method

T = torch.tensor


def run(
    name: str,
    tensors: list[torch.Tensor],
    base: torch.Tensor | None = None,
    seed: int = 0,
    **kw: object,
) -> torch.Tensor:
    return get_method(name)(tensors, base, params(name, len(tensors), seed, **kw))


def test_registry_has_every_method() -> None:
    assert set(METHODS) >= {
        "linear",
        "slerp",
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "della",
        "della_linear",
        "breadcrumbs",
        "breadcrumbs_ties",
        "model_stock",
    }
    with pytest.raises(RecipeError, match="unknown merge method 'nope'"):
        get_method("nope")


def test_linear_formula() -> None:
    a, b = T([1.0, 2.0]), T([3.0, -4.0])
    out = run("linear", [a, b], weight=[1.0, 3.0])
    assert torch.allclose(out, (1 * a + 3 * b) / 4)
    out = run("linear", [a, b], weight=[1.0, 3.0], normalize=False)
    assert torch.allclose(out, a + 3 * b)


def test_task_arithmetic_formula() -> None:
    base = T([1.0, 1.0, 1.0])
    a, b = T([2.0, 0.0, 1.5]), T([0.0, 3.0, 1.0])
    out = run("task_arithmetic", [a, b], base, weight=[0.5, 2.0], **{"lambda": 0.5})
    expected = base + 0.5 * (0.5 * (a - base) + 2.0 * (b - base))
    assert torch.allclose(out, expected)


def test_ties_by_hand() -> None:
    base = torch.zeros(4)
    a = T([3.0, -1.0, 0.2, 2.0])  # density 0.5 keeps 3.0, 2.0
    b = T([-1.0, -2.0, 0.1, -5.0])  # keeps -2.0, -5.0
    out = run("ties", [a, b], base, weight=[1.0, 1.0], density=[0.5, 0.5])
    # trimmed: a' = [3, 0, 0, 2], b' = [0, -2, 0, -5]; signs by sum: [+, -, 0→+, -]
    # element 0: only a agrees -> 3/1; 1: b -> -2/1; 2: none -> 0; 3: b (-5) -> -5/1
    assert torch.allclose(out, T([3.0, -2.0, 0.0, -5.0]))
    out = run(
        "ties",
        [a, b],
        base,
        weight=[1.0, 1.0],
        density=[0.5, 0.5],
        normalize=False,
        **{"lambda": 2.0},
    )
    assert torch.allclose(out, T([6.0, -4.0, 0.0, -10.0]))


def test_breadcrumbs_masks_outliers_and_small() -> None:
    base = torch.zeros(10)
    a = torch.arange(1.0, 11.0)  # magnitudes 1..10
    out = run("breadcrumbs", [a], base, weight=[1.0], density=[0.5], gamma=[0.2])
    # drop top 2 (9, 10), keep the next 5 (4..8), drop the rest
    expected = torch.where((a >= 4) & (a <= 8), a, torch.zeros_like(a))
    assert torch.equal(out, expected)


def test_dare_is_seeded_and_rescales_l1() -> None:
    base = torch.zeros(10_000)
    a = torch.ones(10_000)
    o1 = run("dare_linear", [a], base, seed=3, weight=[1.0], density=[0.3])
    o2 = run("dare_linear", [a], base, seed=3, weight=[1.0], density=[0.3])
    o3 = run("dare_linear", [a], base, seed=4, weight=[1.0], density=[0.3])
    assert torch.equal(o1, o2) and not torch.equal(o1, o3)
    kept = (o1 != 0).float().mean().item()
    assert abs(kept - 0.3) < 0.02
    assert math.isclose(o1.abs().sum().item(), 10_000, rel_tol=1e-4)  # L1 norm matched


def test_uniform_hash_is_uniform_and_independent() -> None:
    from evomerge.merge.methods import uniform

    u = uniform((1000, 100), 7, torch.device("cpu"))
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert (hist - 0.1).abs().max() < 0.005
    v = uniform((1000, 100), 8, torch.device("cpu"))
    corr = torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1]
    assert abs(corr.item()) < 0.01
    assert torch.equal(u, uniform((1000, 100), 7, torch.device("cpu")))
    # neighbouring elements are not correlated either
    assert abs(torch.corrcoef(torch.stack([u.flatten()[:-1], u.flatten()[1:]]))[0, 1]) < 0.01


def test_della_keeps_large_magnitudes_more_often() -> None:
    base = torch.zeros(1, 20_000)
    a = torch.linspace(0.01, 1.0, 20_000).unsqueeze(0)
    out = run("della_linear", [a], base, weight=[1.0], density=[0.5], epsilon=[0.4], rescale=False)
    kept = (out != 0).float()
    assert kept[0, :2000].mean() < 0.2 and kept[0, -2000:].mean() > 0.8
    with pytest.raises(RecipeError, match="density ± epsilon"):
        run("della", [a], base, density=[0.5], epsilon=[0.6])


def test_slerp_formula_and_endpoints() -> None:
    a, b = T([1.0, 0.0]), T([0.0, 2.0])
    assert torch.allclose(run("slerp", [b], a, t=0.0), a)
    assert torch.allclose(run("slerp", [b], a, t=1.0), b)
    omega = math.pi / 2
    t = 0.3
    expected = (
        math.sin((1 - t) * omega) / math.sin(omega) * a + math.sin(t * omega) / math.sin(omega) * b
    )
    assert torch.allclose(run("slerp", [b], a, t=t), expected)
    c = T([1.0, 1e-6])  # nearly parallel: lerp
    assert torch.allclose(run("slerp", [c], a, t=0.5), (a + c) / 2)


def test_model_stock_formula() -> None:
    base = torch.zeros(3)
    ws = [T([1.0, 0.0, 0.0]), T([1.0, 1.0, 0.0])]
    cos = 1 / math.sqrt(2)
    t = 2 * cos / (1 + cos)
    expected = t * (ws[0] + ws[1]) / 2
    assert torch.allclose(run("model_stock", ws, base), expected)


# -- invariants -------------------------------------------------------------------------------
vec = arrays(
    "float32",
    st.integers(1, 40),
    elements=st.floats(-10, 10, width=32, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=60, deadline=None)
@given(vec, st.floats(0.1, 5))
def test_linear_one_source_is_identity(x, w) -> None:
    t = torch.from_numpy(x)
    assert torch.allclose(run("linear", [t], weight=[w]), t, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(vec, vec, st.floats(-2, 2))
def test_ties_density_one_single_source_is_task_arithmetic(x, y, w) -> None:
    n = min(len(x), len(y))
    base, a = torch.from_numpy(x[:n]), torch.from_numpy(y[:n])
    ties = run("ties", [a], base, weight=[w], density=[1.0], normalize=False)
    ta = run("task_arithmetic", [a], base, weight=[w])
    # TIES drops entries whose weighted delta opposes the elected sign: with one source the
    # elected sign is its own, so only exact zeros differ, and those contribute nothing.
    assert torch.allclose(ties, ta, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    st.floats(-5, 5),
    st.lists(st.floats(0.05, 1), min_size=1, max_size=4),
    st.sampled_from(["linear", "task_arithmetic", "dare_linear", "breadcrumbs"]),
    st.floats(0.5, 3),
)
def test_weights_summing_to_one_keep_a_constant(c, raw, method, offset) -> None:
    """Every source holds c, the base c + offset: the task vectors are -offset, not zero, and
    weights summing to one bring the base all the way back to c (density 1: nothing dropped)."""
    weights = [w / sum(raw) for w in raw]
    tensors = [torch.full((7,), c) for _ in weights]
    base = torch.full((7,), c + offset) if get_method(method).needs_base else None
    out = run(method, tensors, base, weight=weights, density=[1.0] * len(weights))
    assert torch.allclose(out, torch.full((7,), c), atol=1e-4)
    if base is not None:  # and half the weight goes half way
        half = run(
            method, tensors, base, weight=[w / 2 for w in weights], density=[1.0] * len(weights)
        )
        assert torch.allclose(half, torch.full((7,), c + offset / 2), atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(vec, st.floats(0, 1))
def test_slerp_of_a_tensor_with_itself(x, t) -> None:
    a = torch.from_numpy(x)
    assert torch.allclose(run("slerp", [a.clone()], a, t=t), a, atol=1e-5)


def test_nearswap_takes_close_values_and_keeps_far_ones() -> None:
    """By hand, t = 0.1: |a-b| = 0.05 ≤ t → b; 0.2 → halfway (w = 0.5); 1.0 → w = 0.1; a = b → b."""
    base = torch.tensor([0.0, 0.0, 0.0, 1.0])
    other = torch.tensor([0.05, 0.2, 1.0, 1.0])
    out = get_method("nearswap")([other], base, Params({}, {"t": 0.1}))
    assert torch.allclose(out, torch.tensor([0.05, 0.1, 0.1, 1.0]))
    with pytest.raises(RecipeError, match="t=-1"):
        get_method("nearswap").params[0].check(-1.0, "nearswap")

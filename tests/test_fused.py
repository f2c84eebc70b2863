"""The fused (numba) kernels against the eager torch kernels and against torch's own rounding.

mergekit is the independent reference for the merges themselves (tests/test_mergekit.py runs
the default path, which is the fused one on the CPU); here: the two implementations agree, the
masks are the same draws, bf16 rounding is torch's, and the finiteness check still fires.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from merge_params import params

from evomerge.merge import chunked, fused
from evomerge.merge.methods import Params, get_method

pytestmark = pytest.mark.skipif(not fused.enabled(), reason="numba is not installed")


def _params(name: str, n: int, seed: int = 1, **kw: object) -> Params:
    return params(name, n, seed, **kw)


def _merge(name: str, tensors, base, p, out_dtype, monkeypatch, on: bool):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EVOMERGE_FUSED", "1" if on else "0")
    return chunked.merge_chunked(get_method(name).kernel, tensors, base, p, out_dtype=out_dtype)


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(["dare_ties", "dare_linear", "task_arithmetic"]),
    rows=st.integers(1, 40),
    cols=st.integers(1, 300),
    n=st.integers(1, 4),
    seed=st.integers(0, 2**40),
    densities=st.lists(st.floats(0.05, 1.0), min_size=4, max_size=4),
    weights=st.lists(st.floats(-1.0, 2.0), min_size=4, max_size=4),
    lam=st.sampled_from([1.0, 0.7]),
    rescale=st.booleans(),
    dtype=st.sampled_from([torch.bfloat16, torch.float32]),
)
def test_fused_task_arithmetic_equals_eager(
    name, rows, cols, n, seed, densities, weights, lam, rescale, dtype
) -> None:  # type: ignore[no-untyped-def]
    """Same draws, same float32 arithmetic in the same order: equal bit for bit, except that
    the rescale's L1 norms are summed in another order (vectorized): then within a rounding
    step of the output dtype."""
    g = torch.Generator().manual_seed(seed % 2**31)
    base = torch.randn(rows, cols, generator=g).to(dtype)
    tensors = [
        (base.float() + 0.05 * torch.randn(rows, cols, generator=g)).to(dtype) for _ in range(n)
    ]
    kw: dict[str, object] = {"weight": weights[:n], "lambda": lam}
    if name != "task_arithmetic":
        kw.update(density=densities[:n], rescale=rescale)
    p = _params(name, n, seed, **kw)
    with pytest.MonkeyPatch.context() as mp:
        a, ca = _merge(name, tensors, base, p, dtype, mp, on=True)
        b, cb = _merge(name, tensors, base, p, dtype, mp, on=False)
    if name == "task_arithmetic" or not rescale:
        assert torch.equal(a, b), (a - b).abs().max()
    else:
        step = torch.finfo(dtype).eps * b.double().abs() + 1e-6
        assert ((a.double() - b.double()).abs() <= step).all(), (a - b).abs().max()
    assert math.isfinite(float(ca)) and math.isfinite(float(cb))


def test_fused_linear_is_within_an_ulp_of_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's add with alpha may be a fused multiply-add; numba's is two roundings."""
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(64, 129, generator=g).to(torch.bfloat16) for _ in range(3)]
    p = _params("linear", 3, 0, weight=[0.5, 0.3, 0.2])
    a, _ = _merge("linear", tensors, None, p, torch.bfloat16, monkeypatch, on=True)
    b, _ = _merge("linear", tensors, None, p, torch.bfloat16, monkeypatch, on=False)
    # one bf16 rounding step apart at most, where float32 cancellation leaves the result tiny
    mag = sum(w * t.double().abs() for w, t in zip([0.5, 0.3, 0.2], tensors, strict=True))
    ulp = torch.finfo(torch.bfloat16).eps * b.double().abs() + 2**-22 * mag
    assert ((a.double() - b.double()).abs() <= ulp).all()
    # and the formula, in float64
    ref = sum(w * t.double() for w, t in zip([0.5, 0.3, 0.2], tensors, strict=True))
    assert ((a.double() - ref).abs() <= ulp).all()


def test_bf16_rounding_is_torchs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-source linear merge is a float32 → bfloat16 conversion: round to nearest even,
    ties and all, as torch rounds."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100_000, generator=g) * torch.exp2(
        torch.randint(-20, 20, (100_000,), generator=g)
    )
    ties = (torch.arange(4000, dtype=torch.int32) << 16 | 0x8000).view(
        torch.float32
    )  # exact halves
    x = torch.cat([x, ties[torch.isfinite(ties)], torch.tensor([0.0, -0.0, 1e-40, -3e38])])
    p = _params("linear", 1, 0, weight=[1.0])
    out, _ = _merge("linear", [x], None, p, torch.bfloat16, monkeypatch, on=True)
    assert torch.equal(out.view(torch.int16), x.to(torch.bfloat16).view(torch.int16))


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 3.3e38])
def test_non_finite_output_is_flagged(bad: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is not finite when an output is not (3.3e38 + 3.3e38 overflows bf16)."""
    base = torch.zeros(8, 8)
    t = torch.zeros(8, 8)
    t[3, 4] = bad
    p = _params("task_arithmetic", 2, 0, weight=[1.0, 1.0])
    out, check = _merge("task_arithmetic", [t, t], base, p, torch.bfloat16, monkeypatch, on=True)
    assert not torch.isfinite(out).all()
    assert not math.isfinite(float(check))


def test_fused_only_where_it_applies() -> None:
    x = torch.zeros(4, 4)
    assert fused.usable([x, x], x, torch.bfloat16)
    assert not fused.usable([x.half(), x.half()], x.half(), torch.float16)  # eager
    assert not fused.usable([x, x.t()], x, torch.float32)  # not contiguous
    assert not fused.usable([x, x.bfloat16()], x, torch.float32)  # mixed input dtypes

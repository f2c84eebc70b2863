"""Row-chunked merging: masks against an independent reference of the hash, chunked equal to
unchunked bit for bit, and the statistics DARE's masks promise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from merge_params import params

from evomerge.merge import chunked, masks
from evomerge.merge.methods import Params, get_method, uniform

M32 = np.uint64(0xFFFFFFFF)


def reference_draws(start: int, count: int, seed: int) -> np.ndarray:
    """lowbias32(pair * 0x9E3779B1 + seed term) in unsigned 64-bit numpy arithmetic, masked
    to 32 bits after every step; the even element of a pair takes the low 16 bits."""
    idx = np.arange(start, start + count, dtype=np.uint64)
    pair = idx >> np.uint64(1)
    s = np.uint64((seed * 2654435761 + 0x5BD1E995) & 0xFFFFFFFF)
    with np.errstate(over="ignore"):
        h = (pair * np.uint64(0x9E3779B1) + s) & M32
        h ^= h >> np.uint64(16)
        h = (h * np.uint64(0x7FEB352D)) & M32
        h ^= h >> np.uint64(15)
        h = (h * np.uint64(0x846CA68B)) & M32
        h ^= h >> np.uint64(16)
    return np.where(idx & np.uint64(1), h >> np.uint64(16), h & np.uint64(0xFFFF)).astype(np.int64)


@pytest.mark.parametrize("start, count", [(0, 1), (0, 1000), (1, 999), (7, 2), (12345, 4097)])
@pytest.mark.parametrize("seed", [0, 3, 2**40 + 17])
def test_draws_match_the_reference_hash(start: int, count: int, seed: int) -> None:
    fast = masks.draws16(start, count, seed, torch.device("cpu")).to(torch.int64) + 2**15
    assert fast.tolist() == reference_draws(start, count, seed).tolist()
    u = masks.uniform_at((count,), start, seed, torch.device("cpu")).double()
    assert torch.equal(u * 2**16, torch.from_numpy(reference_draws(start, count, seed)).double())


def test_whole_tensor_draws_are_the_chunks_draws() -> None:
    whole = uniform((13, 11), 5, torch.device("cpu")).reshape(-1)
    parts = [
        masks.uniform_at((k,), s, 5, torch.device("cpu")) for s, k in [(0, 40), (40, 63), (103, 40)]
    ]
    assert torch.equal(whole, torch.cat(parts))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_draws_are_device_independent() -> None:
    cpu = masks.draws16(3, 100_001, 11, torch.device("cpu"))
    gpu = masks.draws16(3, 100_001, 11, torch.device("cuda")).cpu()
    assert torch.equal(cpu, gpu)


def _params(name: str, n: int, seed: int = 1, **kw: object) -> Params:
    return params(name, n, seed, **kw)


KERNEL_CASES = {
    "linear": dict(weight=[0.5, 0.3, 0.2]),
    "linear_raw": dict(weight=[0.5, -0.3, 1.2], normalize=False),
    "task_arithmetic": dict(weight=[0.7, 0.4, 1.0], **{"lambda": 0.8}),
    "dare_linear": dict(weight=[0.7, 0.4, 1.0], density=[0.3, 0.6, 1.0]),
    "dare_ties": dict(weight=[0.7, 0.4, 1.0], density=[0.3, 0.6, 0.5]),
    "dare_ties_plain": dict(weight=[0.7, 0.4, 1.0], density=[0.3, 0.6, 0.5], rescale=False),
    "della": dict(weight=[0.7, 0.4, 1.0], density=[0.5, 0.6, 0.4], epsilon=[0.2, 0.1, 0.3]),
    "della_linear": dict(weight=[0.7, 0.4, 1.0], density=[0.5, 0.6, 0.4], epsilon=[0.2, 0.1, 0.3]),
}


@pytest.mark.parametrize("fused", ["1", "0"])
@pytest.mark.parametrize("case", sorted(KERNEL_CASES))
@pytest.mark.parametrize("shape", [(10, 37), (7, 3, 5), (53,), ()])
def test_chunked_equals_unchunked_bit_for_bit(
    case: str, shape: tuple[int, ...], fused: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both the fused kernels and the eager ones (EVOMERGE_FUSED=0)."""
    monkeypatch.setenv("EVOMERGE_FUSED", fused)
    name = case.split("_raw")[0].split("_plain")[0]
    method = get_method(name)
    assert method.kernel is not None
    g = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=g).to(torch.bfloat16)
    tensors = [
        (base.float() + 0.1 * torch.randn(shape, generator=g)).to(torch.bfloat16) for _ in range(3)
    ]
    p = _params(name, 3, **KERNEL_CASES[case])
    b = base if method.needs_base else None
    rows = chunked.as_rows(torch.Size(shape))[0]
    ref, ref_sum = chunked.merge_chunked(
        method.kernel, tensors, b, p, out_dtype=torch.bfloat16, rows_per_chunk=rows
    )
    for step in (1, 3, 4, 6):  # uneven splits of 10 and 7 rows
        out, total = chunked.merge_chunked(
            method.kernel, tensors, b, p, out_dtype=torch.bfloat16, rows_per_chunk=step
        )
        assert torch.equal(out.view(torch.int16), ref.view(torch.int16)), (case, shape, step)
        assert math.isclose(float(total), float(ref_sum), rel_tol=1e-5, abs_tol=1e-4)
    # the whole-tensor call in float32 is the same merge
    whole = method([t.float() for t in tensors], b.float() if b is not None else None, p).to(
        torch.bfloat16
    )
    assert torch.equal(whole.view(torch.int16), ref.view(torch.int16))


@pytest.mark.parametrize("fused", ["1", "0"])
def test_thread_pool_gives_the_sequential_result(
    fused: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVOMERGE_FUSED", fused)
    method = get_method("dare_ties")
    g = torch.Generator().manual_seed(1)
    base = torch.randn(300, 64, generator=g)
    tensors = [base + 0.05 * torch.randn(300, 64, generator=g) for _ in range(3)]
    p = _params("dare_ties", 3, weight=[0.7, 0.4, 1.0], density=[0.3, 0.6, 0.5])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, _ = chunked.merge_chunked(method.kernel, tensors, base, p, rows_per_chunk=7)
        torch.set_num_threads(2)
        two, _ = chunked.merge_chunked(method.kernel, tensors, base, p, rows_per_chunk=7)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@settings(max_examples=25, deadline=None)
@given(density=st.floats(0.05, 0.95), seed=st.integers(0, 2**31))
def test_dare_keeps_a_density_fraction(density: float, seed: int) -> None:
    n = 40_000
    keep = masks.keep_mask((n,), 0, seed, density, torch.device("cpu"))
    frac = keep.double().mean().item()
    expected = math.ceil(density * 2**16) / 2**16  # the draws' resolution
    assert abs(expected - density) <= 2**-16
    assert abs(frac - expected) <= 5 * math.sqrt(expected * (1 - expected) / n)


def test_dare_rescale_is_unbiased_over_seeds() -> None:
    """E[masked · rescale] = delta: averaged over seeds, DARE returns the task vector."""
    delta = torch.linspace(-1.0, 1.0, 2000).reshape(20, 100)
    base = torch.zeros_like(delta)
    method = get_method("dare_linear")
    acc = torch.zeros_like(delta, dtype=torch.float64)
    runs = 400
    for seed in range(runs):
        p = _params("dare_linear", 1, seed=seed, weight=[1.0], density=[0.4])
        acc += method([delta], base, p).double()
    mean = acc / runs
    # per element: sd of one draw ≈ |delta|·sqrt((1-d)/d) ≈ 1.22 |delta|, over 400 runs ≈ 0.061
    assert (mean - delta.double()).abs().max().item() < 5 * 0.0613
    assert abs((mean - delta.double()).mean().item()) < 0.01

"""Tensor merge operators, one registry, one signature.

Names, parameters and defaults follow mergekit's methods of the same name, so a recipe means the
same thing in both tools. Adding a method is one decorated function here::

    @register("name", params=(Param("weight", 1.0, per_source=True),), needs_base=False)
    def name(tensors, base, p: Params) -> torch.Tensor: ...

Other packages add methods through the ``evomerge.methods`` entry point group, named after the
method and pointing at the module that registers it (or at a :class:`Method`)::

    [project.entry-points."evomerge.methods"]
    my_method = "my_package.merge"

They are imported only when a recipe asks for a method no loaded module registered.

Tensors arrive in float32 (float64 stays float64); the caller casts the result. Methods with a
row-chunk :class:`~evomerge.merge.chunked.Kernel` (linear, task arithmetic, DARE, DELLA) are
merged by :mod:`evomerge.merge.materialize` a block of rows at a time, straight from the sources'
dtype. Random methods draw from :mod:`evomerge.merge.masks`, a counter-based hash of (seed,
element index) in exact integer arithmetic: the same recipe gives the same weights on the CPU and
on any GPU, whatever the chunking, so the model a search scored on its GPU is the model exported
on a laptop.

Note mergekit's ``rescale`` matches the L1 norm of each sparsified task vector to
the original's (not the 1/density of the DARE paper); we do the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evomerge.errors import RecipeError
from evomerge.merge import fused, masks
from evomerge.merge.chunked import Chunk, Kernel, Params, merge_chunked, row_sums

# the registry, re-exported: plugins and callers import these names from here
from evomerge.merge.registry import (
    ENTRY_POINT_GROUP,
    METHODS,
    MergeFn,
    Method,
    Param,
    builtin_methods,
    get_method,
    register,
)
from evomerge.merge.workspace import scratch

__all__ = [
    "ENTRY_POINT_GROUP",
    "METHODS",
    "MergeFn",
    "Method",
    "Param",
    "Params",
    "builtin_methods",
    "get_method",
    "register",
    "uniform",
    "warm_up",
]


# --------------------------------------------------------------------------------------------
# Shared parameter declarations (mergekit's names and defaults)
_WEIGHT = Param("weight", 1.0, per_source=True)
_DENSITY = Param("density", 1.0, per_source=True, low=0.0, high=1.0, open_low=True)
_LAMBDA = Param("lambda", 1.0)
_GAMMA = Param("gamma", 0.01, per_source=True, low=0.0, high=1.0)
_EPSILON = Param("epsilon", 0.15, per_source=True, low=0.0, high=1.0)


def _flag(name: str, default: bool) -> Param:
    return Param(name, default)


# --------------------------------------------------------------------------------------------
# Sparsifiers: each keeps part of a task vector; all return a new tensor.
def _rescale_l1(delta: torch.Tensor, kept: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    before, after = delta.abs().sum(), kept.abs().sum()
    if before < eps or after < eps:
        return kept
    return kept.mul_(before / after)


def _magnitude(delta: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    if density >= 1:
        return delta
    k = max(1, int(density * delta.numel()))
    flat = delta.reshape(-1)
    idx = torch.topk(flat.abs(), k, sorted=False).indices
    kept = torch.zeros_like(flat)
    kept[idx] = flat[idx]
    kept = kept.reshape(delta.shape)
    return _rescale_l1(delta, kept) if rescale else kept


def _magnitude_outliers(
    delta: torch.Tensor, density: float, gamma: float, rescale: bool
) -> torch.Tensor:
    if density >= 1:
        return delta
    n = delta.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    flat = delta.reshape(-1)
    order = torch.sort(flat.abs(), descending=False).indices
    idx = order[n_bot : n_bot + target]
    kept = torch.zeros_like(flat)
    kept[idx] = flat[idx]
    kept = kept.reshape(delta.shape)
    return _rescale_l1(delta, kept) if rescale else kept


def uniform(shape: torch.Size | tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """The [0, 1) draws DARE/DELLA compare with their keep probabilities, for a whole tensor
    (see :mod:`evomerge.merge.masks`: the merge draws them a chunk at a time)."""
    return masks.uniform_at(tuple(shape), 0, seed, torch.device(device))


def _della_probs(x: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's keep probabilities: density ± epsilon, linear in each row's magnitude rank."""
    ranks = x.abs().argsort(dim=1).argsort(dim=1).to(x.dtype) + 1
    lo, hi = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    rank_norm = ((ranks - lo) / (hi - lo)).clamp(0, 1)
    return (density - epsilon) + rank_norm * 2 * epsilon


# --------------------------------------------------------------------------------------------
# Generalized task arithmetic: sparsify each task vector, weight, optionally elect signs (TIES).
def _combine(deltas: torch.Tensor, weights: Sequence[float], p: Params, consensus: bool):
    """Σ of the weighted task vectors (S, ...), with TIES's sign election, normalization and
    lambda as the method asks: the sign election only for the *_ties methods, the divisor only
    when normalizing."""
    normalize = bool(p.shared.get("normalize", False))
    if consensus:
        majority = deltas.sum(dim=0) >= 0
        divisor = None
        if normalize:  # the divisor is a pass of its own: only when it is used
            w = torch.tensor(weights, dtype=deltas.dtype, device=deltas.device)
            agree = torch.where(majority, deltas > 0, deltas < 0).to(deltas.dtype)
            divisor = (w.view(-1, *([1] * (deltas.dim() - 1))) * agree).sum(dim=0)
            divisor[divisor == 0] = 1
        # Σ of the deltas whose sign is the majority's: the positives where it is +, else the
        # negatives (a zero delta agrees with neither)
        pos = deltas.clamp(min=0).sum(dim=0)
        neg = deltas.clamp_(max=0).sum(dim=0)
        mixed = torch.where(majority, pos, neg)
        if divisor is not None:
            mixed /= divisor
    else:
        mixed = deltas.sum(dim=0)
        if normalize:
            total = float(torch.tensor(weights, dtype=deltas.dtype).sum())
            mixed /= total if abs(total) >= 1e-8 else 1.0
    lam = float(p.shared.get("lambda", 1.0))
    if lam != 1:
        mixed *= lam
    return mixed


def _whole_tensor_gta(
    tensors: Sequence[torch.Tensor], base: torch.Tensor, p: Params, sparsify: str | None
) -> torch.Tensor:
    """TIES and breadcrumbs: their magnitude selection ranks a whole task vector at once."""
    weights = p.per_source["weight"]
    densities = p.per_source.get("density")
    rescale = bool(p.shared.get("rescale", False))
    deltas = torch.empty((len(tensors), *base.shape), dtype=base.dtype, device=base.device)
    for i, t in enumerate(tensors):
        d = torch.sub(t, base, out=deltas[i])
        if sparsify == "magnitude":
            deltas[i] = _magnitude(d, densities[i], rescale)
        elif sparsify == "outliers":
            deltas[i] = _magnitude_outliers(d, densities[i], p.per_source["gamma"][i], rescale)
        if weights[i] != 1:
            deltas[i].mul_(weights[i])
    return deltas


_EPS_L1 = 1e-7  # below this L1 norm a task vector is not rescaled (as mergekit)


def task_seed(p: Params, i: int) -> int:
    """The seed of source ``i``'s DARE/DELLA draws for the tensor ``p`` belongs to."""
    return p.seed * 1000003 + i


def _random_keep(c: Chunk, i: int, d: torch.Tensor, p: Params, sparsify: str) -> torch.Tensor:
    """Minus the keep mask (-1 kept, 0 dropped) of task vector ``i`` over chunk ``c``, in the
    work dtype: a float multiply is far cheaper than boolean indexing, and the sign is undone
    by the weight. A scratch buffer: valid until this thread's next call."""
    density = p.per_source["density"][i]
    seed = task_seed(p, i)
    if sparsify == "random":
        k = masks.draws16(c.start, d.numel(), seed, d.device, reuse=True).reshape(d.shape)
        keep = scratch("keep", d.shape, d.dtype, d.device).copy_(k)
        return keep.sub_(masks.keep_below(density)).clamp_(-1, 0)
    epsilon = p.per_source["epsilon"][i]
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise RecipeError(
            f"della: density ± epsilon must lie in (0, 1); got density={density}, epsilon={epsilon}"
        )
    probs = _della_probs(d, density, epsilon)
    u = masks.uniform_at(tuple(d.shape), c.start, seed, d.device)
    return torch.lt(u, probs).to(d.dtype).neg_()


def _sparse(p: Params, i: int, sparsify: str | None) -> bool:
    return sparsify is not None and p.per_source["density"][i] < 1


def _gta_kernel(sparsify: str | None, consensus: bool) -> Kernel:
    """Row chunks of task arithmetic, DARE and DELLA: elementwise but for DELLA's per-row
    ranks; the L1 rescale's norms come from a first pass (:attr:`Kernel.stats`).

    Each pass over a chunk costs about the same whatever it computes (the chunk is in cache),
    so the kernel is written to make few of them, into this thread's scratch buffers: the task
    vectors are summed as they are made (never stacked), each scaled once by weight × rescale,
    and TIES's sum of the deltas that agree with the majority sign is ``(s + copysign(a, s))/2``
    from their sum ``s`` and the sum ``a`` of their magnitudes (the positives' sum where
    ``s ≥ 0``, else the negatives'; ``s`` is ±0 only where every delta is 0)."""

    def delta(c: Chunk, t: torch.Tensor, b: torch.Tensor, name: str) -> torch.Tensor:
        return scratch(name, b.shape, c.work, b.device).copy_(t).sub_(b)

    def factor(c: Chunk, p: Params, i: int) -> float:
        """The multiplier of minus the kept delta: -1, or minus the L1 rescale."""
        if bool(p.shared.get("rescale", False)):
            assert c.totals is not None
            before, after = float(c.totals[2 * i]), float(c.totals[2 * i + 1])
            if before >= _EPS_L1 and after >= _EPS_L1:
                return -(before / after)
        return -1.0

    def weigh(c: Chunk, p: Params, i: int, d: torch.Tensor) -> torch.Tensor:
        """Task vector ``i`` masked (where sparse) and scaled by weight × rescale, in place."""
        coef = p.per_source["weight"][i]
        if _sparse(p, i, sparsify):
            d.mul_(_random_keep(c, i, d, p, sparsify))  # type: ignore[arg-type]
            coef *= factor(c, p, i)
        if coef != 1:
            d.mul_(coef)
        return d

    def stats(c: Chunk, p: Params) -> torch.Tensor:
        assert c.base is not None
        b = c.to_work(c.base, scratch("base", c.base.shape, c.work, c.base.device))
        sums = []
        for i, t in enumerate(c.tensors):
            d = delta(c, t, b, "delta")
            mag = torch.abs(d, out=scratch("mag", d.shape, c.work, d.device))
            before = row_sums(mag)
            if not _sparse(p, i, sparsify):
                sums += [before, before]
                continue
            keep = _random_keep(c, i, d, p, sparsify)  # type: ignore[arg-type]
            sums += [before, row_sums(mag.mul_(keep)).neg_()]  # |d|·(-kept) summed, negated
        return torch.stack(sums)

    def stacked(c: Chunk, p: Params) -> torch.Tensor:
        """TIES with normalization: the divisor needs every delta's sign, so they are stacked."""
        assert c.base is not None
        b = c.to_work(c.base)
        deltas = torch.empty((len(c.tensors), *b.shape), dtype=c.work, device=b.device)
        for i, t in enumerate(c.tensors):
            weigh(c, p, i, c.to_work(t, deltas[i]).sub_(b))
        return _combine(deltas, p.per_source["weight"], p, consensus).add_(b)

    def apply(c: Chunk, p: Params) -> torch.Tensor:
        normalize = bool(p.shared.get("normalize", False))
        if consensus and normalize:
            return stacked(c, p)
        assert c.base is not None
        b = c.to_work(c.base, scratch("base", c.base.shape, c.work, c.base.device))
        total = mag = None
        for i, t in enumerate(c.tensors):
            d = weigh(c, p, i, delta(c, t, b, "sum" if i == 0 else "delta"))
            if consensus:
                if i == 0:
                    mag = torch.abs(d, out=scratch("mag", d.shape, c.work, d.device))
                else:
                    assert mag is not None
                    mag.add_(torch.abs(d, out=scratch("abs", d.shape, c.work, d.device)))
            if i == 0:
                total = d
            else:
                assert total is not None
                total.add_(d)
        assert total is not None
        scale = float(p.shared.get("lambda", 1.0))
        if consensus:
            assert mag is not None
            total.add_(torch.copysign(mag, total, out=mag))
            scale *= 0.5
        elif normalize:
            w = float(sum(p.per_source["weight"]))
            total.div_(w if abs(w) >= 1e-8 else 1.0)
        if scale != 1:
            total.mul_(scale)
        return total.add_(b)

    def wants_stats(p: Params) -> bool:
        rescale = bool(p.shared.get("rescale", False))
        return rescale and any(_sparse(p, i, sparsify) for i in range(len(p.per_source["weight"])))

    def fused_merge(tensors, base, p: Params, out, rows, step, scale, run):  # type: ignore[no-untyped-def]
        normalize = bool(p.shared.get("normalize", False))
        if sparsify not in (None, "random") or (consensus and normalize):
            return None
        n = len(tensors)
        spec = fused.GtaSpec(
            weights=tuple(float(w) for w in p.per_source["weight"]),
            bounds=tuple(
                masks.keep_below(p.per_source["density"][i]) + masks.SCALE // 2
                if _sparse(p, i, sparsify)
                else masks.SCALE
                for i in range(n)
            ),
            seeds=tuple(task_seed(p, i) for i in range(n)),
            consensus=consensus,
            lam=float(p.shared.get("lambda", 1.0)),
            normalize=normalize,
            rescale=bool(p.shared.get("rescale", False)),
            eps=_EPS_L1,
        )
        return fused.merge_gta(spec, tensors, base, out, rows, step, scale, run)

    return Kernel(apply, stats, wants_stats, fused_merge)


def _gta(
    name: str,
    sparsify: str | None,
    consensus: bool,
    normalize: bool,
    rescale: bool,
    extra: tuple[Param, ...] = (),
    random: bool = False,
) -> None:
    chunkable = sparsify in (None, "random", "della")
    kernel = _gta_kernel(sparsify, consensus) if chunkable else None

    def fn(tensors: Sequence[torch.Tensor], base: torch.Tensor | None, p: Params) -> torch.Tensor:
        assert base is not None
        if not tensors:
            return base
        if kernel is not None:
            return merge_chunked(kernel, tensors, base, p)[0]
        deltas = _whole_tensor_gta(tensors, base, p, sparsify)
        return base + _combine(deltas, p.per_source["weight"], p, consensus)

    fn.__name__ = name
    params = (
        _WEIGHT,
        _DENSITY,
        _LAMBDA,
        _flag("normalize", normalize),
        _flag("rescale", rescale),
        _flag("int8_mask", False),
        *extra,
    )
    register(name, params=params, needs_base=True, random=random, kernel=kernel)(fn)


# mergekit's general task arithmetic family: name → (sparsify, consensus, normalize, rescale,
# extra parameters, random)
_GTA_FAMILY: dict[str, tuple[str | None, bool, bool, bool, tuple[Param, ...], bool]] = {
    "task_arithmetic": (None, False, False, False, (), False),
    "ties": ("magnitude", True, True, False, (), False),
    "dare_linear": ("random", False, False, True, (), True),
    "dare_ties": ("random", True, False, True, (), True),
    "breadcrumbs": ("outliers", False, False, False, (_GAMMA,), False),
    "breadcrumbs_ties": ("outliers", True, False, False, (_GAMMA,), False),
    "della": ("della", True, True, True, (_EPSILON,), True),
    "della_linear": ("della", False, False, True, (_EPSILON,), True),
}
for _name, _flags in _GTA_FAMILY.items():
    _gta(_name, *_flags)


# --------------------------------------------------------------------------------------------
def _linear_apply(c: Chunk, p: Params) -> torch.Tensor:
    """Σ wᵢθᵢ (over Σ wᵢ when normalizing: folded into the weights, one pass fewer), into this
    thread's scratch buffers."""
    weights = [float(w) for w in p.per_source["weight"]]
    if p.shared.get("normalize", True):
        total = _linear_total(weights)
        weights = [w / total for w in weights]
    first = c.tensors[0]
    out = scratch("sum", first.shape, c.work, first.device).copy_(first).mul_(weights[0])
    for t, w in zip(c.tensors[1:], weights[1:], strict=True):
        if t.dtype != out.dtype:  # a mixed-dtype add_ is several times slower than a cast
            t = scratch("term", t.shape, c.work, t.device).copy_(t)
        out.add_(t, alpha=w)
    return out


def _linear_total(weights: Sequence[float]) -> float:
    total = float(sum(weights))
    if abs(total) < 1e-12:
        raise RecipeError("linear: weights sum to 0, cannot normalize")
    return total


def _linear_fused(tensors, base, p: Params, out, rows, step, scale, run):  # type: ignore[no-untyped-def]
    weights = [float(w) for w in p.per_source["weight"]]
    if p.shared.get("normalize", True):
        total = _linear_total(weights)
        weights = [w / total for w in weights]
    return fused.merge_linear(weights, tensors, out, rows, step, scale, run)


_LINEAR = Kernel(_linear_apply, fused=_linear_fused)


@register(
    "linear",
    params=(_WEIGHT, _flag("normalize", True)),
    needs_base=False,
    negative_weights=False,
    kernel=_LINEAR,
)
def linear(tensors: Sequence[torch.Tensor], base: torch.Tensor | None, p: Params) -> torch.Tensor:
    """Model soup: Σ wᵢθᵢ, divided by Σ wᵢ when normalizing. Every source is an input."""
    if p.shared.get("normalize", True):
        _linear_total(p.per_source["weight"])  # before any work
    return merge_chunked(_LINEAR, tensors, None, p)[0]


@register(
    "slerp",
    params=(Param("t", None, low=0.0, high=1.0),),
    needs_base=True,
    min_models=1,
    max_models=1,
)
def slerp(tensors: Sequence[torch.Tensor], base: torch.Tensor | None, p: Params) -> torch.Tensor:
    """Spherical interpolation from the base (t=0) to the other model (t=1), over the whole
    tensor; nearly parallel tensors fall back to linear interpolation."""
    assert base is not None
    t = float(p.shared["t"])
    a, b = base.reshape(-1), tensors[0].reshape(-1)
    na, nb = a.norm(), b.norm()
    na = na if na > 1e-8 else torch.ones_like(na)
    nb = nb if nb > 1e-8 else torch.ones_like(nb)
    dot = torch.dot(a / na, b / nb).clamp(-1, 1)
    if dot.abs() > 0.9995:
        return torch.lerp(base, tensors[0], t)
    theta = torch.acos(dot)
    s = torch.sin(theta)
    return (torch.sin((1 - t) * theta) / s) * base + (torch.sin(t * theta) / s) * tensors[0]


@register("model_stock", params=(_flag("filter_wise", False),), needs_base=True, min_models=2)
def model_stock(
    tensors: Sequence[torch.Tensor], base: torch.Tensor | None, p: Params
) -> torch.Tensor:
    """t = k·cos φ / (1 + (k−1)·cos φ) from the mean pairwise cosine of the task vectors;
    θ = t·mean(θᵢ) + (1−t)·θ₀. A singular denominator keeps the base."""
    assert base is not None
    shape = base.shape
    if p.shared.get("filter_wise", False):
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [t.unsqueeze(0) if t.dim() == 1 else t for t in tensors]
    else:
        w0, ws = base.reshape(-1), [t.reshape(-1) for t in tensors]
    offsets = [w - w0 for w in ws]
    cos = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-6)
            cos.append(((a * b).sum(dim=-1) / norms).clamp(-1, 1))
    c = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    k = len(ws)
    denom = 1 + (k - 1) * c
    singular = denom.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(c), k * c / torch.where(singular, 1, denom))
    avg = sum(ws) / k
    return (t * avg + (1 - t) * w0).reshape(shape)


def warm_up() -> None:
    """Load the kernels of the common signatures now (a second or so; seconds more the first
    time on a machine), so that a search's first candidate does not pay for it."""
    if not fused.enabled():
        return
    x = torch.zeros(4, 4)
    for dtype in fused.SUPPORTED:
        xs = [x.to(dtype)] * 4
        for name, extra in (("dare_ties", {"density": [0.5] * 3}), ("linear", {})):
            method = get_method(name)
            p = Params(
                {"weight": [1.0] * 3, **extra},
                {"lambda": 1.0, "normalize": False, "rescale": True},
            )
            base = xs[3] if method.needs_base else None
            merge_chunked(method.kernel, xs[:3], base, p, out_dtype=dtype)  # type: ignore[arg-type]

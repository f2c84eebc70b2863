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

Tensors arrive in float32 (float64 stays float64); the caller casts the result.
Random methods draw from :func:`uniform`, a counter-based hash of (seed, element index) in
exact integer arithmetic: the same recipe gives the same weights on the CPU and on any GPU, so
the model a search scored on its GPU is the model exported on a laptop.

Note mergekit's ``rescale`` matches the L1 norm of each sparsified task vector to
the original's (not the 1/density of the DARE paper); we do the same.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from evomerge.errors import RecipeError


@dataclass(frozen=True)
class Param:
    """A method parameter. ``default=None`` means required; bounds are inclusive unless
    ``open_low`` (density lives in (0, 1])."""

    name: str
    default: float | bool | None
    per_source: bool = False
    low: float | None = None
    high: float | None = None
    open_low: bool = False

    @property
    def is_flag(self) -> bool:
        return isinstance(self.default, bool)

    def check(self, value: float, where: str) -> None:
        lo_bad = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        hi_bad = self.high is not None and value > self.high
        if lo_bad or hi_bad or not math.isfinite(value):
            lo = "(" if self.open_low else "["
            rng = f"{lo}{self.low if self.low is not None else '-inf'}, "
            rng += f"{self.high if self.high is not None else 'inf'}]"
            raise RecipeError(f"{where}: {self.name}={value} is outside {rng}")


@dataclass
class Params:
    """Resolved parameters for one tensor: per-source lists align with ``tensors``."""

    per_source: dict[str, list[float]]
    shared: dict[str, float | bool]
    seed: int = 0

    def __getitem__(self, key: str) -> float | bool:
        return self.shared[key]


MergeFn = Callable[[Sequence[torch.Tensor], torch.Tensor | None, Params], torch.Tensor]


@dataclass(frozen=True)
class Method:
    name: str
    fn: MergeFn
    params: tuple[Param, ...]
    needs_base: bool
    min_models: int = 1
    max_models: int | None = None
    random: bool = False
    negative_weights: bool = True
    param_index: dict[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_index", {p.name: p for p in self.params})

    def __call__(
        self, tensors: Sequence[torch.Tensor], base: torch.Tensor | None, p: Params
    ) -> torch.Tensor:
        return self.fn(tensors, base, p)


METHODS: dict[str, Method] = {}


def register(
    name: str,
    *,
    params: tuple[Param, ...],
    needs_base: bool,
    min_models: int = 1,
    max_models: int | None = None,
    random: bool = False,
    negative_weights: bool = True,
) -> Callable[[MergeFn], MergeFn]:
    def deco(fn: MergeFn) -> MergeFn:
        if name in METHODS:
            raise ValueError(f"merge method {name!r} registered twice")
        METHODS[name] = Method(
            name, fn, params, needs_base, min_models, max_models, random, negative_weights
        )
        return fn

    return deco


ENTRY_POINT_GROUP = "evomerge.methods"

# Methods that live in a module of their own (imported on the first lookup): a new one is its
# module, plus one line here.
_BUILTIN_MODULES = ("evomerge.merge.nearswap",)


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def get_method(name: str) -> Method:
    if name not in METHODS:
        _load_builtins()
    method = METHODS.get(name) or _from_entry_point(name)
    if method is None:
        known = sorted({*METHODS, *(ep.name for ep in _entry_points())})
        raise RecipeError(f"method: unknown merge method {name!r}; known: {known}")
    return method


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _from_entry_point(name: str) -> Method | None:
    """Import the installed plugin that provides method ``name``, if any."""
    for ep in _entry_points():
        if ep.name != name:
            continue
        where = f"merge method {name!r} (entry point {ep.value!r} of {ENTRY_POINT_GROUP})"
        try:
            obj = ep.load()
        except Exception as e:
            raise RecipeError(f"method: {where} failed to load: {e}") from e
        if name not in METHODS and isinstance(obj, Method):
            METHODS[name] = obj if obj.name == name else replace(obj, name=name)
        if name not in METHODS:
            raise RecipeError(f"method: {where} registered no method of that name")
        return METHODS[name]
    return None


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


class _DrawCache:
    """Recently used random draws, bounded in bytes. A search merges the same tensors with the
    same seeds for every candidate (only densities and weights change), so DARE/DELLA masks
    re-use their draws instead of re-hashing every element. Callers must not modify them."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict[tuple[Any, ...], torch.Tensor] = OrderedDict()

    def get(self, key: tuple[Any, ...], make: Callable[[], torch.Tensor]) -> torch.Tensor:
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        t = make()
        size = t.numel() * t.element_size()
        if size <= self.max_bytes:
            self._items[key] = t
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.bytes -= old.numel() * old.element_size()
        return t


_DRAWS = _DrawCache(int(float(os.environ.get("EVOMERGE_DRAW_CACHE_MB", "256")) * 2**20))


def uniform(shape: torch.Size | tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) floats (shared and cached: do not modify the result); see :func:`_uniform`."""
    key = (tuple(shape), seed, str(device))
    return _DRAWS.get(key, lambda: _uniform(shape, seed, device))


def _uniform(shape: torch.Size | tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) floats from a 32-bit integer hash (lowbias32) of each element's index.

    int32 products wrap identically on every device, so the draw is device independent, unlike
    torch.rand whose CPU and CUDA streams differ. 24 bits of each hash make the float exactly.
    """
    n = math.prod(shape)
    idx_dtype = torch.int32 if n < 2**31 else torch.int64
    x = torch.arange(n, dtype=idx_dtype, device=device)
    x.mul_(-1640531535).add_(_i32(seed * 2654435761 + 0x5BD1E995))  # 0x9E3779B1 as int32
    x.bitwise_xor_(x.bitwise_right_shift(16).bitwise_and_(0xFFFF))
    x.mul_(0x7FEB352D)
    x.bitwise_xor_(x.bitwise_right_shift(15).bitwise_and_(0x1FFFF))
    x.mul_(-2073188725)  # 0x846CA68B as int32
    x.bitwise_xor_(x.bitwise_right_shift(16).bitwise_and_(0xFFFF))
    return x.bitwise_and_(0xFFFFFF).to(torch.float32).mul_(1.0 / 2**24).reshape(shape)


def _i32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - 2**32 if v >= 2**31 else v


def _bernoulli(delta: torch.Tensor, density: float, rescale: bool, seed: int) -> torch.Tensor:
    if density >= 1:
        return delta
    keep = uniform(delta.shape, seed, delta.device) < density
    kept = delta * keep
    return _rescale_l1(delta, kept) if rescale else kept


def _della(
    delta: torch.Tensor, density: float, epsilon: float, rescale: bool, seed: int
) -> torch.Tensor:
    if density >= 1:
        return delta
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise RecipeError(
            f"della: density ± epsilon must lie in (0, 1); got density={density}, epsilon={epsilon}"
        )
    x = delta.unsqueeze(0) if delta.dim() < 2 else delta
    ranks = x.abs().argsort(dim=1).argsort(dim=1).to(x.dtype) + 1
    lo, hi = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    rank_norm = ((ranks - lo) / (hi - lo)).clamp(0, 1)
    probs = (density - epsilon) + rank_norm * 2 * epsilon
    keep = uniform(probs.shape, seed, x.device) < probs
    kept = (x * keep).reshape(delta.shape)
    return _rescale_l1(delta, kept) if rescale else kept


# --------------------------------------------------------------------------------------------
# Generalized task arithmetic: sparsify each task vector, weight, optionally elect signs (TIES).
def _task_arithmetic_family(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor,
    p: Params,
    *,
    sparsify: str | None,
    consensus: bool,
) -> torch.Tensor:
    assert base is not None
    if not tensors:
        return base
    weights = p.per_source["weight"]
    densities = p.per_source.get("density")
    rescale = bool(p.shared.get("rescale", False))
    deltas = torch.empty((len(tensors), *base.shape), dtype=base.dtype, device=base.device)
    for i, t in enumerate(tensors):
        d = torch.sub(t, base, out=deltas[i])
        if sparsify == "magnitude":
            deltas[i] = _magnitude(d, densities[i], rescale)
        elif sparsify == "random":
            deltas[i] = _bernoulli(d, densities[i], rescale, p.seed * 1000003 + i)
        elif sparsify == "outliers":
            deltas[i] = _magnitude_outliers(d, densities[i], p.per_source["gamma"][i], rescale)
        elif sparsify == "della":
            deltas[i] = _della(
                d, densities[i], p.per_source["epsilon"][i], rescale, p.seed * 1000003 + i
            )
    w = torch.tensor(weights, dtype=base.dtype, device=base.device).view(-1, *([1] * base.dim()))
    deltas.mul_(w)
    normalize = bool(p.shared.get("normalize", False))
    if consensus:
        majority = deltas.sum(dim=0) >= 0
        agree = (deltas.sign() == (majority.to(base.dtype) * 2 - 1)).to(base.dtype)
        mixed = (deltas * agree).sum(dim=0)
        if normalize:  # the divisor is a full pass of its own: only when it is used
            divisor = (w * agree).sum(dim=0)
            divisor[divisor == 0] = 1
            mixed /= divisor
    else:
        mixed = deltas.sum(dim=0)
        if normalize:
            divisor = w.sum(dim=0).expand_as(mixed).clone()
            divisor[divisor.abs() < 1e-8] = 1
            mixed /= divisor
    lam = float(p.shared.get("lambda", 1.0))
    if lam != 1:
        mixed *= lam
    return base + mixed


def _gta(
    name: str,
    sparsify: str | None,
    consensus: bool,
    normalize: bool,
    rescale: bool,
    extra: tuple[Param, ...] = (),
    random: bool = False,
) -> None:
    def fn(tensors: Sequence[torch.Tensor], base: torch.Tensor | None, p: Params) -> torch.Tensor:
        return _task_arithmetic_family(tensors, base, p, sparsify=sparsify, consensus=consensus)

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
    register(name, params=params, needs_base=True, random=random)(fn)


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
@register(
    "linear", params=(_WEIGHT, _flag("normalize", True)), needs_base=False, negative_weights=False
)
def linear(tensors: Sequence[torch.Tensor], base: torch.Tensor | None, p: Params) -> torch.Tensor:
    """Model soup: Σ wᵢθᵢ, divided by Σ wᵢ when normalizing. Every source is an input."""
    weights = p.per_source["weight"]
    out = torch.mul(tensors[0], float(weights[0]))
    for t, w in zip(tensors[1:], weights[1:], strict=True):
        out.add_(t, alpha=float(w))
    if p.shared.get("normalize", True):
        total = float(sum(weights))
        if abs(total) < 1e-12:
            raise RecipeError("linear: weights sum to 0, cannot normalize")
        out.div_(total)
    return out


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

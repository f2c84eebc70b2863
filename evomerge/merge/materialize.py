"""Apply a recipe to open sources, one output tensor at a time.

:func:`plan` resolves every parameter of every output tensor and checks the sources before any
tensor is read, so bad input fails in milliseconds, not after minutes of merging.
:func:`materialize` then streams ``(name, tensor)`` pairs: peak memory is one tensor name's worth
of sources plus its output. The same stream feeds a checkpoint writer or a resident engine.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from evomerge import dtypes
from evomerge.architectures import unknown_family
from evomerge.checkpoint import (
    CheckpointWriter,
    ModelSource,
    check_compatible,
    rename_layer,
)
from evomerge.errors import MergeError, RecipeError
from evomerge.merge.chunked import merge_chunked
from evomerge.merge.methods import Method, Params, get_method
from evomerge.merge.vocab import VocabPlan, vocab_plan
from evomerge.recipe import Recipe, Slot, resolve, rules, spec_values


@dataclass(frozen=True)
class TensorJob:
    """How one output tensor is made: copied from one source, or merged by the method."""

    out_name: str
    src_name: str  # tensor name in the sources
    copy_from: str | None  # source name for a plain copy
    layer: int | None
    params: Params | None
    seed: int
    scale: float = 1.0  # folded routing scale (output projections of routed layers)
    # a layer_methods recipe: this tensor's method and inputs (None: the plan's)
    method: Method | None = None
    models: tuple[str, ...] | None = None
    base: str | None = None


@dataclass
class MergePlan:
    recipe: Recipe
    method: Method
    sources: dict[str, ModelSource]
    jobs: list[TensorJob]
    num_layers: int
    out_dtype: torch.dtype | None
    config: dict[str, Any]
    vocab: VocabPlan | None = None  # tokenizer_source: inputs re-indexed to one vocabulary

    @property
    def models(self) -> list[str]:
        return self.recipe.model_names if self.method.needs_base else sorted(self.recipe.sources)

    @property
    def bytes_read(self) -> int:
        """Bytes of source tensors a materialization reads (the benchmark's unit)."""
        total = 0
        for job in self.jobs:
            names = [job.copy_from] if job.copy_from else self._inputs(job)
            total += sum(self.sources[n].tensors[job.src_name].nbytes for n in names)
        return total

    def _inputs(self, job: TensorJob | None = None) -> list[str]:
        if job is not None and job.method is not None:  # a layer_methods recipe
            return [*(job.models or ()), *([job.base] if job.base else [])]
        return self.models + ([self.recipe.base] if self.method.needs_base else [])


def open_sources(recipe: Recipe, *, allow_pickle: bool = False) -> dict[str, ModelSource]:
    return {
        name: ModelSource(src.path, name=name, allow_pickle=allow_pickle)
        for name, src in recipe.sources.items()
    }


_AUTO: Any = object()


def plan(
    recipe: Recipe,
    sources: Mapping[str, ModelSource] | None = None,
    *,
    allow_pickle: bool = False,
    vocab: VocabPlan | None = _AUTO,
) -> MergePlan:
    """Validate a recipe against its sources and resolve every tensor's parameters.
    ``vocab``: the vocabulary surgery, when a caller already made it (default: from the
    recipe's tokenizer_source)."""
    method = get_method(recipe.method)
    srcs = dict(sources) if sources is not None else open_sources(recipe, allow_pickle=allow_pickle)
    if recipe.layer_methods:
        return _plan_layer_methods(recipe, srcs)
    missing = set(recipe.sources) - set(srcs)
    if missing:
        raise RecipeError(f"sources: {sorted(missing)} named in the recipe but not opened")
    models = recipe.model_names if method.needs_base else sorted(recipe.sources)
    if method.needs_base and recipe.base is None:
        raise RecipeError(f"base: method {method.name!r} needs a base model; set `base:`")
    if len(models) < method.min_models or (
        method.max_models is not None and len(models) > method.max_models
    ):
        want = (
            f"exactly {method.min_models}"
            if method.min_models == method.max_models
            else f"at least {method.min_models}"
        )
        raise RecipeError(
            f"sources: method {method.name!r} takes {want} model(s) besides the base, got {models}"
        )
    _check_parameters(recipe, method, models)
    ordered = {n: srcs[n] for n in sorted(srcs)}
    ref = ordered[recipe.base or next(iter(ordered))]
    if vocab is _AUTO:
        vocab = vocab_plan(recipe, {n: ordered[n] for n in recipe.sources})
    check_compatible({ref.name: ref, **ordered}, vocab_tensors=vocab.tensors if vocab else ())
    if ref.architecture is None:
        _refuse_module_kinds(recipe, ref)
    n_layers = ref.num_layers
    jobs: list[TensorJob] = []
    layer_names = {i: ref.layer_tensors(i) for i in range(n_layers)}
    non_layer = ref.non_layer_tensors()
    route = recipe.routing
    if route is None:
        for name in ref.tensors:
            jobs.append(_job(recipe, method, models, ref, name, name, None, n_layers))
        out_layers = n_layers
    else:
        for i, slot in enumerate(route):
            if slot.layer >= n_layers:
                raise RecipeError(
                    f"routing.{i}.layer: {slot.layer} but the sources have {n_layers} layers"
                )
        cumulative = _folded_scales(route, ref)
        for name in non_layer:
            jobs.append(_job(recipe, method, models, ref, name, name, None, n_layers))
        for i, slot in enumerate(route):
            for name in layer_names[slot.layer]:
                job = _job(
                    recipe, method, models, ref, name, rename_layer(name, i), slot.source, n_layers
                )
                if cumulative[i] != 1.0 and ref.architecture.is_fold_point(name):  # type: ignore[union-attr]
                    job = replace(job, scale=1.0 / cumulative[i])
                jobs.append(job)
        out_layers = len(route)
    out_dtype = dtypes.to_torch(recipe.dtype) if recipe.dtype else None
    config = dict(ref.config)
    if recipe.dtype:
        config["torch_dtype"] = recipe.dtype
        config["dtype"] = recipe.dtype
    if vocab is not None:
        config["vocab_size"] = vocab.size
    return MergePlan(recipe, method, ordered, jobs, out_layers, out_dtype, config, vocab)


def _folded_scales(route: list[Slot], ref: ModelSource) -> list[float]:
    """Cumulative input scale at each routed layer; checks that the fold is exact here."""
    out, c = [], 1.0
    for slot in route:
        c *= slot.scale
        out.append(c)
    if any(v != 1.0 for v in out):
        # Where blocks read the residual stream only through scale-invariant norms and write
        # back only through their output projections, scaling the stream entering a block by s
        # equals dividing this block's and every later block's output projections by s.
        arch = ref.architecture
        family = ref.config.get("model_type")
        if arch is None:
            raise RecipeError(
                "routing: slot scales other than 1 fold into the output projections its "
                f"family's table names; source {ref.name!r} ({ref.path}): "
                f"{unknown_family(ref.config)}. Use scale 1 on every slot."
            )
        if not arch.fold_points:
            raise RecipeError(
                f"routing: slot scales other than 1 fold exactly into the weights only for "
                f"pre-norm families; source {ref.name!r} ({ref.path}) has model_type {family!r}, "
                "whose table names no fold points. Use scale 1 on every slot."
            )
        layer0 = ref.layer_tensors(0)
        missing = [
            p
            for p in arch.fold_points
            if not any(arch.is_fold_point(n) and f".{p}." in f".{n}" for n in layer0)
        ]
        if missing:
            raise RecipeError(
                f"routing: source {ref.name!r} ({ref.path}) lacks the {'/'.join(missing)} "
                "tensors that slot scales fold into"
            )
    return out


def _job(
    recipe: Recipe,
    method: Method,
    models: list[str],
    ref: ModelSource,
    src_name: str,
    out_name: str,
    copy_from: str | None,
    n_layers: int,
) -> TensorJob:
    info = ref.tensors[src_name]
    seed = int.from_bytes(hashlib.sha256(f"{recipe.seed}/{src_name}".encode()).digest()[:4], "big")
    if copy_from is not None:
        return TensorJob(out_name, src_name, copy_from, info.layer, None, seed)
    where = dict(tensor=src_name, kind=info.kind.value, layer=info.layer, num_layers=n_layers)
    per_source: dict[str, list[float]] = {}
    shared: dict[str, float | bool] = {}
    for p in method.params:
        if p.per_source:
            vals = []
            for m in models:
                spec = recipe.sources[m].parameters.get(p.name, recipe.parameters.get(p.name))
                vals.append(p.default if spec is None else resolve(spec, **where))
            per_source[p.name] = vals  # type: ignore[assignment]
        else:
            spec = recipe.parameters.get(p.name)
            if spec is None:
                shared[p.name] = p.default  # type: ignore[assignment]
            elif isinstance(spec, bool):
                shared[p.name] = spec
            else:
                shared[p.name] = resolve(spec, **where)
    if method.name.startswith("della"):
        for d, e in zip(per_source["density"], per_source["epsilon"], strict=True):
            if d < 1 and (d + e >= 1 or d - e <= 0):
                raise RecipeError(
                    f"tensor {src_name!r}: della needs density ± epsilon inside (0, 1); "
                    f"got density={d}, epsilon={e}"
                )
    return TensorJob(out_name, src_name, None, info.layer, Params(per_source, shared, seed), seed)


def _refuse_module_kinds(recipe: Recipe, ref: ModelSource) -> None:
    """Per-module values on a family without a table would rest on guessed tensor kinds."""
    specs = [(f"parameters.{k}", v) for k, v in recipe.parameters.items()] + [
        (f"sources.{n}.parameters.{k}", v)
        for n, src in recipe.sources.items()
        for k, v in src.parameters.items()
    ]
    for where, spec in specs:
        if not isinstance(spec, bool) and any(r.kind is not None for r in rules(spec)):
            raise RecipeError(
                f"{where}: per-module values need to know which tensors are attention, mlp, "
                f"norms...; source {ref.name!r} ({ref.path}): {unknown_family(ref.config)}"
            )


def _check_parameters(recipe: Recipe, method: Method, models: list[str]) -> None:
    """Unknown names, missing required values, flags vs numbers, and ranges — all before work."""
    known = method.param_index
    for key, spec in recipe.parameters.items():
        p = known.get(key)
        if p is None:
            raise RecipeError(
                f"parameters.{key}: not a parameter of {method.name!r} (known: {sorted(known)})"
            )
        _check_value(p, spec, f"parameters.{key}", method)
    for name, src in recipe.sources.items():
        for key, spec in src.parameters.items():
            p = known.get(key)
            if p is None or not p.per_source:
                raise RecipeError(
                    f"sources.{name}.parameters.{key}: not a per-model parameter of {method.name!r}"
                )
            if name not in models:
                raise RecipeError(
                    f"sources.{name}.parameters.{key}: {name!r} is the base; "
                    f"{method.name!r} gives the base no parameters"
                )
            _check_value(p, spec, f"sources.{name}.parameters.{key}", method)
    for p in method.params:
        if (
            p.default is None
            and p.name not in recipe.parameters
            and not (p.per_source and all(p.name in recipe.sources[m].parameters for m in models))
        ):
            raise RecipeError(f"parameters.{p.name}: required by {method.name!r}")


def _check_value(p: Any, spec: Any, where: str, method: Method) -> None:
    if p.is_flag:
        if not isinstance(spec, bool):
            raise RecipeError(f"{where}: must be true or false, got {spec!r}")
        return
    if isinstance(spec, bool):
        raise RecipeError(f"{where}: must be a number, got {spec!r}")
    for v in spec_values(spec):
        p.check(v, where)
        if p.name == "weight" and v < 0 and not method.negative_weights:
            raise RecipeError(f"{where}: negative weight {v} is not allowed for {method.name!r}")


def materialize(
    mp: MergePlan, device: str | torch.device = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the merged tensors in the sources' order. Computation runs in float32 (float64 stays
    float64) on ``device``; outputs take the recipe's dtype, else the sources'."""
    device = torch.device(device)
    base = mp.recipe.base if mp.method.needs_base else None
    for job in mp.jobs:
        if job.copy_from is not None:
            t = mp.sources[job.copy_from].get(job.src_name, device)
            if job.scale != 1.0:
                work = torch.float64 if t.dtype == torch.float64 else torch.float32
                out = (t.to(work) * job.scale).to(mp.out_dtype or t.dtype)
            else:
                out = t if mp.out_dtype is None else t.to(mp.out_dtype)
            _check_finite(mp, job, out, [job.copy_from])
            yield job.out_name, out
            continue
        method, models, job_base = _job_inputs(mp, job, base)
        raw = _read_inputs(mp, job, [*models, *([job_base] if job_base else [])], device)
        dtype = raw[0].dtype
        assert job.params is not None
        inputs = models + ([job_base] if job_base else [])
        if (
            method.kernel is not None
        ):  # row chunks, straight from the sources' dtype to the output's
            base_raw = raw[len(models)] if job_base else None
            out, total = merge_chunked(
                method.kernel,
                raw[: len(models)],
                base_raw,
                job.params,
                out_dtype=mp.out_dtype or dtype,
                scale=job.scale,
            )
            del raw, base_raw
            _check_finite(mp, job, out, inputs, total)
            yield job.out_name, out
            del out  # not held while the next tensor merges: the consumer has it
            continue
        work = torch.float64 if dtype == torch.float64 else torch.float32
        tensors = [t.to(work) for t in raw[: len(models)]]
        base_t = raw[len(models)].to(work) if job_base else None
        del raw
        out = method(tensors, base_t, job.params)
        del tensors, base_t
        if job.scale != 1.0:
            out = out * job.scale
        out = out.to(mp.out_dtype or dtype)
        _check_finite(mp, job, out, inputs)
        yield job.out_name, out
        del out


# -- sources with different vocabularies (recipe.tokenizer_source) -----------------------------
def _read_inputs(
    mp: MergePlan, job: TensorJob, names: list[str], device: torch.device
) -> list[torch.Tensor]:
    got = {n: mp.sources[n].get(job.src_name, device) for n in names}
    if mp.vocab is not None and job.src_name in mp.vocab.tensors:
        got = mp.vocab.permute(got)
    return [got[n] for n in names]


# -- a method per layer group (recipe.layer_methods) ----------------------------------------------
def _job_inputs(
    mp: MergePlan, job: TensorJob, base: str | None
) -> tuple[Method, list[str], str | None]:
    if job.method is None:
        return mp.method, mp.models, base
    return job.method, list(job.models or ()), job.base


def _plan_layer_methods(recipe: Recipe, srcs: dict[str, ModelSource]) -> MergePlan:
    """Each (method, models) of the recipe is planned as the single-method recipe it is (so each
    is validated as such, parameters filtered to those its method reads); each tensor then takes
    its job from the plan of the method that merges its layer (outside layers: layer 0's)."""
    ref = srcs[recipe.base or sorted(srcs)[0]]
    n_layers = ref.num_layers
    for i, lm in enumerate(recipe.layer_methods or []):
        if lm.layers[1] > n_layers:
            raise RecipeError(
                f"layer_methods.{i}.layers: {list(lm.layers)} but the sources have "
                f"{n_layers} layers"
            )
    layers = sorted({s.layer for s in recipe.routing}) if recipe.routing else list(range(n_layers))
    keys = {_view_key(recipe, layer) for layer in [0, *layers]}
    views = {k: _view(recipe, *k) for k in sorted(keys, key=str)}
    readers = {p for v in views.values() for p in get_method(v.method).param_index}
    named = [*recipe.parameters] + [k for s in recipe.sources.values() for k in s.parameters]
    for key in named:
        if key not in readers:
            raise RecipeError(
                f"parameters.{key}: no method of this recipe reads it "
                f"(methods: {sorted({v.method for v in views.values()})})"
            )
    vocab = vocab_plan(recipe, {n: srcs[n] for n in recipe.sources})
    plans = {k: plan(v, srcs, vocab=vocab) for k, v in views.items()}
    first = next(iter(plans.values()))
    by_name = {k: {j.out_name: j for j in p.jobs} for k, p in plans.items()}
    jobs = []
    for job in first.jobs:
        key = _view_key(recipe, job.layer if job.layer is not None else 0)
        sub, own = plans[key], by_name[key][job.out_name]
        if own.copy_from is None:
            base = sub.recipe.base if sub.method.needs_base else None
            own = replace(own, method=sub.method, models=tuple(sub.models), base=base)
        jobs.append(own)
    return replace(first, recipe=recipe, sources=dict(sorted(srcs.items())), jobs=jobs)


def _view_key(recipe: Recipe, layer: int) -> tuple[str, tuple[str, ...] | None]:
    lm = recipe.method_at(layer)
    if lm is None:
        return recipe.method, None
    return lm.method, tuple(lm.models) if lm.models else None


def _view(recipe: Recipe, method_name: str, models: tuple[str, ...] | None) -> Recipe:
    """The single-method recipe that merges the layers of one (method, models)."""
    method = get_method(method_name)
    base = recipe.base if method.needs_base else None
    keep = set(recipe.sources) if models is None else set(models) | ({base} if base else set())
    params = method.param_index
    sources = {
        n: s.model_copy(
            update={
                "parameters": {
                    k: v for k, v in s.parameters.items() if k in params and params[k].per_source
                }
            }
        )
        for n, s in recipe.sources.items()
        if n in keep
    }
    return recipe.model_copy(
        update={
            "method": method_name,
            "sources": sources,
            "base": base if base in sources else None,
            "parameters": {k: v for k, v in recipe.parameters.items() if k in params},
            "layer_methods": None,
            "tokenizer_source": None,
        }
    )


def _check_finite(
    mp: MergePlan,
    job: TensorJob,
    out: torch.Tensor,
    inputs: list[str],
    total: torch.Tensor | None = None,
) -> None:
    """A finite sum of the output proves every element finite (the merge kernels take it while
    each chunk is in cache); otherwise, and only then, the exact check and the inputs."""
    if not out.is_floating_point():
        return
    if total is None:
        total = torch.sum(out, dtype=torch.float64 if out.dtype == torch.float64 else torch.float32)
    if math.isfinite(float(total)) or bool(torch.isfinite(out).all()):
        return
    for name in inputs:
        if not bool(torch.isfinite(mp.sources[name].get(job.src_name).float()).all()):
            raise MergeError(
                f"tensor {job.src_name!r} of source {name!r} "
                f"({mp.sources[name].path}) holds NaN or inf"
            )
    raise MergeError(
        f"output tensor {job.out_name!r} is not finite (overflow in "
        f"{mp.out_dtype or 'the source dtype'}?)"
    )


def model_card(recipe: Recipe) -> str:
    return (
        "---\ntags: [merge, evomerge]\n---\n# Merged model\n\nMade by evomerge from this "
        f"recipe (hash `{recipe.content_hash()}`):\n\n```yaml\n{recipe.to_yaml()}```\n"
    )


def merge_to_dir(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    max_shard_size: int = 5 * 1024**3,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> Path:
    """Materialize a recipe into a Hugging Face checkpoint directory, atomically."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        from evomerge.errors import OutputExistsError

        raise OutputExistsError(
            f"output directory {out_dir} exists; choose another or pass --overwrite"
        )
    mp = plan(recipe, allow_pickle=allow_pickle)
    with CheckpointWriter(
        out_dir, config=mp.config, max_shard_size=max_shard_size, overwrite=overwrite
    ) as writer:
        for name, tensor in materialize(mp, device):
            writer.add(name, tensor)
        with tempfile.TemporaryDirectory() as built:
            tok = mp.sources[recipe.tokenizer_name].path
            if mp.vocab is not None:  # the output vocabulary's tokenizer, as mergekit saves it
                mp.vocab.save_tokenizer(built)
                gen = Path(tok) / "generation_config.json"
                if gen.exists():
                    shutil.copy2(gen, Path(built) / gen.name)
                tok = built
            return writer.finish(
                num_layers=mp.num_layers if recipe.routing else None,
                tokenizer_from=tok,
                model_card=model_card(recipe),
            )

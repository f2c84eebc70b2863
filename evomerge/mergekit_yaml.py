"""Read and write mergekit merge configs, so users keep the configs they already have.

Both directions are checked, not assumed: :func:`to_mergekit` re-reads what it wrote and compares
every tensor's resolved parameters against the recipe's, raising instead of exporting a config
that would make different weights in mergekit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from evomerge.checkpoint import ModelSource, layer_index
from evomerge.errors import RecipeError
from evomerge.fileio import read_yaml
from evomerge.recipe import (
    Gradient,
    ParamSpec,
    PerLayer,
    Recipe,
    Values,
    numbers,
    resolve,
    rules,
)

_MERGEKIT_KEYS = {"merge_method", "models", "slices", "base_model", "modules"}
# Substrings mergekit filters can use for our module kinds, tried in this order; the export is
# verified against the real tensor names, so a wrong guess raises instead of exporting silently.
_KIND_FILTERS = {
    "norm": ("norm", "ln_"),
    "embedding": ("embed_tokens", "wte", "embed_in", "word_embeddings"),
    "head": ("lm_head", "embed_out"),
    "attention": ("self_attn", "attn", "attention"),
    "mlp": ("mlp", "feed_forward"),
}


def is_mergekit_config(data: Any) -> bool:
    return isinstance(data, dict) and "merge_method" in data and "method" not in data


def load_any(path: str | Path) -> Recipe:
    """An evomerge recipe or a mergekit YAML, told apart by their keys."""
    path = Path(path)
    data = read_yaml(path, error=RecipeError)
    if is_mergekit_config(data):
        return from_mergekit(data, origin=str(path), base_dir=path.parent)
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping (an evomerge recipe or a mergekit config)")
    return Recipe.from_dict(data, origin=str(path), base_dir=path.parent)


# -- import ------------------------------------------------------------------------------------
def from_mergekit(
    data: dict[str, Any], *, origin: str = "mergekit config", base_dir: Path | None = None
) -> Recipe:
    unknown = (
        set(data)
        - _MERGEKIT_KEYS
        - {"parameters", "dtype", "out_dtype", "tokenizer_source", "tokenizer", "chat_template"}
    )
    if unknown:
        raise RecipeError(f"{origin}: unsupported mergekit key(s) {sorted(unknown)}")
    if data.get("modules"):
        raise RecipeError(f"{origin}: modules: multi-module mergekit configs are not supported")
    _check_shapes(data, origin)
    names: dict[str, str] = {}  # path -> source name

    def name_of(ref: Any, where: str) -> str:
        if not isinstance(ref, str):
            raise RecipeError(f"{origin}: {where}: expected a model path, got {ref!r}")
        if "+" in ref:
            raise RecipeError(f"{origin}: {where}: LoRA references ({ref!r}) are not supported")
        if ref not in names:
            stem = Path(ref).name or "model"
            n, i = stem, 1
            while n in names.values():
                i += 1
                n = f"{stem}_{i}"
            names[ref] = n
        return names[ref]

    sources: dict[str, dict[str, Any]] = {}
    base = name_of(data["base_model"], "base_model") if data.get("base_model") else None
    if base:
        sources[base] = {"path": data["base_model"], "parameters": {}}
    routing: list[dict[str, Any]] | None = None
    if data.get("models") and data.get("slices"):
        raise RecipeError(f"{origin}: give either models or slices, not both")
    if data.get("models"):
        for i, m in enumerate(data["models"]):
            n = name_of(m.get("model"), f"models.{i}.model")
            params = {
                k: _import_spec(v, f"{origin}: models.{i}.parameters.{k}")
                for k, v in (m.get("parameters") or {}).items()
            }
            sources.setdefault(n, {"path": m["model"], "parameters": {}})["parameters"].update(
                params
            )
    elif data.get("slices"):
        routing = []
        for i, sl in enumerate(data["slices"]):
            if sl.get("parameters") or any(s.get("parameters") for s in sl.get("sources", [])):
                raise RecipeError(
                    f"{origin}: slices.{i}: per-slice parameters are not supported;"
                    " give parameters at the top level"
                )
            ranges = {tuple(s["layer_range"]) for s in sl["sources"]}
            if len(ranges) != 1:
                raise RecipeError(f"{origin}: slices.{i}: sources must share one layer_range")
            lo, hi = ranges.pop()
            srcs = [name_of(s["model"], f"slices.{i}.sources") for s in sl["sources"]]
            for s in sl["sources"]:
                sources.setdefault(names[s["model"]], {"path": s["model"], "parameters": {}})
            for layer in range(lo, hi):
                routing.append({"layer": layer, "source": srcs[0] if len(srcs) == 1 else None})
    else:
        raise RecipeError(f"{origin}: neither models nor slices given")
    tok = data.get("tokenizer_source")
    if data.get("tokenizer"):
        raise RecipeError(
            f"{origin}: tokenizer: per-token embedding settings are not supported; "
            "use tokenizer_source (base, union or a model)"
        )
    recipe = {
        "sources": sources,
        "method": data["merge_method"],
        "base": base,
        "parameters": {
            k: v if isinstance(v, bool) else _import_spec(v, f"{origin}: parameters.{k}")
            for k, v in (data.get("parameters") or {}).items()
        },
        "routing": routing,
        "dtype": data.get("out_dtype") or data.get("dtype"),
        "tokenizer_source": _import_tokenizer_source(tok, base, name_of),
    }
    return Recipe.from_dict(recipe, origin=origin, base_dir=base_dir)


def _check_shapes(data: dict[str, Any], origin: str) -> None:
    """The structure mergekit expects, checked before it is read: each error names its key."""

    def fail(key: str, what: str) -> None:
        raise RecipeError(f"{origin}: {key}: expected {what}")

    def params(p: Any, key: str) -> None:
        if p is not None and not isinstance(p, dict):
            fail(f"{key}.parameters", "a mapping of parameter names to values")

    params(data.get("parameters"), "<top>")
    if not isinstance(data.get("merge_method"), str):
        fail("merge_method", "a method name")
    models = data.get("models")
    if models is not None:
        if not isinstance(models, list):
            fail("models", "a list of {model: PATH, parameters: {...}}")
        for i, m in enumerate(models):
            if not isinstance(m, dict) or "model" not in m:
                fail(f"models.{i}", "a mapping with a `model:` path")
            if set(m) - {"model", "parameters"}:
                fail(
                    f"models.{i}",
                    f"only model and parameters, not {sorted(set(m) - {'model', 'parameters'})}",
                )
            params(m.get("parameters"), f"models.{i}")
    slices = data.get("slices")
    if slices is not None:
        if not isinstance(slices, list):
            fail("slices", "a list of {sources: [...]}")
        for i, sl in enumerate(slices):
            if not isinstance(sl, dict) or not isinstance(sl.get("sources"), list):
                fail(f"slices.{i}", "a mapping with a `sources:` list")
            if not sl["sources"]:
                fail(f"slices.{i}.sources", "at least one source")
            for j, s in enumerate(sl["sources"]):
                key = f"slices.{i}.sources.{j}"
                if not isinstance(s, dict) or "model" not in s:
                    fail(key, "a mapping with a `model:` path")
                lr = s.get("layer_range")
                if not (
                    isinstance(lr, list)
                    and len(lr) == 2
                    and all(isinstance(x, int) and not isinstance(x, bool) for x in lr)
                    and 0 <= lr[0] < lr[1]
                ):
                    fail(f"{key}.layer_range", f"[start, end) with 0 <= start < end, got {lr!r}")


def _import_spec(v: Any, where: str) -> Any:
    if isinstance(v, dict):
        v = [v]
    if isinstance(v, list) and v and any(isinstance(c, dict) for c in v):
        for c in v:
            if not isinstance(c, dict):
                raise RecipeError(f"{where}: every conditional entry is a mapping of filter/value")
            if set(c) - {"filter", "value"}:
                raise RecipeError(f"{where}: conditional entries take filter and value")
    return v


# -- export ------------------------------------------------------------------------------------
def to_mergekit(recipe: Recipe, sources: dict[str, ModelSource] | None = None) -> dict[str, Any]:
    """The mergekit config that makes the same weights; sources (opened from the recipe's paths
    when not given) let module-kind parameters become verified name filters."""
    recipe = _one_method(recipe)
    if recipe.routing is not None:
        return routed_to_mergekit(recipe, sources)
    srcs = sources or {n: ModelSource(s.path, name=n) for n, s in recipe.sources.items()}
    ref = srcs[recipe.base or sorted(srcs)[0]]
    names = list(ref.tensors)
    out: dict[str, Any] = {"merge_method": recipe.method}
    if recipe.base:
        out["base_model"] = recipe.sources[recipe.base].path
    models = []
    for n in sorted(recipe.sources):
        src = recipe.sources[n]
        if n == recipe.base and not src.parameters:
            continue
        entry: dict[str, Any] = {"model": src.path}
        if src.parameters:
            entry["parameters"] = {
                k: _export_spec(v, ref, names) for k, v in src.parameters.items()
            }
        models.append(entry)
    out["models"] = models
    if recipe.parameters:
        out["parameters"] = {
            k: v if isinstance(v, bool) else _export_spec(v, ref, names)
            for k, v in recipe.parameters.items()
        }
    if recipe.dtype:
        out["dtype"] = recipe.dtype
    exported = _export_tokenizer_source(recipe)
    if exported is not None:
        out["tokenizer_source"] = exported
    _verify(recipe, from_mergekit(out), ref)
    return out


def _import_tokenizer_source(tok: Any, base: str | None, name_of: Any) -> str | None:
    """mergekit's ``base`` / ``union`` / a model path → ours (``base`` / ``union`` / a name)."""
    if not tok:
        return None
    if tok == "union":
        return "union"
    if tok == "base":
        return base if base is not None else "base"
    return str(name_of(tok, "tokenizer_source"))


def _export_tokenizer_source(recipe: Recipe) -> str | None:
    tok = recipe.tokenizer_source
    if tok == "union":
        return "union"
    if tok == "base" or (recipe.base is not None and tok in (None, recipe.base)):
        return "base"
    return recipe.sources[tok].path if tok else None


def _one_method(recipe: Recipe) -> Recipe:
    """A recipe whose layer_methods all repeat its method is a plain mergekit config; one with a
    method per layer group is not: mergekit 0.1.5 takes one ``merge_method`` per config, and its
    ``slices`` and ``modules`` carry sources, a base and parameters but no method."""
    if not recipe.layer_methods:
        return recipe
    for i, lm in enumerate(recipe.layer_methods):
        if lm.method != recipe.method or lm.models:
            what = f"{lm.method!r}" + (f" with models {lm.models}" if lm.models else "")
            raise RecipeError(
                f"layer_methods.{i}: layers {list(lm.layers)} merge by {what} while the recipe's "
                f"method is {recipe.method!r}; mergekit takes one merge_method per config (its "
                "slices carry no method), so it cannot express a method per layer group. "
                "Export the recipe (--format recipe) or a checkpoint (--format hf)"
            )
    return recipe.model_copy(update={"layer_methods": None})


def _export_spec(spec: ParamSpec, ref: ModelSource, names: list[str]) -> Any:
    """mergekit's form of a spec: the values themselves, or ``[{filter, value}, ...]`` with module
    kinds turned into name filters that select exactly those tensors of ``ref``."""
    found = rules(spec)
    if len(found) == 1 and found[0].values is spec:  # no kinds, no filters
        return _export_values(spec)  # type: ignore[arg-type]
    conds = []
    for rule in found:
        filters = list(rule.filters)
        if rule.kind is not None:
            filt = _kind_filter(rule.kind, ref, names)
            if filt is None:  # a kind this model has no tensors of and no filter for
                continue
            filters.append(filt)
        if len(filters) > 1:
            raise RecipeError(
                f"filters {filters}: mergekit conditions take one name filter each; "
                "flatten the nested per-module/filter parameters"
            )
        conds.append(
            {**({"filter": filters[0]} if filters else {}), "value": _export_values(rule.values)}
        )
    return conds


def _export_values(values: Values) -> Any:
    # a per_layer list of n values over n layers: mergekit's gradient hits each (t·(n−1) = i)
    v = numbers(values)
    return v if isinstance(values, list | Gradient | PerLayer) else v[0]


def _kind_filter(kind: str, ref: ModelSource, names: list[str]) -> str | None:
    members = [n for n in names if ref.tensors[n].kind.value == kind]
    candidates = _KIND_FILTERS.get(kind, ())
    if not candidates and not members:
        return None
    filt = next((c for c in candidates if all(c in n for n in members)), None)
    if filt is None:
        raise RecipeError(f"no mergekit filter selects the {kind} tensors of {ref.path}")
    return filt


def _verify(ours: Recipe, theirs: Recipe, ref: ModelSource) -> None:
    """Every tensor must resolve to the same parameters under mergekit's reading."""
    by_path = {s.path: n for n, s in theirs.sources.items()}
    for name, info in ref.tensors.items():
        where = dict(tensor=name, kind=info.kind.value, layer=info.layer, num_layers=ref.num_layers)
        for n, src in ours.sources.items():
            other = theirs.sources[by_path[src.path]]
            for key, spec in src.parameters.items():
                a = resolve(spec, **where)
                b = resolve(other.parameters[key], **where)
                if abs(a - b) > 1e-9:
                    raise RecipeError(
                        f"sources.{n}.parameters.{key}: mergekit would read {b} "
                        f"for tensor {name!r} where the recipe means {a}"
                    )


def dump(data: dict[str, Any], *, comments: Sequence[str] = ()) -> str:
    """YAML text; ``comments`` go on top as ``#`` lines (what a reader of the file must know)."""
    head = "".join(f"# {line}\n" for c in comments for line in c.splitlines())
    return head + yaml.safe_dump(data, sort_keys=False)


# -- export of routed recipes: passthrough slices ----------------------------------------------
def random_mask_caveat(recipe: Recipe) -> str | None:
    """Why mergekit would not rebuild the scored model, for methods that draw random masks (DARE,
    DELLA): mergekit draws its own (``torch.bernoulli``), we draw ours from a seeded hash. No
    stock mergekit option takes masks from outside, so there is no exact mergekit export."""
    from evomerge.merge.methods import get_method

    if not get_method(recipe.method).random:
        return None
    return (
        f"method {recipe.method!r} drops parameters at random: mergekit draws its own random "
        "masks, so the model it builds from this config is NOT the model evomerge scored "
        "(same recipe, other masks). For the scored model, export with --format hf."
    )


def depth_caveat(recipe: Recipe) -> str | None:
    """A routed recipe that changes the depth of a family whose config lists one entry per
    layer (``layer_types``: Qwen2, Qwen3…): mergekit writes the new layer count but keeps the
    sources' list, a config recent transformers refuse to load (our hf export resizes it)."""
    if recipe.routing is None:
        return None
    src = recipe.sources[recipe.base or sorted(recipe.sources)[0]]
    config = ModelSource(src.path).config
    types = config.get("layer_types")
    if not isinstance(types, list) or len(types) == len(recipe.routing):
        return None
    return (
        f"the route has {len(recipe.routing)} layers but mergekit keeps the sources' "
        f"`layer_types` ({len(types)} entries) in the config it writes, which recent "
        "transformers refuse to load; resize it by hand, or export with --format hf"
    )


def routed_to_mergekit(
    recipe: Recipe, sources: dict[str, ModelSource] | None = None
) -> dict[str, Any]:
    """A routed recipe as mergekit slices that make the same tensors, or a refusal that says
    why.

    Each output layer is one source's layer, copied; a slot's cumulative input scale c folds into
    the family's fold points (the output projections) as 1/c, as our merge does. mergekit takes
    the embeddings from the first slice's models and the final norm and head from the last
    slice's. When those are the models the recipe takes them from: ``passthrough`` slices, the
    scales as its per-tensor ``scale``. Otherwise: ``linear`` slices without normalizing, the
    lending model added to the first/last slice with weight 1 on its tensors (filtered by their
    full names) and 0 elsewhere (1·x + 0·y = x exactly). Slots merged across sources and
    non-layer tensors merged from several sources have no exact slice form: refused.
    """
    from evomerge.merge.materialize import plan

    def refuse(why: str) -> RecipeError:
        return RecipeError(
            f"routing: {why}; mergekit's passthrough cannot build this model exactly. "
            "Export the scored model with --format hf (or the recipe with --format recipe)"
        )

    mp = plan(recipe, sources)
    route = recipe.routing
    assert route is not None
    merged = [i for i, s in enumerate(route) if s.source is None]
    if merged:
        raise refuse(f"slot {merged[0]} merges layer {route[merged[0]].layer} across sources")
    ref = mp.sources[recipe.base or next(iter(mp.sources))]
    arch = ref.architecture
    scales: list[float] = [1.0] * len(route)
    outer: dict[str, str] = {}  # non-layer tensor -> the one source it is copied from
    for job in mp.jobs:
        if job.layer is None:
            outer[job.out_name] = _copied_from(recipe, mp.models, job) or ""
            if not outer[job.out_name]:
                raise refuse(
                    f"tensor {job.out_name!r} is merged by {recipe.method!r} across sources, "
                    "not copied from one"
                )
        elif job.scale != 1.0:
            scales[layer_index(job.out_name)] = job.scale  # type: ignore[index]
    folds = arch.fold_points if arch is not None else ()
    if any(s != 1.0 for s in scales):
        for name in ref.layer_tensors(0):  # mergekit filters are substrings of tensor names
            if any(f in name for f in folds) != arch.is_fold_point(name):  # type: ignore[union-attr]
                raise refuse(f"no name filter selects exactly the fold points ({name!r})")
    runs: list[tuple[str, int, int, float]] = []  # source, first layer, end, scale
    for slot, s in zip(route, scales, strict=True):
        assert slot.source is not None
        if runs and runs[-1][0] == slot.source and runs[-1][2] == slot.layer and runs[-1][3] == s:
            runs[-1] = (slot.source, runs[-1][1], slot.layer + 1, s)
        else:
            runs.append((slot.source, slot.layer, slot.layer + 1, s))
    # mergekit plans the embeddings over the first slice's models, the final norm and head over
    # the last slice's: those from another model need it in that slice (linear, weight 1 there)
    borrowed: dict[int, dict[str, str]] = {}  # slice -> {outer tensor: its source}
    for name, src in outer.items():
        at = 0 if ref.tensors[name].kind.value == "embedding" else len(runs) - 1
        if src != runs[at][0]:
            if any(name in other for other in ref.tensors if other != name):
                raise refuse(f"no name filter selects {name!r} alone")
            borrowed.setdefault(at, {})[name] = src
    path = {n: src.path for n, src in recipe.sources.items()}
    slices: list[dict[str, Any]] = []
    if not borrowed:  # every slice one model: passthrough, scales as mergekit's `scale`
        for src, lo, hi, s in runs:
            entry: dict[str, Any] = {"model": path[src], "layer_range": [lo, hi]}
            if s != 1.0:
                entry["parameters"] = {
                    "scale": [{"filter": f, "value": s} for f in folds] + [{"value": 1.0}]
                }
            slices.append({"sources": [entry]})
        out: dict[str, Any] = {"merge_method": "passthrough", "slices": slices}
    else:  # linear without normalizing: 1·x + 0·y = x, s·x + 0·y = s·x, bit for bit
        for k, (src, lo, hi, s) in enumerate(runs):
            lent = borrowed.get(k, {})
            own: list[dict[str, Any]] = [{"filter": n, "value": 0.0} for n in lent]
            own += [{"filter": f, "value": s} for f in folds] if s != 1.0 else []
            sources = [
                {
                    "model": path[src],
                    "layer_range": [lo, hi],
                    "parameters": {"weight": [*own, {"value": 1.0}] if own else 1.0},
                }
            ]
            for other in sorted(set(lent.values())):
                names = [n for n, m in lent.items() if m == other]
                sources.append(
                    {
                        "model": path[other],
                        "layer_range": [lo, hi],
                        "parameters": {
                            "weight": [{"filter": n, "value": 1.0} for n in names]
                            + [{"value": 0.0}]
                        },
                    }
                )
            slices.append({"sources": sources})
        out = {"merge_method": "linear", "slices": slices, "parameters": {"normalize": False}}
    if recipe.dtype:
        out["dtype"] = recipe.dtype
    return out


def _copied_from(recipe: Recipe, models: list[str], job: Any) -> str | None:
    """The source a merged non-layer tensor equals bit for bit: a linear merge whose weights
    are one 1 and zeros (1·x + 0·y = x, divided by 1)."""
    if job.copy_from is not None:
        return str(job.copy_from)
    if recipe.method != "linear" or job.params is None:
        return None
    weights = job.params.per_source["weight"]
    ones = [m for m, w in zip(models, weights, strict=True) if w == 1.0]
    if len(ones) == 1 and all(w in (0.0, 1.0) for w in weights):
        return ones[0]
    return None

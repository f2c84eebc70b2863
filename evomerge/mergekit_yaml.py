"""Read and write mergekit merge configs, so users keep the configs they already have.

Both directions are checked, not assumed: :func:`to_mergekit` re-reads what it wrote and compares
every tensor's resolved parameters against the recipe's, raising instead of exporting a config
that would make different weights in mergekit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from evomerge.checkpoint import ModelSource
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
        raise RecipeError(
            "routing: mergekit export of routed recipes is not supported; export "
            "the recipe (--format recipe) or a checkpoint (--format hf)"
        )
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


def dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)

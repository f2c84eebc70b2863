"""A recipe's per-layer coefficients as tables (layers × sources, one per parameter and module
kind), resolved by :mod:`evomerge.recipe`'s own ``rules``/``select``/``at_layer``: the numbers a
heatmap shows are the numbers the merge uses."""

from __future__ import annotations

from dataclasses import dataclass

from evomerge.errors import RecipeError
from evomerge.recipe import ParamSpec, PerLayer, Recipe, at_layer, rules, select


@dataclass
class Panel:
    """One parameter (for one module kind): ``values[layer][source]``; None where the source
    does not set it."""

    title: str
    sources: list[str]
    values: list[list[float | None]]
    param: str  # the parameter it shows (its bounds colour the heatmap)


def recipe_depth(recipe: Recipe, default: int | None = None) -> int:
    """The layer count a recipe's specs imply (a ``per_layer`` list's length), else its
    sources' (read from their checkpoints when they are here), else ``default`` or 1."""
    lengths = [
        len(rule.values.per_layer)
        for spec in _specs(recipe)
        for rule in rules(spec)
        if isinstance(rule.values, PerLayer)
    ]
    if lengths:
        return max(lengths)
    try:
        from evomerge.checkpoint import num_layers

        return int(num_layers({k: s.path for k, s in recipe.sources.items()}, recipe.base))
    except Exception:  # sources not on this machine: the report still draws
        return default or 1


def _specs(recipe: Recipe) -> list[ParamSpec]:
    out: list[ParamSpec] = [spec for s in recipe.sources.values() for spec in s.parameters.values()]
    out += [v for v in recipe.parameters.values() if not isinstance(v, bool)]
    return out


def _kinds(spec: ParamSpec) -> list[str]:
    seen: list[str] = []
    for rule in rules(spec):
        k = rule.kind or "default"
        if k not in seen:
            seen.append(k)
    return seen


def layer_panels(recipe: Recipe, num_layers: int) -> list[Panel]:
    """Per parameter (and module kind, where the recipe splits them): a layers × sources table
    of the value each layer's tensors take. Parameters given once for the whole merge (DARE's
    ``lambda``…) are a one-column table named ``all``."""
    panels: list[Panel] = []
    names = list(dict.fromkeys(p for s in recipe.sources.values() for p in s.parameters))
    sources = sorted(recipe.sources)
    for name in names:
        specs = {
            s: recipe.sources[s].parameters.get(name, recipe.parameters.get(name)) for s in sources
        }
        owners = [s for s in sources if name in recipe.sources[s].parameters]
        kinds = list(
            dict.fromkeys(k for s in owners for k in _kinds(specs[s]))  # type: ignore[arg-type]
        )
        for kind in kinds:
            title = name if kinds == ["default"] else f"{name} [{kind}]"
            panels.append(
                Panel(
                    title,
                    owners,
                    [
                        [_value(specs[s], kind, la, num_layers) for s in owners]
                        for la in range(num_layers)
                    ],
                    name,
                )
            )
    for name, spec in recipe.parameters.items():
        if isinstance(spec, bool) or name in names:
            continue
        for kind in _kinds(spec):
            title = name if kind == "default" else f"{name} [{kind}]"
            panels.append(
                Panel(
                    title,
                    ["all"],
                    [[_value(spec, kind, la, num_layers)] for la in range(num_layers)],
                    name,
                )
            )
    return panels


def _value(spec: ParamSpec | bool | None, kind: str, layer: int, n: int) -> float | None:
    if spec is None or isinstance(spec, bool):
        return None
    try:
        return at_layer(select(spec, tensor="", kind=kind), layer, n)
    except RecipeError:
        return None


def routing_slots(recipe: Recipe) -> list[tuple[int, str, int, float]]:
    """(output position, source or 'merged', source layer, input scale) per routed slot."""
    return [
        (i, s.source or "merged", s.layer, float(s.scale))
        for i, s in enumerate(recipe.routing or [])
    ]


def panel_bounds(recipe: Recipe, panel: Panel) -> tuple[float, float]:
    """A panel's colour scale: its parameter's bounds as the merge method states them (density
    and t in [0, 1]…), so equal colours mean equal values across panels; where the method
    states none (weight, lambda), [0, 1] widened to the values drawn."""
    from evomerge.merge.registry import get_method

    try:
        params = {q.name: q for q in get_method(recipe.method).params}
    except Exception:  # a method this version does not know: the fallback scale
        params = {}
    q = params.get(panel.param)
    vals = [v for row in panel.values for v in row if v is not None]
    lo = q.low if q is not None and q.low is not None else min([0.0, *vals])
    hi = q.high if q is not None and q.high is not None else max([1.0, *vals])
    return float(lo), float(hi)

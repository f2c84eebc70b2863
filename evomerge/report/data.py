"""What the tables, plots and report read from a run: its archive, its objectives (direction,
metric, estimator), its reference points, front ranks, error bars and the progress curves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from evomerge.objectives import (
    front_ranks,
    hypervolume,
    knee_index,
    losses,
    maximized,
    reference_losses,
    signs,
)
from evomerge.recipe import Recipe, spec_values
from evomerge.run.archive import Archive, Evaluation
from evomerge.run.reference_points import ObjectiveInfo, ReferencePoint, read_reference
from evomerge.run.run_dir import EXPERIMENT_FILE, open_archive, read_info


@dataclass
class Point:
    """One thing drawn or listed: a trial, or a reference point (``trial`` None)."""

    label: str
    trial: int | None
    values: list[float]
    stderr: list[float | None]
    fidelity: list[float | None]
    summary: str
    kind: str = "trial"  # trial | base | source | uniform
    knee: bool = False
    rank: int | None = None  # 1 = the Pareto front
    profile: str = ""  # what sets it apart: each parameter's mean per source, as bars


@dataclass
class RunView:
    """A run as the report sees it. ``run_dir`` is None for a bare archive (tests, tools)."""

    archive: Archive
    objectives: list[ObjectiveInfo]
    references: list[ReferencePoint] = field(default_factory=list)
    run_dir: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    experiment: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, run_dir: Path) -> RunView:
        run_dir = Path(run_dir)
        archive = open_archive(run_dir)
        infos, refs = read_reference(run_dir)
        exp: dict[str, Any] = {}
        try:
            loaded = yaml.safe_load((run_dir / EXPERIMENT_FILE).read_text())
            exp = loaded if isinstance(loaded, dict) else {}
        except (OSError, yaml.YAMLError):
            pass
        if infos is None:  # a run from before reference_points.json: what the archive knows
            specs = exp.get("objectives") or []
            infos = [
                ObjectiveInfo(
                    name,
                    d,
                    None,
                    specs[i].get("estimator", "full")
                    if i < len(specs) and isinstance(specs[i], dict)
                    else None,
                    None,
                )
                for i, (name, d) in enumerate(
                    zip(archive.objectives, archive.directions, strict=True)
                )
            ]
        return cls(archive, infos, refs, run_dir, read_info(run_dir), exp)

    @classmethod
    def of(cls, source: RunView | Archive) -> RunView:
        if isinstance(source, RunView):
            return source
        infos = [
            ObjectiveInfo(n, d, None, None, None)
            for n, d in zip(source.objectives, source.directions, strict=True)
        ]
        return cls(source, infos)

    # -- naming ---------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return self.archive.objectives

    @property
    def run_name(self) -> str:
        name = self.experiment.get("name")
        where = str(self.run_dir) if self.run_dir is not None else "an archive"
        return f"{name} ({where})" if name else where

    def scoring(self) -> str:
        """Each objective's metric and estimator, for titles: 'rev9: token_accuracy,
        subsample:8'."""
        parts = []
        for o in self.objectives:
            what = ", ".join(x for x in (o.metric, o.estimator) if x)
            parts.append(f"{o.name}: {what}" if what else o.name)
        return "; ".join(parts)

    def axis_label(self, i: int) -> str:
        o = self.objectives[i]
        better = "higher" if maximized(o.direction) else "lower"
        metric = f" · {o.metric}" if o.metric else ""
        return f"{o.name}{metric} ({better} is better)"

    # -- points -----------------------------------------------------------------------------------
    def ranks(self) -> dict[int, int]:
        """trial number → front rank (1 = non-dominated) for every successful trial."""
        ok = [e for e in self.archive.evaluations if e.ok]
        if not ok:
            return {}
        ranks = front_ranks(self.losses([e.values for e in ok]))  # type: ignore[misc]
        return {int(e.number or 0): int(r) + 1 for e, r in zip(ok, ranks, strict=True)}

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def losses(self, values: Sequence[Sequence[float]]) -> np.ndarray:
        return losses(values, self.directions)

    def trial_point(self, e: Evaluation, ranks: dict[int, int], knee: int | None) -> Point:
        assert e.values is not None
        summary, profile = describe(e.recipe)
        return Point(
            f"trial {e.number}",
            e.number,
            list(e.values),
            [_num(e.stderr.get(n)) for n in self.names],
            [_num(e.fidelity.get(n)) for n in self.names],
            summary,
            knee=e.number == knee,
            rank=ranks.get(int(e.number or 0)),
            profile=profile,
        )

    def points(self, *, front_only: bool = False) -> list[Point]:
        """The trials that succeeded (or only the front's), in trial order, ranked."""
        ranks = self.ranks()
        knee = self.archive.knee()
        k = knee.number if knee is not None else None
        evs = self.archive.front() if front_only else [e for e in self.archive.evaluations if e.ok]
        return [self.trial_point(e, ranks, k) for e in sorted(evs, key=lambda e: e.number or 0)]

    def reference_points(self) -> list[Point]:
        out = []
        for r in self.references:
            if r.values is None or len(r.values) != len(self.names):
                continue
            summary, profile = describe(r.recipe)
            out.append(
                Point(
                    r.label,
                    None,
                    list(r.values),
                    [_num(r.stderr.get(n)) for n in self.names],
                    [_num(r.fidelity.get(n)) for n in self.names],
                    summary,
                    kind=r.kind,
                    profile=profile,
                )
            )
        return out

    # -- progress -----------------------------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        """Per evaluation (trial order): the hypervolume of the front so far, the best value so
        far of each objective, and which evaluations failed. The hypervolume's reference is the
        run's (``reference:`` or a metric's worst end); where it has none, the worst value of the
        whole run, so the curve is one fixed box and never falls."""
        evs = self.archive.evaluations
        ok_values = [e.values for e in evs if e.ok]
        ref = self.hv_reference(ok_values)  # type: ignore[arg-type]
        sign = signs(self.directions)
        hv: list[float] = []
        best: list[list[float | None]] = [[] for _ in self.names]
        front: np.ndarray = np.empty((0, len(self.names)))
        lowest = np.full(len(self.names), np.inf)  # the best loss so far, per objective
        current = 0.0
        mean_best: list[float | None] = []  # the best mean over the objectives so far
        knee_mean: list[float | None] = []  # the mean of the knee of the front so far
        top, knee_now = -np.inf, None
        common = self.archive.common_unit
        for e in evs:
            if e.ok:
                loss = self.losses([e.values])  # type: ignore[list-item]
                if not np.any(np.all(front <= loss, axis=1)):  # not dominated: the front moves
                    keep = ~np.all(loss <= front, axis=1)
                    front = np.vstack([front[keep], loss])
                    current = hypervolume(front, ref)
                    knee = front[knee_index(front, common_unit=common)]
                    knee_now = float(np.mean(knee * sign))  # losses back to values
                lowest = np.minimum(lowest, loss[0])
                top = max(top, float(np.mean(e.values)))  # type: ignore[arg-type]
            hv.append(current)
            for i, low in enumerate(lowest):
                best[i].append(None if np.isinf(low) else float(low * sign[i]))
            mean_best.append(None if np.isinf(top) else top)
            knee_mean.append(knee_now)
        out: dict[str, Any] = {
            "trial": [e.number for e in evs],
            "hypervolume": hv,
            "best": dict(zip(self.names, best, strict=True)),
            "failed": [e.number for e in evs if not e.ok],
            "reference": [float(r * s) for r, s in zip(ref, sign, strict=True)],
        }
        if all(maximized(d) for d in self.directions):  # a mean of scores means something
            out["mean_best"], out["knee_mean"] = mean_best, knee_mean
        return out

    def stage_starts(self) -> list[tuple[int, str]]:
        """(evaluations done, stage) where each coarse-to-fine stage after the first begins, as
        the experiment's ``schedule:`` sets them (``until``; ``last: N`` of the run's budget)."""
        stages = self.experiment.get("schedule") or []
        if not isinstance(stages, list) or len(stages) < 2:
            return []
        out: list[tuple[int, str]] = []
        for i, st in enumerate(stages[:-1]):
            if isinstance(st, dict) and isinstance(st.get("until"), int):
                out.append((st["until"], _stage_name(i + 1, stages[i + 1])))
        last = stages[-1].get("last") if isinstance(stages[-1], dict) else None
        budget = self.info.get("budget", self.experiment.get("budget"))
        if isinstance(last, int) and isinstance(budget, int):
            out.append((budget - last, _stage_name(len(stages) - 1, stages[-1])))
        return sorted(out)

    def hv_reference_text(self, reference: Sequence[float]) -> str:
        """The hypervolume's reference point (``progress()["reference"]``) in the objectives'
        own terms."""
        return ", ".join(f"{n} {r:.4g}" for n, r in zip(self.names, reference, strict=True))

    def hv_reference(self, ok_values: Sequence[Sequence[float]]) -> np.ndarray:
        """The hypervolume reference in loss space (minimized)."""
        return reference_losses(
            [o.reference for o in self.objectives], self.directions, self.losses(ok_values)
        )


_REF_COLOURS = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
_SOURCE_SYMBOLS = [("diamond", "D"), ("triangle-up", "^"), ("pentagon", "p"), ("hexagon", "h")]
_SOURCE_SYMBOLS += [("triangle-down", "v"), ("star-diamond", "d")]


@dataclass(frozen=True)
class RefStyle:
    """How one reference point is drawn, the same in plotly (``symbol``) and matplotlib
    (``marker``): a marker and a colour of its own, so each is told apart without a hover."""

    symbol: str
    marker: str
    colour: str


def reference_styles(points: Sequence[Point]) -> dict[str, RefStyle]:
    """label → style: the base a square, the uniform merge a cross, each source its own shape;
    every reference its own colour."""
    out, n = {}, 0
    for i, p in enumerate(points):
        colour = _REF_COLOURS[i % len(_REF_COLOURS)]
        if p.kind == "base":
            out[p.label] = RefStyle("square", "s", colour)
        elif p.kind == "uniform":
            out[p.label] = RefStyle("cross", "P", colour)
        else:
            symbol, marker = _SOURCE_SYMBOLS[n % len(_SOURCE_SYMBOLS)]
            out[p.label] = RefStyle(symbol, marker, colour)
            n += 1
    return out


def _stage_name(i: int, stage: Any) -> str:
    keys = ", ".join(
        f"{k} {v}"
        for k, v in (stage.items() if isinstance(stage, dict) else [])
        if k in ("granularity", "curve", "target", "radius")
    )
    return f"stage {i}" + (f" ({keys})" if keys else "")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


_BARS = "▁▂▃▄▅▆▇█"


def describe(text: str) -> tuple[str, str]:
    """A recipe's one-line summary (:func:`recipe_summary`) and its profile (each source's
    mean value per parameter, as bars: what tells one front member from another in a hover),
    from one parse."""
    if not text:
        return "(no recipe)", ""
    try:
        r = Recipe.from_dict(yaml.safe_load(text))
    except Exception:  # a recipe this version cannot read still gets a row
        return "(unreadable recipe)", ""
    return _summary(r), _profile(r)


def recipe_summary(text: str) -> str:
    """One line: the method, its models, each parameter's range, the routing's length."""
    return describe(text)[0]


def _profile(r: Recipe) -> str:
    """Per parameter, each source's mean over the numbers the recipe writes (its layers, curve
    points or rules)."""
    means: dict[str, dict[str, float]] = {}
    for name, src in r.sources.items():
        for param, spec in src.parameters.items():
            vals = spec_values(spec)
            if vals:
                means.setdefault(param, {})[name] = float(np.mean(vals))
    lines = []
    for param, per in means.items():
        hi = max(1.0, *per.values())
        cells = [
            f"{name} {_BARS[min(7, max(0, int(v / hi * 8)))]} {v:.2f}" for name, v in per.items()
        ]
        lines.append(f"{param}: " + " · ".join(cells))
    return "<br>".join(lines)


def _summary(r: Recipe) -> str:
    parts = [r.method, f"{len(r.model_names)} model{'s' * (len(r.model_names) != 1)}"]
    if r.base:
        parts[-1] += f" on {r.base}"
    ranges: dict[str, list[float]] = {}
    for src in r.sources.values():
        for name, spec in src.parameters.items():
            ranges.setdefault(name, []).extend(spec_values(spec))
    for name, spec in r.parameters.items():
        if not isinstance(spec, bool):
            ranges.setdefault(name, []).extend(spec_values(spec))
    for name, vals in ranges.items():
        if vals:
            lo, hi = min(vals), max(vals)
            parts.append(f"{name} {lo:.2f}" if lo == hi else f"{name} {lo:.2f}–{hi:.2f}")
    if r.routing:
        parts.append(f"routed {len(r.routing)} layers")
    return " · ".join(parts)

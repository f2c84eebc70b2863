"""Per-layer vs whole-model search at equal budget (issue 19), per seed, on one or more zoos.

    python bench/granularity_bench.py --zoos ~/.cache/evomerge/zoo ~/.cache/evomerge/zoo-qwen2 \\
        --seeds 0 1 2 3 4 --budgets 48 96 --configs coarse demo --json granularity.json

Each configuration is one experiment (DARE-TIES of the zoo's three experts onto its base, three
objectives: token accuracy on rev9, shift3, add1, each on the same 200 held-out items), run once
per seed for the largest budget; a smaller budget's figures are that run's first evaluations
(schedules count stages in evaluations), except for a schedule whose last stage is the budget's
last N evaluations (``last: N``), which runs once per budget.
Per budget: the hypervolume of everything evaluated (reference 0), the best mean skill, and the
knee of the front (Archive.knee's rule) scored in full, on all 2000 items of each task.

``coarse`` is the space other tools search (one weight and one density per model:
``granularity`` = the zoo's depth); every other configuration is judged against it seed by seed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from evomerge.zoo import SOURCES  # the zoo's base and experts as zoo: names

TASKS = ("rev9", "shift3", "add1")
NSGA2_DEMO = {"name": "nsga2", "pop_size": 12, "eta_crossover": 5, "eta_mutation": 5}
TPE = {"name": "optuna-tpe", "batch": 12}
TPE_MV = {**TPE, "multivariate": True}  # joint Parzen estimators (optuna's default: independent)
GP = {"name": "optuna-gp", "batch": 12}  # optuna's GPSampler: LogEHVI, aware of running trials

# whole model to 24 evaluations, a line over depth to 48, then per layer
CURVE = [{"granularity": "D", "until": 24}, {"curve": 2, "until": 48}, {"granularity": 1}]
GP6 = {**GP, "batch": 6}  # the demo's optimizer
# the budget's last evaluations spent nearing the front's ideal point, per layer
KNEE6 = {"granularity": 1, "target": "knee", "last": 6}

# name → (space_options, schedule, optimizer); depth is filled in per zoo ("D")
CONFIGS: dict[str, tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]] = {
    "coarse": ({"granularity": "D"}, [], NSGA2_DEMO),
    "coarse-tpe": ({"granularity": "D"}, [], TPE),
    "layer": ({"granularity": 1}, [], NSGA2_DEMO),
    "pair": ({"granularity": 2}, [], NSGA2_DEMO),
    "sched-24": ({}, [{"granularity": "D", "until": 24}, {"granularity": 1}], NSGA2_DEMO),
    "sched-36": ({}, [{"granularity": "D", "until": 36}, {"granularity": 1}], NSGA2_DEMO),
    "sched-24-2-1": (
        {},
        [{"granularity": "D", "until": 24}, {"granularity": 2, "until": 48}, {"granularity": 1}],
        NSGA2_DEMO,
    ),
    "sched-curve": ({}, CURVE, NSGA2_DEMO),
    "sched-24-tpe": ({}, [{"granularity": "D", "until": 24}, {"granularity": 1}], TPE),
    "sched-12-tpe": ({}, [{"granularity": "D", "until": 12}, {"granularity": 1}], TPE),
    "sched-24-tpe-mv": ({}, [{"granularity": "D", "until": 24}, {"granularity": 1}], TPE_MV),
    "layer-tpe-mv": ({"granularity": 1}, [], TPE_MV),
    "sched-12-tpe-mv": ({}, [{"granularity": "D", "until": 12}, {"granularity": 1}], TPE_MV),
    "sched-36-tpe-mv": ({}, [{"granularity": "D", "until": 36}, {"granularity": 1}], TPE_MV),
    "sched-curve-tpe-mv": ({}, CURVE, TPE_MV),
    "sched-curve-tpe-mv-ep": ({}, CURVE, {**TPE_MV, "consider_endpoints": True}),
    "sched-curve-tpe-mv-ei8": ({}, CURVE, {**TPE_MV, "n_ei_candidates": 8}),
    "sched-36-curve-tpe-mv": (
        {},
        [{"granularity": "D", "until": 36}, {"curve": 2, "until": 60}, {"granularity": 1}],
        TPE_MV,
    ),
    # a stage's own optimizer: the whole-model stage is exactly `coarse` (NSGA-II), then TPE
    "sched-nsga-curve-tpe-mv": (
        {},
        [
            {"granularity": "D", "until": 24, "optimizer": NSGA2_DEMO},
            {"curve": 2, "until": 48},
            {"granularity": 1},
        ],
        TPE_MV,
    ),
    "sched-nsga-tpe-mv": (
        {},
        [{"granularity": "D", "until": 24, "optimizer": NSGA2_DEMO}, {"granularity": 1}],
        TPE_MV,
    ),
    "sched-nsga36-curve-tpe-mv": (
        {},
        [
            {"granularity": "D", "until": 36, "optimizer": NSGA2_DEMO},
            {"curve": 2, "until": 60},
            {"granularity": 1},
        ],
        TPE_MV,
    ),
    # optuna's GP sampler (LogEHVI for several objectives; batch-aware over running trials)
    "layer-gp": ({"granularity": 1}, [], GP),
    "sched-curve-gp": ({}, CURVE, GP),
    "sched-24-gp": ({}, [{"granularity": "D", "until": 24}, {"granularity": 1}], GP),
    # the same with smaller batches: the GPs see new scores more often, asks condition on fewer
    # untold candidates (sched-curve-gp-b6 is the demo's configuration now)
    **{f"sched-curve-gp-b{b}": ({}, CURVE, {**GP, "batch": b}) for b in (4, 6, 8)},
    # the budget's last evaluations spent nearing the front's ideal point (one loss: the knee's
    # distance), per layer; the stages before are cut short where they start
    **{
        f"sched-curve-gp-b6-knee{n}": (
            {},
            [*CURVE[:2], {"granularity": 1}, {**KNEE6, "last": n}],
            GP6,
        )
        for n in (6, 12)
    },
    # -knee6 with its whole-model stage cut to 12 or 18 evaluations (12: the GP's random
    # start only), none (a line over depth from the start), or NSGA-II's as in `coarse`
    **{
        f"sched-w{w}-curve-gp-b6-knee6": (
            {},
            [{"granularity": "D", "until": w}, CURVE[1], {"granularity": 1}, KNEE6],
            GP6,
        )
        for w in (12, 18)
    },
    "curve-gp-b6-knee6": ({}, [CURVE[1], {"granularity": 1}, KNEE6], GP6),
    "sched-nsga24-curve-gp-b6-knee6": (
        {},
        [
            {"granularity": "D", "until": 24, "optimizer": NSGA2_DEMO},
            CURVE[1],
            {"granularity": 1},
            KNEE6,
        ],
        GP6,
    ),
    # deeper zoos: a curve of 4 control points instead of per layer after the line
    "sched-curve4-gp-b6-knee6": (
        {},
        [*CURVE[:2], {"curve": 4}, {"curve": 4, "target": "knee", "last": 6}],
        GP6,
    ),
    "curve2": ({"curve": 2}, [], NSGA2_DEMO),
    "layer-tpe": ({"granularity": 1}, [], TPE),
    "demo": (None, None, None),  # experiments/zoo-demo.yaml's space, schedule and optimizer
}


def _depth(value: Any, depth: int) -> Any:
    if isinstance(value, dict):
        return {k: _depth(v, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_depth(v, depth) for v in value]
    return depth if value == "D" else value


def experiment(
    config: str, depth: int, budget: int, seed: int, estimator: str, promotion: bool = False
) -> dict:
    options, schedule, optimizer = CONFIGS[config]
    exp: dict[str, Any] = {
        "name": f"bench-{config}",
        "sources": SOURCES,
        "base": "base",
        "space": "dare_ties-per-layer",
        "objectives": [{"task": t, "estimator": estimator} for t in TASKS],
        "budget": budget,
        "seed": seed,
        "workers": {"threads": 1},
        "reference_points": False,  # not trials: no figure here depends on them
    }
    if promotion:  # front members re-scored on every item (the same for every configuration)
        exp["promotion"] = {"enabled": True}
    if options is None:  # the demo
        demo = yaml.safe_load((Path(__file__).parents[1] / "experiments/zoo-demo.yaml").read_text())
        for key in ("space", "space_options", "schedule", "optimizer"):
            if key in demo:
                exp[key] = demo[key]
        return exp
    exp["space_options"] = _depth(options, depth)
    if schedule:
        exp["schedule"] = _depth(schedule, depth)
    exp["optimizer"] = optimizer
    return exp


def by_budget(exp: dict) -> bool:
    """Whether the run's proposals depend on its budget (a schedule ending in ``last: N``)."""
    return any("last" in st for st in exp.get("schedule", []))


def ehvi_reference_at_zero() -> None:
    """An experiment, not evomerge's behaviour: optuna's GP sampler computes expected hypervolume
    improvement from a reference just beyond the worst values seen (its standardized nadir);
    these figures' hypervolume is measured from accuracy 0. This patches two private optuna
    functions so the GP's reference is accuracy 0 too (every objective here is an accuracy)."""
    import optuna._gp.acqf as acqf
    from optuna.samplers._gp import sampler as gp_sampler

    seen: dict[str, np.ndarray] = {}
    standardize, nadir = gp_sampler._standardize_values, acqf._get_reference_point

    def recording(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = standardize(values)  # called on the scores (maximized) before the acquisition
        seen["mean"], seen["std"] = out[1], np.maximum(gp_sampler.EPS, out[2])
        return out

    def at_zero(Y: Any) -> np.ndarray:
        if seen.get("mean") is None or len(seen["mean"]) != Y.shape[-1]:
            return nadir(Y)
        return seen["mean"] / seen["std"]  # loss space: -(0 - mean) / std

    gp_sampler._standardize_values = recording
    acqf._get_reference_point = at_zero


def hypervolume(points: list[list[float]]) -> float:
    from pymoo.indicators.hv import HV

    if not points:
        return 0.0
    return float(HV(ref_point=np.zeros(len(points[0])))(-np.asarray(points)))


def knee(values: list[list[float]]) -> int:
    """Archive.knee on the first evaluations: the front member closest to the ideal point, in
    plain units (the three objectives are token accuracies; ties: the earliest)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    from evomerge.objectives import knee_index

    losses = -np.asarray(values)
    front = sorted(NonDominatedSorting().do(losses, only_non_dominated_front=True))
    return int(front[knee_index(losses[front], common_unit=True)])


def run(zoo: Path, exp: dict, work: Path) -> list[tuple[list[float], str]]:
    from evomerge.run import lifecycle as search

    path = work / f"{exp['name']}-{exp['seed']}.yaml"
    path.write_text(yaml.safe_dump(exp))
    run_dir = work / f"run-{exp['name']}-{exp['seed']}"
    shutil.rmtree(run_dir, ignore_errors=True)
    s, budget = search.start(path, run_dir, zoo=zoo)
    try:
        s.run(budget)
        return [(e.values, e.recipe) for e in s.archive.evaluations if e.ok]
    finally:
        s.close()


class FullScorer:
    """Scores recipes on every held-out item of the three tasks (the same worker code)."""

    def __init__(self, zoo: Path, depth: int) -> None:
        from evomerge.experiment import Experiment
        from evomerge.workers.local import LocalWorker

        exp = Experiment.parse(experiment("coarse", depth, 1, 0, "full"))
        self.worker = LocalWorker(exp, exp.resolved_sources(zoo), zoo=zoo)

    def __call__(self, recipe_yaml: str) -> list[float]:
        from evomerge.recipe import Recipe

        recipe = Recipe.from_dict(yaml.safe_load(recipe_yaml))
        ev = self.worker.evaluate(recipe, [])
        assert ev.values is not None, ev.error
        return [float(v) for v in ev.values]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--zoos", type=Path, nargs="+", default=[Path.home() / ".cache/evomerge/zoo"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--budgets", type=int, nargs="+", default=[48, 96])
    ap.add_argument("--configs", nargs="+", default=["coarse", "demo"])
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--no-full", action="store_true", help="skip the knees' full scoring")
    ap.add_argument(
        "--promotion", action="store_true", help="every configuration re-scores its front in full"
    )
    ap.add_argument(
        "--best-full",
        action="store_true",
        help="also score the best-mean candidate on all items (beside the knee)",
    )
    ap.add_argument(
        "--ehvi-reference-zero",
        action="store_true",
        help="experiment: optuna's GP measures hypervolume improvement from accuracy 0",
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.ehvi_reference_zero:
        ehvi_reference_at_zero()
    import torch

    from evomerge.checkpoint import num_layers
    from evomerge.hub import resolve_sources

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="evomerge-gran-"))
    results: list[dict[str, Any]] = []
    top = max(args.budgets)
    for zoo in args.zoos:
        sources = resolve_sources(SOURCES, zoo=zoo)[0]
        depth = num_layers(sources, "base")
        scorer = None if args.no_full else FullScorer(zoo, depth)
        for seed in args.seeds:
            for config in args.configs:
                runs: dict[int, tuple[list, float]] = {}  # budget → (evaluations, seconds)
                for budget in args.budgets:
                    # one run at the largest budget serves every budget, unless the schedule's
                    # last stage is the budget's last N evaluations
                    exp = experiment(
                        config, depth, budget, seed, f"subsample:{args.k}", args.promotion
                    )
                    if budget != top and not by_budget(exp):
                        continue
                    t0 = time.perf_counter()
                    runs[budget] = (run(zoo, exp, work), time.perf_counter() - t0)
                for budget in args.budgets:
                    evs, wall = runs.get(budget, runs[top])
                    if len(evs) < budget:  # interrupted (or failures): no figures for it
                        continue
                    values = [v for v, _ in evs[:budget]]
                    row: dict[str, Any] = {
                        "zoo": str(zoo),
                        "config": config,
                        "seed": seed,
                        "budget": budget,
                        "hv": hypervolume(values),
                        "best_mean": max(float(np.mean(v)) for v in values),
                        "wall": wall,
                    }
                    if scorer is not None:
                        k = knee(values)
                        row["knee"] = k
                        row["knee_values"] = values[k]  # the estimates it was chosen on
                        row["knee_full"] = scorer(evs[k][1])
                        if args.best_full:
                            b = int(np.argmax([np.mean(v) for v in values]))
                            row["best"], row["best_values"] = b, values[b]
                            row["best_full"] = scorer(evs[b][1])
                            print(
                                f"  knee {k}: {np.round(values[k], 3).tolist()} → "
                                f"{np.round(row['knee_full'], 3).tolist()}; best mean {b}: "
                                f"{np.round(values[b], 3).tolist()} → "
                                f"{np.round(row['best_full'], 3).tolist()}",
                                flush=True,
                            )
                    results.append(row)
                    full = row.get("knee_full")
                    print(
                        f"{zoo.name} seed {seed} {config:>14} @{budget}: HV {row['hv']:.4f} "
                        f"best mean {row['best_mean']:.4f}"
                        + (
                            f" knee full {np.mean(full):.4f} {np.round(full, 4).tolist()}"
                            if full
                            else ""
                        )
                        + f" ({wall:.0f}s)",
                        flush=True,
                    )
                if args.json:
                    args.json.write_text(json.dumps(results, indent=1))
    print_table(results, args.configs)
    shutil.rmtree(work, ignore_errors=True)


def print_table(results: list[dict[str, Any]], configs: list[str]) -> None:
    """Per zoo, budget and seed: each configuration against ``coarse`` (✓ = strictly better)."""
    by = {(r["zoo"], r["budget"], r["seed"], r["config"]): r for r in results}
    base = "coarse"
    for zoo in dict.fromkeys(r["zoo"] for r in results):
        for budget in sorted({r["budget"] for r in results}):
            print(f"\n{Path(zoo).name} @{budget}")
            print(
                "| seed | config | HV | best mean | knee, all items (mean; rev9, shift3, add1) "
                "| vs coarse: HV, best, knee |"
            )
            print("|---|---|---|---|---|---|")
            for seed in sorted({r["seed"] for r in results}):
                c = by.get((zoo, budget, seed, base))
                for config in configs:
                    r = by.get((zoo, budget, seed, config))
                    if r is None:
                        continue
                    kf = r.get("knee_full")
                    ks = f"{np.mean(kf):.4f}; {', '.join(f'{v:.4f}' for v in kf)}" if kf else "–"
                    verdict = ""
                    if c is not None and config != base:
                        marks = [r["hv"] > c["hv"], r["best_mean"] > c["best_mean"]]
                        if kf and c.get("knee_full"):
                            marks.append(np.mean(kf) > np.mean(c["knee_full"]))
                        verdict = " ".join("✓" if m else "✗" for m in marks)
                    print(
                        f"| {seed} | {config} | {r['hv']:.4f} | {r['best_mean']:.4f} | {ks} | "
                        f"{verdict} |"
                    )


if __name__ == "__main__":
    main()

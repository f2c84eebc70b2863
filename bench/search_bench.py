"""Search strategies at the same evaluation budget on the tiny zoo, and where a candidate's time
goes.

    python bench/search_bench.py --zoo ~/.cache/evomerge/zoo --budget 96 --k 200 --seeds 0 1 2

Strategies (three objectives: token accuracy on rev9, shift3, add1, each estimated on the same
K held-out items; merges are DARE-TIES of the three experts onto the base):

- grid: uniform merges — one weight and one density shared by every model and layer (the
  method's global parameters), on a grid of ``budget`` points, in raster order;
- random, cma (scalarized: the mean of the three skills), nsga2, nsga3, optuna-tpe, botorch
  (optuna-botorch: GP + qLogNEHVI, ``pip install 'evomerge[botorch]'``), botorch-light (the
  same, cheaper acquisition optimization) — per-layer weight and density per model
  (``dare_ties-per-layer``, 24 genes).

Reported per budget step: the best mean-skill score so far and the hypervolume of everything
evaluated so far (reference 0, 0, 0); and the evaluations each needs to reach the grid's best.
``--timing`` adds the time breakdown of an NSGA-II run (subsample and full scoring).
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

SOURCES = {
    "base": "zoo:base",
    "rev9": "zoo:experts/rev9",
    "shift3": "zoo:experts/shift3",
    "add1": "zoo:experts/add1",
}


def experiment(optimizer: dict[str, Any], k: int | None, budget: int, seed: int) -> dict:
    est = f"subsample:{k}" if k else "full"
    return {
        "name": f"bench-{optimizer['name']}",
        "sources": SOURCES,
        "base": "base",
        "space": "dare_ties-per-layer",
        "objectives": [{"task": t, "estimator": est} for t in ("rev9", "shift3", "add1")],
        "optimizer": optimizer,
        "budget": budget,
        "seed": seed,
        "workers": {"threads": 1},
    }


def hypervolume(points: list[list[float]]) -> float:
    from pymoo.indicators.hv import HV

    if not points:
        return 0.0
    return float(HV(ref_point=np.zeros(3))(-np.asarray(points)))


def curve(values: list[list[float]], step: int) -> list[dict[str, float]]:
    out = []
    for n in range(step, len(values) + 1, step):
        seen = values[:n]
        out.append(
            {"n": n, "best_mean": max(float(np.mean(v)) for v in seen), "hv": hypervolume(seen)}
        )
    return out


def to_reach(values: list[list[float]], target: float) -> int | None:
    for i, v in enumerate(values):
        if float(np.mean(v)) >= target - 1e-12:
            return i + 1
    return None


def run_search(zoo: Path, exp: dict, workdir: Path, *, timing: bool = False) -> dict[str, Any]:
    from evomerge.run import lifecycle as search

    path = workdir / f"{exp['name']}-{exp['seed']}.yaml"
    path.write_text(yaml.safe_dump(exp))
    run_dir = workdir / f"run-{exp['name']}-{exp['seed']}"
    shutil.rmtree(run_dir, ignore_errors=True)
    s, budget = search.start(path, run_dir, zoo=zoo)
    forward = _time_engine(s.worker.engine)
    progress_s = [0.0]

    def on_progress(_p: Any) -> None:  # what the CLI's progress bar computes, timed
        t0 = time.perf_counter()
        s.progress(budget)
        progress_s[0] += time.perf_counter() - t0

    t0 = time.perf_counter()
    s.run(budget, on_progress=on_progress if timing else None)
    wall = time.perf_counter() - t0
    evs = s.archive.evaluations
    out: dict[str, Any] = {
        "values": [e.values for e in evs if e.values],
        "wall": wall,
        "ask": s.loop_timings["ask"],  # the optimizer's own time (a GP fit per ask for botorch)
    }
    if timing:
        per: dict[str, float] = {}
        for e in evs:
            for key, v in e.timings.items():
                key = "score" if key.startswith("score:") else key
                per[key] = per.get(key, 0.0) + v
        out["timing"] = {
            "wall": wall,
            "evaluations": len(evs),
            "forward": forward[0],
            "worker": per,
            "loop": dict(s.loop_timings),
            "progress": progress_s[0],
        }
    return out


def _time_engine(engine: Any) -> list[float]:
    """Wrap the engine's forward entry points: their time is the work, the rest is overhead."""
    total = [0.0]
    for name in ("loglikelihood", "generate"):
        fn = getattr(engine, name)

        def timed(*a: Any, _fn: Any = fn, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                total[0] += time.perf_counter() - t0

        setattr(engine, name, timed)
    return total


def run_grid(zoo: Path, k: int, budget: int, workdir: Path) -> list[list[float]]:
    """Uniform DARE-TIES merges on an (nw × nd) grid; evaluated by the same worker code."""
    from evomerge.experiment import Experiment
    from evomerge.recipe import Recipe
    from evomerge.workers.local import LocalWorker

    exp = Experiment.parse(experiment({"name": "random"}, k, budget, 0))
    sources = exp.resolved_sources(zoo)
    worker = LocalWorker(exp, sources, zoo=zoo)
    nd = max(2, round(float(np.sqrt(budget * 0.75))))
    nw = budget // nd
    values = []
    for w in np.linspace(0.1, 1.0, nw):
        for d in np.linspace(0.1, 1.0, nd):
            recipe = Recipe.from_dict(
                {
                    "method": "dare_ties",
                    "base": "base",
                    "sources": {
                        n: p
                        if n == "base"
                        else {"path": p, "parameters": {"weight": float(w), "density": float(d)}}
                        for n, p in sources.items()
                    },
                    "parameters": {"lambda": 1.0, "normalize": False},
                    "seed": 0,
                }
            )
            ev = worker.evaluate(recipe, [])
            values.append(ev.values)
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=Path.home() / ".cache" / "evomerge" / "zoo")
    ap.add_argument("--budget", type=int, default=96)
    ap.add_argument("--step", type=int, default=12)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--strategies", nargs="*", default=["random", "cma", "nsga2"])
    ap.add_argument("--no-grid", action="store_true", help="skip the grid (reuse --grid-best)")
    ap.add_argument("--grid-best", type=float, default=None)
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="evomerge-bench-"))
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    t0 = time.perf_counter()
    if args.no_grid:
        grid_best, n_evals = float(args.grid_best or 0.0), args.budget
    else:
        grid = run_grid(args.zoo, args.k, args.budget, work)
        grid_best, n_evals = max(float(np.mean(v)) for v in grid), len(grid)
        results["grid"] = {
            "curve": curve(grid, args.step),
            "to_reach": to_reach(grid, grid_best),
            "n": len(grid),
            "wall": time.perf_counter() - t0,
        }
        print(
            f"grid: {len(grid)} uniform merges, best mean {grid_best:.4f}, "
            f"HV {hypervolume(grid):.4f}",
            flush=True,
        )
    known = {
        "random": {"name": "random", "batch": args.step},
        "cma": {"name": "cma", "popsize": args.step, "sigma0": 0.25},
        "nsga2": {"name": "nsga2", "pop_size": args.step},
        "nsga2-explore": {
            "name": "nsga2",
            "pop_size": args.step,
            "eta_crossover": 5.0,
            "eta_mutation": 5.0,
        },
        "nsga3": {"name": "nsga3", "pop_size": args.step},
        "optuna-tpe": {"name": "optuna-tpe", "batch": args.step},
        # GP + qLogNEHVI; the first batch random (n_startup_trials), then one GP fit per ask
        "botorch": {"name": "optuna-botorch", "batch": args.step, "n_startup_trials": args.step},
        # the same with a cheaper acquisition optimization (half optuna-integration's restarts
        # and raw samples, half its quasi-MC samples): ~3 s per ask instead of 10-30 s
        "botorch-light": {
            "name": "optuna-botorch",
            "batch": args.step,
            "n_startup_trials": args.step,
            "num_restarts": 10,
            "raw_samples": 512,
            "mc_samples": 128,
        },
    }
    strategies = {k: known[k] for k in args.strategies}
    for name, opt in strategies.items():
        for seed in args.seeds:
            r = run_search(args.zoo, experiment(opt, args.k, n_evals, seed), work)
            v = r["values"]
            results.setdefault(name, []).append(
                {
                    "seed": seed,
                    "curve": curve(v, args.step),
                    "to_reach": to_reach(v, grid_best),
                    "wall": r["wall"],
                    "ask": r["ask"],
                }
            )
            print(
                f"{name} seed {seed}: best mean {max(np.mean(x) for x in v):.4f}, "
                f"HV {hypervolume(v):.4f}, reaches grid best after "
                f"{to_reach(v, grid_best)} evals ({r['wall']:.0f}s, {r['ask']:.0f}s asking)",
                flush=True,
            )
            if args.json:  # after every run: a long benchmark stopped early keeps what it measured
                args.json.write_text(json.dumps(results, indent=2))
    if args.timing:
        for label, k, budget in (("subsample", args.k, 48), ("full", None, 12)):
            r = run_search(
                args.zoo,
                experiment({"name": "nsga2", "pop_size": 12}, k, budget, 0),
                work,
                timing=True,
            )
            results[f"timing_{label}"] = r["timing"]
            t = r["timing"]
            print(
                f"timing ({label}): {t['evaluations']} evals in {t['wall']:.1f}s, forward "
                f"{t['forward']:.1f}s → overhead {1 - t['forward'] / t['wall']:.1%}; "
                f"{3600 * t['evaluations'] / t['wall']:.0f} evals/hour",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

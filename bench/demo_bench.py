"""What the demo shows, judged on items and seeds that did not choose it.

    python bench/demo_bench.py --zoo ~/.cache/evomerge/zoo --seeds 1 2 3 4 5 6 7 8 9 10 \\
        --json demo-bench.json

Per seed, three ways to merge the tiny zoo's experts, each judged by one recipe's mean token
accuracy on the items the search never saw (the experiment's ``holdout: 0.2`` of each task,
about 400 items each; a different split per seed):

- ``demo``: ``experiments/zoo-demo.yaml`` as it is (its seed replaced), its knee;
- ``whole-model``: the same budget, objectives and items over the space other tools search (one
  weight and one density per model: ``granularity`` = the zoo's depth, NSGA-II), its knee;
- ``uniform``: the best of a 5 × 5 grid of uniform DARE-TIES merges (one weight and one
  density shared by every expert and layer), chosen on all the search's items (about 1600 per
  task, more than the searches see), then judged on the held-out ones.

The paired margins over the seeds are printed with their spread and a one-sided paired t-test.
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

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "zoo-demo.yaml"
WHOLE = {"name": "nsga2", "pop_size": 12, "eta_crossover": 5, "eta_mutation": 5}
GRID = np.linspace(0.2, 1.0, 5)
ARMS = ("demo", "whole-model", "uniform")


def _experiment(config: str, seed: int, depth: int) -> dict[str, Any]:
    exp = yaml.safe_load(DEMO.read_text())
    exp.update(name=f"bench-{config}", seed=seed, reference_points=False)
    if config == "whole-model":
        exp.pop("schedule")
        exp.update(space_options={"granularity": depth}, optimizer=WHOLE)
    return exp


def _search(exp: dict[str, Any], zoo: Path, work: Path) -> dict[str, Any]:
    from evomerge.run import lifecycle as search
    from evomerge.run.confirm import confirm

    path = work / f"{exp['name']}-{exp['seed']}.yaml"
    path.write_text(yaml.safe_dump(exp))
    run_dir = work / path.stem
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    s, budget = search.start(path, run_dir, zoo=zoo)
    try:
        s.run(budget)
        knee = s.archive.knee()
        assert knee is not None and knee.number is not None
        best = max(float(np.mean(e.values)) for e in s.archive.evaluations if e.ok)
    finally:
        s.close()
    wall = time.perf_counter() - t0
    (held,) = confirm(run_dir, trials=[knee.number], zoo=zoo)
    return {
        "knee": knee.number,
        "knee_estimate": list(knee.values or []),
        "knee_heldout": list(held.scores.values()),
        "best_mean_estimate": best,
        "wall": wall,
    }


def _uniform(exp: dict[str, Any], zoo: Path) -> dict[str, Any]:
    """The grid's best on the search's items, scored on the held-out ones."""
    from evomerge.experiment import Experiment
    from evomerge.run.confirm import _Scorer
    from evomerge.workers.local import load_objectives

    experiment = Experiment.parse(exp)
    sources = experiment.resolved_sources(zoo)
    objectives = [ob for ob in load_objectives(experiment, zoo) if ob.scored]
    pool = {ob.spec.label: list(ob.task.item_ids) for ob in objectives}
    held = {ob.spec.label: list(ob.held_out) for ob in objectives}
    choose = _Scorer(experiment, sources, objectives, pool)
    judge = _Scorer(experiment, sources, objectives, held)
    try:
        scored = []
        for w in GRID:
            for d in GRID:
                shared = {"weight": float(w), "density": float(d)}
                recipe = yaml.safe_dump(
                    {
                        "method": "dare_ties",
                        "base": "base",
                        "sources": {
                            n: p if n == "base" else {"path": p, "parameters": shared}
                            for n, p in sources.items()
                        },
                        "parameters": {"lambda": 1.0, "normalize": False},
                        "seed": experiment.seed,
                    }
                )
                values = [v for v, _ in choose.score(recipe).values()]
                scored.append((float(np.mean(values)), float(w), float(d), recipe))
        mean, w, d, recipe = max(scored)
        return {
            "weight": w,
            "density": d,
            "chosen_on_search_items": mean,
            "heldout": [v for v, _ in judge.score(recipe).values()],
        }
    finally:
        choose.close()
        judge.close()


def _held(row: dict[str, Any], arm: str) -> float:
    """One arm's recipe of one seed: its mean over the skills on the held-out items."""
    scores = row[arm]["heldout"] if arm == "uniform" else row[arm]["knee_heldout"]
    return float(np.mean(scores))


def _paired(name: str, a: list[float], b: list[float]) -> str:
    from scipy import stats

    diff = np.asarray(a) - np.asarray(b)
    p = stats.ttest_rel(a, b, alternative="greater").pvalue
    return (
        f"{name}: mean margin {diff.mean():+.4f} (min {diff.min():+.4f}, max {diff.max():+.4f}, "
        f"sd {diff.std(ddof=1):.4f}); won {int((diff > 0).sum())} of {len(diff)}; "
        f"one-sided paired t-test p = {p:.2g}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=Path.home() / ".cache/evomerge/zoo")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    from evomerge.checkpoint import num_layers
    from evomerge.hub import resolve_sources
    from evomerge.zoo import SOURCES

    torch.set_num_threads(1)
    depth = num_layers(resolve_sources(SOURCES, zoo=args.zoo)[0], "base")
    work = Path(tempfile.mkdtemp(prefix="evomerge-demo-bench-"))
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        row: dict[str, Any] = {"seed": seed}
        for config in ("demo", "whole-model"):
            row[config] = _search(_experiment(config, seed, depth), args.zoo, work)
        row["uniform"] = _uniform(_experiment("demo", seed, depth), args.zoo)
        rows.append(row)
        print(
            f"seed {seed}: held-out mean of the knee: demo {_held(row, 'demo'):.4f}, "
            f"whole-model {_held(row, 'whole-model'):.4f}; best uniform "
            f"(w {row['uniform']['weight']:.1f}, d {row['uniform']['density']:.1f}) "
            f"{_held(row, 'uniform'):.4f}; demo search {row['demo']['wall']:.0f}s",
            flush=True,
        )
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    demo, whole, uniform = ([_held(r, arm) for r in rows] for arm in ARMS)
    print("\n| seed | demo knee | whole-model knee | best uniform | (held-out mean) |")
    print("|---|---|---|---|---|")
    for r, d, w, u in zip(rows, demo, whole, uniform, strict=True):
        print(f"| {r['seed']} | {d:.4f} | {w:.4f} | {u:.4f} | |")
    if len(rows) > 1:
        print(_paired("demo knee − whole-model knee", demo, whole))
        print(_paired("demo knee − best uniform", demo, uniform))


if __name__ == "__main__":
    main()

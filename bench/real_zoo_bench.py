"""Per-layer search against whole-model search and the best uniform merge, at real depth.

    python bench/real_zoo_bench.py --zoo .cache/zoo-smollm2 \\
        --experiment experiments/smollm2-per-layer.yaml --budget 96 --seeds 1 2 3 4 5 6 7 8 9 10 \\
        --json bench-real-96.json

Per seed, each arm searches (or, for ``uniform``, grids) the SmolLM2 zoo with the experiment's
objectives, items and holdout, its seed replaced; each result is judged on the items the search
never saw (the experiment's ``holdout``, a different split per seed), under three metrics from
one forward pass: ``acc`` (greedy exact match of the answer: the skill), ``token_accuracy`` and
``token_prob`` (the smooth signals a search may use):

- ``per-layer``: the experiment as it is;
- ``whole-model``: the same method, budget, objectives and items over one weight and one
  density per model (``granularity`` = the depth; NSGA-II, as the demo bench);
- ``whole-model-gp``: the same, with the experiment's own optimizer (the per-layer arm's
  model-based one: a whole-model baseline that does not lose to an optimizer's sample
  efficiency);
- ``uniform``: the best of a 5 × 5 grid of uniform merges (one weight and one density shared by
  every expert and layer), chosen on the search's item subsets, judged on the held-out items.

Per search arm: the knee's held-out means over the skills, those of the recipe with the best
estimated mean skill, and the hypervolume of the estimated front (reference: 0 on every skill).
The paired margins of per-layer over the others are printed with their spread and a one-sided
paired t-test. The JSON file is rewritten after every cell and read back at the start, so a
killed bench continues with the next cell (``--arms`` picks cells; ``--variant`` names a change
to the per-layer arm, e.g. ``--set optimizer.batch=2``, kept apart in the JSON). A change to
every arm (the objectives' tasks) is another ``--experiment`` and another JSON file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

WHOLE = {"name": "nsga2", "pop_size": 12, "eta_crossover": 5, "eta_mutation": 5}
GRID = np.linspace(0.2, 1.0, 5)
ARMS = ("per-layer", "whole-model", "uniform", "whole-model-gp")


def _set(exp: dict[str, Any], assignment: str) -> None:
    """``a.b=value`` (value parsed as YAML) into the experiment dict."""
    path, value = assignment.split("=", 1)
    keys = path.split(".")
    node = exp
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = yaml.safe_load(value)


def _experiment(
    base: Path, arm: str, seed: int, budget: int, depth: int, sets: list[str], threads: int | None
):
    exp = yaml.safe_load(base.read_text())
    exp.update(name=f"bench-{arm}", seed=seed, budget=budget, reference_points=False)
    if threads is not None:  # every arm alike, the judge included
        exp.setdefault("workers", {})["threads"] = threads
    if arm.startswith("whole-model"):
        exp.pop("schedule", None)
        exp["space_options"] = {"granularity": depth}
        if arm == "whole-model":
            exp["optimizer"] = WHOLE
    else:
        for s in sets:
            _set(exp, s)
    return exp


JUDGE = ("acc", "token_accuracy", "token_prob")  # held-out: greedy exact match first


class _Judge:
    """Scores recipes on each objective's held-out items (the search never saw them) under every
    metric in ``JUDGE`` from one forward pass: exact match is the skill; the others show how the
    smooth signals the search may have used moved with it. The engine, sources and prepared
    items are confirmation's own (``confirm._Scorer``)."""

    def __init__(self, exp: dict[str, Any], zoo: Path) -> None:
        from evomerge.experiment import Experiment
        from evomerge.run.confirm import _Scorer
        from evomerge.workers.local import load_objectives

        self.experiment = experiment = Experiment.parse(exp)
        self.paths = experiment.resolved_sources(zoo)
        self.objectives = [ob for ob in load_objectives(experiment, zoo) if ob.scored]
        held = {ob.spec.label: list(ob.held_out) for ob in self.objectives}
        self.scorer = _Scorer(experiment, self.paths, self.objectives, held)

    def score(self, recipe_yaml: str) -> dict[str, list[float]]:
        """Metric → the recipe's held-out mean per objective."""
        from evomerge.evaluate.scoring import score_prepared_metrics
        from evomerge.recipe import Recipe

        sc = self.scorer
        sc.resident.load(Recipe.from_dict(yaml.safe_load(recipe_yaml)))
        out: dict[str, list[float]] = {m: [] for m in JUDGE}
        for prep in sc.prepared.values():
            for m, res in score_prepared_metrics(sc.engine, prep, JUDGE).items():
                out[m].append(res.value)
        return out

    def close(self) -> None:
        self.scorer.close()


def _search(exp: dict[str, Any], zoo: Path, work: Path) -> dict[str, Any]:
    from evomerge.run import lifecycle as search

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
        ok = [e for e in s.archive.evaluations if e.ok]
        best = max(ok, key=lambda e: float(np.mean(e.values)))
        hv = s.archive.hypervolume([0.0] * len(best.values))
        seconds = [e.seconds for e in ok if getattr(e, "seconds", None)]
    finally:
        s.close()
    wall = time.perf_counter() - t0
    judge = _Judge(exp, zoo)
    try:
        held = {e.number: judge.score(e.recipe) for e in (knee, best)}
    finally:
        judge.close()
    shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "knee": knee.number,
        "knee_estimate": list(knee.values or []),
        "knee_heldout": held[knee.number],
        "best": best.number,
        "best_mean_estimate": float(np.mean(best.values)),
        "best_heldout": held[best.number],
        "hypervolume": float(hv),
        "wall": wall,
        "evaluations": len(ok),
        "mean_eval_seconds": float(np.mean(seconds)) if seconds else None,
    }


def _uniform(exp: dict[str, Any], zoo: Path) -> dict[str, Any]:
    """The grid's best on the search's item subsets (the objectives' metric), judged held out."""
    from evomerge.run.confirm import _Scorer

    judge = _Judge(exp, zoo)
    experiment = judge.experiment
    method = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "search_spaces" / f"{exp['space']}.yaml").read_text()
    )
    # the items a search candidate is scored on (the estimator's subsets), not more
    pool = {ob.spec.label: ob.estimator.select(ob.task.item_ids) for ob in judge.objectives}
    choose = _Scorer(experiment, judge.paths, judge.objectives, pool)
    try:
        scored = []
        for w in GRID:
            for d in GRID if "density" in method["genes"] else [1.0]:
                shared = {"weight": float(w)}
                if "density" in method["genes"]:
                    shared["density"] = float(d)
                recipe = yaml.safe_dump(
                    {
                        "method": method["method"],
                        "base": "base",
                        "sources": {
                            n: p if n == "base" else {"path": p, "parameters": shared}
                            for n, p in judge.paths.items()
                        },
                        "parameters": method.get("fixed", {}),
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
            "heldout": judge.score(recipe),
        }
    finally:
        choose.close()
        judge.close()


def _held(cell: dict[str, Any], what: str, metric: str = "acc") -> float:
    """The held-out mean over the skills of an arm's knee or best, under a judge metric."""
    scores = (
        cell["heldout"] if "heldout" in cell else cell[f"{what}_heldout"]
    )  # uniform: one recipe
    return float(np.mean(scores[metric]))


def _paired(name: str, a: list[float], b: list[float]) -> str:
    from scipy import stats

    diff = np.asarray(a) - np.asarray(b)
    p = stats.ttest_rel(a, b, alternative="greater").pvalue if len(diff) > 1 else float("nan")
    return (
        f"{name}: mean margin {diff.mean():+.4f} (min {diff.min():+.4f}, max {diff.max():+.4f}, "
        f"sd {diff.std(ddof=1) if len(diff) > 1 else 0:.4f}); won {int((diff > 0).sum())} of "
        f"{len(diff)}; one-sided paired t-test p = {p:.2g}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=Path(".cache/zoo-smollm2"))
    ap.add_argument("--experiment", type=Path, default=Path("experiments/smollm2-per-layer.yaml"))
    ap.add_argument("--budget", type=int, default=96)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    ap.add_argument("--arms", nargs="+", default=list(ARMS[:3]), choices=ARMS)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a.b=value")
    ap.add_argument("--variant", default="", help="a name for --set changes (a JSON key)")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for every arm (workers.threads); two benches of 1 thread each, on "
        "different seeds and JSON files, do more per hour on 2 cores than one of 2 threads",
    )
    args = ap.parse_args()

    from evomerge.checkpoint import num_layers
    from evomerge.experiment import Experiment

    exp0 = Experiment.parse(yaml.safe_load(args.experiment.read_text()))
    depth = num_layers(exp0.resolved_sources(args.zoo), exp0.base)
    zoo_id = hashlib.sha256((args.zoo / "zoo.json").read_bytes()).hexdigest()[:12]
    work = args.json.with_suffix(".runs")
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    if args.json.exists():
        rows = json.loads(args.json.read_text())
    for seed in args.seeds:
        row = rows.setdefault(str(seed), {})
        for arm in args.arms:
            key = f"{arm}{'+' + args.variant if args.variant and arm == 'per-layer' else ''}"
            if key in row:
                continue
            exp = _experiment(
                args.experiment, arm, seed, args.budget, depth, args.sets, args.threads
            )
            t0 = time.perf_counter()
            row[key] = _uniform(exp, args.zoo) if arm == "uniform" else _search(exp, args.zoo, work)
            row[key]["cell_seconds"] = time.perf_counter() - t0
            row[key]["load_after"] = os.getloadavg()[0]
            row[key]["zoo"] = zoo_id  # builds from the same seeds differ slightly: pair within one
            row[key]["threads"] = exp.get("workers", {}).get("threads")
            tmp = args.json.with_suffix(".tmp")
            tmp.write_text(json.dumps(rows, indent=1))
            tmp.replace(args.json)
            print(
                f"seed {seed} {key}: held-out means, exact match (token accuracy): knee "
                f"{_held(row[key], 'knee'):.4f} ({_held(row[key], 'knee', 'token_accuracy'):.4f}), "
                f"best {_held(row[key], 'best'):.4f} "
                f"({_held(row[key], 'best', 'token_accuracy'):.4f}), "
                f"{row[key]['cell_seconds']:.0f}s",
                flush=True,
            )
    shutil.rmtree(work, ignore_errors=True)
    per = f"per-layer{'+' + args.variant if args.variant else ''}"
    done = [r for s, r in rows.items() if int(s) in args.seeds and per in r]
    for other in ARMS[1:]:
        pairs = [r for r in done if other in r]
        if len(pairs) > 1:
            for metric in JUDGE:
                for what in ("knee", "best"):
                    a = [_held(r[per], what, metric) for r in pairs]
                    b = [_held(r[other], what, metric) for r in pairs]
                    print(_paired(f"{metric}: {per} {what} − {other} {what}", a, b))


if __name__ == "__main__":
    main()

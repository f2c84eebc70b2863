"""Evaluations per hour of one search on the local backend and on Ray with 1 and N actors, each
actor's utilization, and where a candidate's time goes (merge, swap, scoring, archive commit,
dispatch latency) — the inputs of the scaling estimate in BENCHMARKS.md ("Ray workers").

    python bench/ray_bench.py --zoo .cache/zoo-unit --preset unit --budget 32 --actors 1 2

The zoo is built first if missing. Every mode runs the same experiment (NSGA-II, batches of
``--pop``, per-layer DARE-TIES, three objectives on ``--k`` items each), in a fresh run dir;
Ray's modes start a private local cluster (no dashboard) and its actors before the clock starts
(the start is reported apart). ``uptime``'s load averages are recorded before and after each.
``--async-actors 1 2`` adds optuna-tpe on Ray with N actors, in batches of ``--pop`` and with
``workers.dispatch: async`` (one candidate asked as each finishes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

SOURCES = {
    "base": "zoo:base",
    "rev9": "zoo:experts/rev9",
    "shift3": "zoo:experts/shift3",
    "add1": "zoo:experts/add1",
}


def experiment(args: argparse.Namespace, workers: dict[str, Any], tpe: bool) -> dict[str, Any]:
    if args.experiment is not None:  # another zoo's sources, space and tasks (first stage's space)
        exp = yaml.safe_load(args.experiment.read_text())
        stage = (exp.pop("schedule", None) or [{}])[0]
        res = {k: v for k, v in stage.items() if k in ("granularity", "curve")}
        objectives = [
            {"task": o["task"], "estimator": f"subsample:{args.k}"} for o in exp["objectives"]
        ]
        tasks = {"space_options": {**exp.get("space_options", {}), **res}, "objectives": objectives}
        own = {k: exp[k] for k in ("sources", "base", "space", "holdout") if k in exp}
        own["reference_points"] = False
    else:
        own, tasks = {}, {}
    return {
        "name": "bench-ray",
        "sources": SOURCES,
        "base": "base",
        "space": "dare_ties-per-layer",
        "space_options": {"granularity": 2},
        "objectives": [
            {"task": t, "estimator": f"subsample:{args.k}"} for t in ("rev9", "shift3", "add1")
        ],
        # async dispatch needs an optimizer that asks one at a time: TPE (batches of --pop when
        # it runs in batch mode)
        "optimizer": (
            {"name": "optuna-tpe", "n_startup_trials": args.pop, "batch": args.pop}
            if tpe
            else {"name": "nsga2", "pop_size": args.pop}
        ),
        "budget": args.budget,
        "seed": 0,
        "workers": {"threads": 1, **workers},  # local: --local-threads
        # a candidate that could enter the front is re-scored on every item (~10x): the spread
        # of candidate times an asynchronous dispatch absorbs
        "promotion": {"enabled": args.promotion},
        **own,
        **tasks,
    }


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def one(
    args: argparse.Namespace, label: str, workers: dict[str, Any], tpe: bool = False
) -> dict[str, Any]:
    from evomerge.run import lifecycle as search

    d = Path(tempfile.mkdtemp(prefix=f"raybench-{label}-"))
    exp = d / "exp.yaml"
    exp.write_text(yaml.safe_dump(experiment(args, workers, tpe)))
    before = load()
    t0 = time.perf_counter()
    s, budget = search.start(exp, d / "run", zoo=args.zoo)
    t1 = time.perf_counter()
    try:
        out = s.run(budget)
    finally:
        t2 = time.perf_counter()
        pool = s.worker.stats() if hasattr(s.worker, "stats") else None
        s.close()
    after = load()
    evs = s.archive.evaluations
    assert out.status == "finished" and len(evs) == args.budget, out

    def mean(key: str) -> float:
        return statistics.fmean(e.timings.get(key, 0.0) for e in evs)

    totals = [e.timings.get("total", 0.0) for e in evs]
    wall = t2 - t1
    row = {
        "mode": label,
        "start_s": t1 - t0,
        "wall_s": wall,
        "evaluations": len(evs),
        "evaluations_per_hour": len(evs) / wall * 3600,
        "per_candidate_s": {
            "merge": mean("merge"),
            "swap": mean("swap"),
            "scoring": statistics.fmean(
                sum(v for k, v in e.timings.items() if k.startswith("score:")) for e in evs
            ),
            "total_on_worker": statistics.fmean(totals),
            "total_cv": statistics.pstdev(totals) / statistics.fmean(totals),
            "dispatch": mean("dispatch"),
            "commit": s.loop_timings["commit"] / len(evs),
            "driver_loop": sum(s.loop_timings.values()) / len(evs),
        },
        "utilization": [a["utilization"] for a in pool["actors"]] if pool else None,
        "load_before": before,
        "load_after": after,
        "front": sorted((e.recipe_hash, tuple(e.values or ())) for e in evs),
    }
    print(json.dumps({k: v for k, v in row.items() if k != "front"}, indent=1), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=Path(".cache/zoo-unit"))
    ap.add_argument("--preset", default="unit")
    ap.add_argument("--budget", type=int, default=32)
    ap.add_argument("--pop", type=int, default=8)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--actors", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--no-local", action="store_true")
    ap.add_argument(
        "--async-actors",
        type=int,
        nargs="*",
        default=[],
        help="also optuna-tpe on Ray with N actors, batch then `dispatch: async` (not in the "
        "same-archive check: another optimizer, and async depends on arrival order)",
    )
    ap.add_argument("--promotion", action="store_true", help="promotion: {enabled: true}")
    ap.add_argument(
        "--experiment",
        type=Path,
        help="take sources, space, tasks and holdout from this experiment (e.g. the SmolLM2 "
        "zoo's); its first stage's space",
    )
    ap.add_argument("--local-threads", type=int, default=1, help="torch threads of the local mode")
    ap.add_argument("--out-json", type=Path)
    args = ap.parse_args()
    if not (args.zoo / "zoo.json").exists():
        from evomerge.zoo import build_zoo

        build_zoo(args.zoo, preset=args.preset, seed=0)
    local = {"threads": args.local_threads}
    rows = [] if args.no_local else [one(args, f"local, {args.local_threads} thread(s)", local)]
    for n in args.actors:
        rows.append(
            one(args, f"ray x{n}", {"backend": "ray", "count": n, "resources": {"num_cpus": 1}})
        )
    for n in args.async_actors:
        ray = {"backend": "ray", "count": n, "resources": {"num_cpus": 1}}
        rows.append(one(args, f"ray x{n} tpe batch", ray, tpe=True))
        rows.append(one(args, f"ray x{n} tpe async", {**ray, "dispatch": "async"}, tpe=True))
    fronts = {r["mode"]: r.pop("front") for r in rows if "tpe" not in r["mode"]}
    same = len({json.dumps(f) for f in fronts.values()}) == 1 if len(fronts) > 1 else None
    print(f"same archive (recipes and scores) in every batch mode: {same}")
    head = "| mode | start (s) | wall (s) | evaluations/hour | utilization | load before → after |"
    print(head)
    print("|---|---:|---:|---:|---|---|")
    for r in rows:
        util = ", ".join(f"{u:.0%}" for u in r["utilization"]) if r["utilization"] else "—"
        print(
            f"| {r['mode']} | {r['start_s']:.1f} | {r['wall_s']:.1f} | "
            f"{r['evaluations_per_hour']:,.0f} | {util} | {r['load_before']} → {r['load_after']} |"
        )
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps({"rows": rows, "same_archive": same}, indent=1))


if __name__ == "__main__":
    main()

"""Successive halving across fidelities vs plain subsampling, at equal compute, on the tiny zoo.

    python bench/halving_bench.py --zoo ~/.cache/evomerge/zoo --sh-budget 48 --seeds 0 1 2

Both arms search ``dare_ties-per-layer`` (24 genes) for three objectives (token accuracy on rev9,
shift3, add1) with the same optimizer (optuna-tpe, batches of 12):

- sh: ``promotion: {schedule: successive_halving, rungs: [50, 200, 2000], eta: 3}``, objectives
  at ``full`` (the top rung is every item);
- subsample: every candidate on the same ``subsample:K`` items (K = ``--k``, 200).

Compute is items scored (forward passes over task items; the tiny zoo's merges are cheap): the
subsample arm gets as many candidates as the items the sh arm scored allow (rounded to whole
batches, never more). Quality is measured on full scores of each arm's answer: for sh, the
finally promoted set (the candidates that reached the top rung: one per batch, already scored
on every item); for subsample, as many candidates, its best by recorded mean skill, scored here
on every item (not counted as the arm's compute). The table gives the hypervolume of those
full-score vectors (reference 0, 0, 0) and the best full-score mean skill among them.
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


def experiment(arm: str, k: int, budget: int, seed: int, step: int) -> dict[str, Any]:
    est = "full" if arm == "sh" else f"subsample:{k}"
    exp: dict[str, Any] = {
        "name": f"halving-{arm}",
        "sources": SOURCES,
        "base": "base",
        "space": "dare_ties-per-layer",
        "objectives": [{"task": t, "estimator": est} for t in TASKS],
        "optimizer": {"name": "optuna-tpe", "batch": step},
        "budget": budget,
        "seed": seed,
        "workers": {"threads": 1},
    }
    if arm == "sh":
        exp["promotion"] = {
            "schedule": "successive_halving",
            "rungs": [50, 200, 2000],
            "eta": 3,
        }
    return exp


def hypervolume(points: list[list[float]]) -> float:
    from pymoo.indicators.hv import HV

    if not points:
        return 0.0
    return float(HV(ref_point=np.zeros(3))(-np.asarray(points)))


def run_arm(zoo: Path, exp: dict[str, Any], work: Path, answer: int = 0) -> dict[str, Any]:
    from evomerge.evaluate.estimators import make_estimator
    from evomerge.evaluate.scoring import prepare, score_prepared
    from evomerge.evaluate.select import load_candidate
    from evomerge.recipe import Recipe
    from evomerge.run import lifecycle as search

    path = work / f"{exp['name']}-{exp['seed']}.yaml"
    path.write_text(yaml.safe_dump(exp))
    run_dir = work / f"run-{exp['name']}-{exp['seed']}"
    shutil.rmtree(run_dir, ignore_errors=True)
    s, budget = search.start(path, run_dir, zoo=zoo)
    t0 = time.perf_counter()
    s.run(budget)
    wall = time.perf_counter() - t0
    evs = s.archive.evaluations
    k = exp["objectives"][0]["estimator"]
    if exp.get("promotion"):
        items = sum(e.timings.get("items", 0.0) for e in evs)
    else:
        items = len(evs) * int(k.split(":")[1]) * len(TASKS)
    # the arm's answer, on every item: sh's top-rung candidates (full already); subsample's
    # best ``answer`` by recorded mean skill, scored here
    worker = s.worker
    full = make_estimator("full")
    ok = [e for e in evs if e.values]
    if exp.get("promotion"):
        front = [e for e in ok if all(f >= 1.0 for f in e.fidelity.values())]
    else:
        front = sorted(ok, key=lambda e: -float(np.mean(e.values or [0.0])))[:answer]
    full_values = []
    preps = [prepare(worker.engine, ob.task) for ob in worker.objectives]
    for e in front:
        if all(f >= 1.0 for f in e.fidelity.values()):
            full_values.append(list(e.values or []))
            continue
        recipe = Recipe.from_dict(yaml.safe_load(e.recipe))
        load_candidate(
            worker.engine,
            recipe,
            plan=worker.plan(recipe),
            sources=worker.sources,
            device=worker.device,
        )
        full_values.append(
            [
                full.estimate(score_prepared(worker.engine, prep).scores, ob.task.item_ids).value
                for ob, prep in zip(worker.objectives, preps, strict=True)
            ]
        )
    s.close()
    means = [float(np.mean(v)) for v in full_values]
    return {
        "candidates": len(evs),
        "items": items,
        "merges": sum(1 + e.timings.get("rung", 0.0) for e in evs)
        if exp.get("promotion")
        else len(evs),
        "wall": wall,
        "answer": len(front),
        "hv_full": hypervolume(full_values),
        "best_full_mean": max(means) if means else float("nan"),
        "top_rung": sum(e.timings.get("rung", 0.0) == 2 for e in evs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=Path.home() / ".cache" / "evomerge" / "zoo")
    ap.add_argument("--sh-budget", type=int, default=48)
    ap.add_argument("--step", type=int, default=12)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--arm", choices=["both", "sh", "subsample"], default="both", help="one arm alone"
    )
    ap.add_argument("--items", type=float, default=None, help="subsample alone: sh's items")
    ap.add_argument("--answer", type=int, default=4, help="subsample alone: sh's answer size")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="evomerge-halving-"))
    results: list[dict[str, Any]] = []
    for seed in args.seeds:
        if args.arm == "subsample":
            sh = {"items": args.items, "answer": args.answer}
        else:
            sh = run_arm(args.zoo, experiment("sh", args.k, args.sh_budget, seed, args.step), work)
        if args.arm == "sh":
            results.append({"seed": seed, "arm": "sh", **sh})
            print(f"seed {seed} sh: {sh}", flush=True)
            continue
        per = args.k * len(TASKS)
        budget = max(args.step, int(sh["items"] // per) // args.step * args.step)
        sub = run_arm(
            args.zoo,
            experiment("subsample", args.k, budget, seed, args.step),
            work,
            answer=sh["answer"],
        )
        arms = [("sh", sh)] if args.arm == "both" else []
        for arm, r in [*arms, (f"subsample:{args.k}", sub)]:
            results.append({"seed": seed, "arm": arm, **r})
            print(
                f"seed {seed} {arm}: {r['candidates']} candidates, {r['items']:.0f} items, "
                f"{r['merges']:.0f} merges, answer {r['answer']}, HV(full) {r['hv_full']:.4f}, "
                f"best full mean {r['best_full_mean']:.4f} ({r['wall']:.0f}s)",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Fitness estimators judged where a search needs them: among its best candidates.

Random recipes spread widely, so ranking them is easy. A search's own candidates crowd near the
front, a few points apart. This benchmark takes a finished run (``--run``; or makes one with
``--make-run DIR --budget N`` from ``--experiment``), rescores every evaluated recipe in full
(every item of every objective's task, token accuracy) and replays each estimator at each k from
the stored per-item scores (no model runs), judging:

- top-decile Spearman: per task, among the best 10 % of the run's candidates by full score, the
  rank correlation of the estimate with the full score (mean and worst over tasks);
- front recovery: the share of the full-score Pareto front (all objectives) that is also on the
  front computed from the estimates (and the estimated front's precision).

Calibration for anchor / gp-IRT / p-IRT is the product's own: the run's sources plus seeded random
merges of them (``evomerge.evaluate.calibrate.calibration_recipes``), scored in full. Subsample
is the mean over ``--subsample-seeds`` seeds; the calibrated estimators' item choices depend on
their seed too, so they are averaged over the same seeds.

    .venv/bin/python bench/estimators_front_bench.py --make-run .cache/estfront/run --budget 192 \
        --scores-cache .cache/estfront/scores.npz
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evomerge.evaluate.calibrate import calibration_models, calibration_recipes  # noqa: E402
from evomerge.evaluate.estimators import Calibration, make_estimator  # noqa: E402
from evomerge.evaluate.hf import HFEngine  # noqa: E402
from evomerge.evaluate.scoring import score_task  # noqa: E402
from evomerge.evaluate.tasks import Task, load_task  # noqa: E402
from evomerge.merge.materialize import materialize, plan  # noqa: E402
from evomerge.recipe import Recipe  # noqa: E402
from evomerge.run.run_dir import open_archive, read_info  # noqa: E402

ESTIMATORS = ("subsample", "anchor", "irt", "pirt")
TARGET_REDUCTION, TARGET_RHO, TARGET_RECALL = 50, 0.9, 0.9


def rank_corr(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho; an estimate that does not separate the candidates at all (every one the
    same value: few items, or an estimator's coarse steps) ranks nothing: 0."""
    from scipy.stats import spearmanr

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)


def nondominated(values: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``values`` (all maximized) that no other row dominates."""
    keep = []
    for i, v in enumerate(values):
        dominated = np.any(np.all(values >= v, axis=1) & np.any(values > v, axis=1))
        if not dominated:
            keep.append(i)
    return np.array(keep, dtype=int)


# -- the run and its full scores ---------------------------------------------------------------


def make_run(experiment: Path, run_dir: Path, budget: int) -> None:
    if (run_dir / "run.json").exists():
        print(f"run {run_dir} exists: resuming it to {budget} evaluations", flush=True)
        cmd = ["resume", str(run_dir), "--budget", str(budget)]
    else:
        cmd = ["run", str(experiment), "--run-dir", str(run_dir), "--budget", str(budget)]
    subprocess.run([sys.executable, "-m", "evomerge.cli", *cmd], check=True)


def run_recipes(run_dir: Path) -> tuple[list[Recipe], dict[str, Any]]:
    """Every successfully evaluated recipe of the run, in trial order, and its run.json."""
    evs = [e for e in open_archive(run_dir).evaluations if e.ok and e.recipe]
    return [Recipe.from_dict(yaml.safe_load(e.recipe)) for e in evs], read_info(run_dir)


def score_rows(engine: HFEngine, tasks: list[Task], recipes: list[Recipe], log: str) -> dict:
    rows: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
    for i, recipe in enumerate(recipes):
        t0 = time.perf_counter()
        engine.load_weights(materialize(plan(recipe), "cpu"))
        for task in tasks:
            res = score_task(engine, task)
            rows[task.name].append(np.array([res.scores[j] for j in task.item_ids], float))
        means = " ".join(f"{t}={r[-1].mean():.3f}" for t, r in rows.items())
        print(f"  {log} {i + 1}/{len(recipes)}: {means} ({time.perf_counter() - t0:.1f}s)")
    return {t: np.stack(r) for t, r in rows.items()}


def load_or_score(args: argparse.Namespace, tasks: list[Task], recipes: list[Recipe], info: dict):
    meta = json.dumps(
        {
            "run": str(args.run.resolve()),
            "recipes": [r.content_hash() for r in recipes],
            "calibration_merges": args.calibration_merges,
            "tasks": [t.name for t in tasks],
        },
        sort_keys=True,
    )
    path = args.scores_cache
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as z:
            if str(z["meta"]) == meta:
                print(f"per-item scores from {path}", flush=True)
                return (
                    {t.name: z[f"cal_{t.name}"] for t in tasks},
                    {t.name: z[f"run_{t.name}"] for t in tasks},
                )
    # the run's sources as its candidates name them (resolved paths), base first
    sources = {n: s.path for n, s in recipes[0].sources.items()}
    models = calibration_models(sources, recipes[0].base)
    cal_recipes = calibration_recipes(models, args.calibration_merges, seed=0)
    engine = HFEngine(models[0], device="cpu", batch_size=args.batch_size)
    cal = score_rows(engine, tasks, cal_recipes, "calibration model")
    run = score_rows(engine, tasks, recipes, "run candidate")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"cal_{t}": m for t, m in cal.items()} | {f"run_{t}": m for t, m in run.items()}
        np.savez(path, meta=np.array(meta), **arrays)
    return cal, run


# -- replay ------------------------------------------------------------------------------------


def estimates(spec: str, seed: int, cal: Calibration, run: np.ndarray, ids: list[str]):
    est = make_estimator(spec, seed)
    est.calibrate(cal)
    picked = est.select(ids)
    col = {i: j for j, i in enumerate(ids)}
    cols = np.array([col[i] for i in picked])
    values = np.array(
        [est.estimate(dict(zip(picked, row[cols].tolist(), strict=True)), ids).value for row in run]
    )
    return values, len(picked) / len(ids)


def judge(args, tasks: list[Task], cal_m: dict, run_m: dict) -> dict[str, dict[str, float]]:
    truth = np.stack([run_m[t.name].mean(1) for t in tasks], axis=1)  # candidates × objectives
    n = len(truth)
    decile = max(5, round(n / 10))
    true_front = set(nondominated(truth).tolist())
    cals = {
        t.name: Calibration.fit(cal_m[t.name], list(t.item_ids), key=t.name, seed=0) for t in tasks
    }
    out: dict[str, dict[str, float]] = {}
    for name in ESTIMATORS:
        for k in args.ks:
            rhos: list[list[float]] = []
            recalls, precisions, costs = [], [], []
            for seed in range(args.subsample_seeds):
                est_cols, per_task = [], []
                for j, task in enumerate(tasks):
                    ids = list(task.item_ids)
                    spec, m = f"{name}:{k}", run_m[task.name]
                    values, cost = estimates(spec, seed, cals[task.name], m, ids)
                    costs.append(cost)
                    est_cols.append(values)
                    top = np.argsort(-truth[:, j])[:decile]
                    per_task.append(rank_corr(values[top], truth[top, j]))
                rhos.append(per_task)
                est_front = set(nondominated(np.stack(est_cols, axis=1)).tolist())
                recalls.append(len(true_front & est_front) / len(true_front))
                precisions.append(len(true_front & est_front) / len(est_front))
            r = np.array(rhos)  # seeds × tasks
            out[f"{name}:{k}"] = {
                "k": k,
                "reduction": 1 / float(np.mean(costs)),
                "top_spearman": float(r.mean()),
                "top_spearman_worst_task": float(r.mean(0).min()),
                "front_recall": float(np.mean(recalls)),
                "front_precision": float(np.mean(precisions)),
            }
            row = out[f"{name}:{k}"]
            print(
                f"  {name}:{k} (1/{row['reduction']:.0f}): top-decile ρ {row['top_spearman']:.3f} "
                f"(worst task {row['top_spearman_worst_task']:.3f}), front recall "
                f"{row['front_recall']:.2f}, precision {row['front_precision']:.2f}",
                flush=True,
            )
    out["_meta"] = {
        "candidates": n,
        "decile": decile,
        "front_size": len(true_front),
        "truth_top_decile_spread_pts": [
            100 * float(np.ptp(np.sort(truth[:, j])[-decile:])) for j in range(len(tasks))
        ],
    }
    return out


def table(res: dict[str, Any]) -> list[str]:
    lines = [
        "| estimator | k | cost | top-decile Spearman (mean / worst task) | full front recovered "
        "| estimated front precision | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for spec, r in res.items():
        if spec.startswith("_"):
            continue
        name = spec.split(":")[0]
        ok = (
            r["reduction"] >= TARGET_REDUCTION - 1e-9
            and r["top_spearman"] >= TARGET_RHO
            and r["front_recall"] >= TARGET_RECALL
        )
        lines.append(
            f"| {name} | {r['k']} | 1/{r['reduction']:.0f} | {r['top_spearman']:.3f} / "
            f"{r['top_spearman_worst_task']:.3f} | {100 * r['front_recall']:.0f} % "
            f"| {100 * r['front_precision']:.0f} % | {'yes' if ok else 'no'} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="a finished run directory")
    ap.add_argument("--make-run", type=Path, help="make (or resume) a run here first")
    ap.add_argument("--experiment", type=Path, default=ROOT / "experiments" / "zoo-demo.yaml")
    ap.add_argument("--budget", type=int, default=192)
    ap.add_argument("--ks", default="100,40,20", help="items per task (of 2000: 20×, 50×, 100×)")
    ap.add_argument("--subsample-seeds", type=int, default=5)
    ap.add_argument("--calibration-merges", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--scores-cache", type=Path)
    ap.add_argument("--out-json", type=Path)
    args = ap.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",")]
    if args.make_run is not None:
        make_run(args.experiment, args.make_run, args.budget)
        args.run = args.make_run
    if args.run is None:
        ap.error("--run or --make-run is required")
    recipes, info = run_recipes(args.run)
    zoo = info.get("zoo") or str(Path.home() / ".cache/evomerge/zoo")
    experiment = yaml.safe_load((args.run / "experiment.yaml").read_text())
    tasks = [load_task(o["task"], zoo=zoo) for o in experiment["objectives"]]
    print(
        f"{len(recipes)} candidates of {args.run} × {len(tasks)} tasks; "
        f"torch {torch.__version__}, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    cal_m, run_m = load_or_score(args, tasks, recipes, info)
    res = judge(args, tasks, cal_m, run_m)
    meta = res["_meta"]
    print()
    print(
        f"{meta['candidates']} candidates, top decile = {meta['decile']}, full-score front = "
        f"{meta['front_size']}; top-decile spread (pts): "
        + ", ".join(f"{s:.1f}" for s in meta["truth_top_decile_spread_pts"])
    )
    print("\n".join(table(res)))
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

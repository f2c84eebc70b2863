"""Fitness estimators on the tiny zoo: how well does scoring k items rank merges?

Draws ``--recipes`` random merge recipes over a built zoo (task_arithmetic / ties / dare_ties,
per-expert weights in [0, 1.5], some as per-layer gradients, densities in [0.3, 1]) and a
disjoint seeded set of ``--calibration-merges`` merges of the same distribution. Every model is
scored on every item of every task (token accuracy): the recipes' full-set means are the ground
truth; the calibration matrix (rows: the zoo's base, its experts, the calibration merges) is what
anchor / gp-IRT / p-IRT learn from. Each estimator at each k is then replayed from the stored
per-item scores (no model runs): it selects its items, estimates each recipe's mean from their
scores, and is judged by the Spearman rank correlation of its estimates with the full means
across the recipes and by its mean absolute error in points (x100). Subsample is averaged over
``--subsample-seeds`` seeds.

Last, throughput with the transformers engine on this machine's CPU: wall time per candidate of
plan + materialize + ``load_weights`` (merge+swap) and of scoring the tasks, at full cost and at
estimator cost (``--timing-k`` items a task).

    .venv/bin/python bench/estimators_bench.py --zoo /tmp/zoo-default --out-json est.json

``--scores-cache FILE`` keeps the per-item score matrices (.npz): a second run with the same
settings replays the estimators (and the timing) without re-scoring; ``--device cuda`` scores the
matrices on a GPU (the timing always runs on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evomerge.evaluate.estimators import Calibration, make_estimator  # noqa: E402
from evomerge.evaluate.hf import HFEngine  # noqa: E402
from evomerge.evaluate.scoring import score_task  # noqa: E402
from evomerge.evaluate.tasks import Task, load_task  # noqa: E402
from evomerge.merge.materialize import materialize, plan  # noqa: E402
from evomerge.recipe import Recipe  # noqa: E402

try:
    from scipy.stats import spearmanr
except ImportError:  # pragma: no cover - scipy is optional
    spearmanr = None

METHODS = ("task_arithmetic", "ties", "dare_ties")
ESTIMATORS = ("subsample", "anchor", "irt", "pirt")
TARGET_COST, TARGET_RHO, TARGET_MAE = 1 / 20, 0.9, 3.0
TOP = 10  # also rank-correlate among the best TOP recipes only
EVAL, CALIB = 0, 1  # seed streams: the evaluated recipes and the calibration merges


# -- recipes ----------------------------------------------------------------------------------


def experts(zoo: Path) -> list[str]:
    return sorted(p.name for p in (zoo / "experts").iterdir() if (p / "config.json").exists())


def draw_recipe(zoo: Path, seed: int, stream: int, index: int) -> dict[str, Any]:
    """One random merge: seeded by (seed, stream, index), so the two streams never overlap."""
    rng = np.random.default_rng([seed, stream, index])
    method = METHODS[int(rng.integers(len(METHODS)))]
    sources: dict[str, Any] = {"base": str(zoo / "base")}
    for name in experts(zoo):
        if rng.random() < 0.3:  # a per-layer gradient
            weight: Any = [round(float(w), 3) for w in rng.uniform(0, 1.5, 2)]
        else:
            weight = round(float(rng.uniform(0, 1.5)), 3)
        params: dict[str, Any] = {"weight": weight}
        if method != "task_arithmetic":
            params["density"] = round(float(rng.uniform(0.3, 1.0)), 3)
        sources[name] = {"path": str(zoo / "experts" / name), "parameters": params}
    return {
        "method": method,
        "base": "base",
        "sources": sources,
        "parameters": {"lambda": 1.0, "normalize": False},
        "dtype": "float32",
        "seed": int(rng.integers(2**31)),
    }


def swap_recipe(engine: HFEngine, recipe: dict[str, Any]) -> None:
    engine.load_weights(materialize(plan(Recipe.from_dict(recipe)), "cpu"))


def swap_checkpoint(engine: HFEngine, model_dir: Path) -> None:
    engine.load_weights(load_file(str(model_dir / "model.safetensors")).items())


# -- scoring ----------------------------------------------------------------------------------


def score_all(engine: HFEngine, tasks: list[Task], log: str) -> dict[str, np.ndarray]:
    t0 = time.perf_counter()
    rows = {}
    for task in tasks:
        res = score_task(engine, task)
        rows[task.name] = np.array([res.scores[i] for i in task.item_ids], dtype=np.float64)
    means = " ".join(f"{t}={r.mean():.3f}" for t, r in rows.items())
    print(f"  {log}: {means} ({time.perf_counter() - t0:.1f}s)", flush=True)
    return rows


def score_matrices(
    args: argparse.Namespace, tasks: list[Task]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per task: the calibration matrix and the recipes' matrix, n_models × n_items."""
    zoo = args.zoo
    engine = HFEngine(zoo / "base", device=args.device, batch_size=args.batch_size)
    cal_rows: list[dict[str, np.ndarray]] = []
    for d in [zoo / "base", *(zoo / "experts" / e for e in experts(zoo))]:
        swap_checkpoint(engine, d)
        cal_rows.append(score_all(engine, tasks, f"calibration {d.name}"))
    for i in range(args.calibration_merges):
        recipe = draw_recipe(zoo, args.seed, CALIB, i)
        swap_recipe(engine, recipe)
        cal_rows.append(score_all(engine, tasks, f"calibration merge {i} ({recipe['method']})"))
    eval_rows = []
    for i in range(args.recipes):
        recipe = draw_recipe(zoo, args.seed, EVAL, i)
        swap_recipe(engine, recipe)
        eval_rows.append(score_all(engine, tasks, f"recipe {i} ({recipe['method']})"))
    cal = {t.name: np.stack([r[t.name] for r in cal_rows]) for t in tasks}
    ev = {t.name: np.stack([r[t.name] for r in eval_rows]) for t in tasks}
    return cal, ev


def cache_meta(args: argparse.Namespace, tasks: list[Task]) -> str:
    return json.dumps(
        {
            "recipes": args.recipes,
            "calibration_merges": args.calibration_merges,
            "seed": args.seed,
            "tasks": [t.name for t in tasks],
            "items": [len(t.item_ids) for t in tasks],
        },
        sort_keys=True,
    )


def load_or_score(
    args: argparse.Namespace, tasks: list[Task]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float | None]:
    meta = cache_meta(args, tasks)
    path = args.scores_cache
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as z:
            if str(z["meta"]) == meta:
                print(f"per-item scores from {path}", flush=True)
                cal = {t.name: z[f"cal_{t.name}"] for t in tasks}
                ev = {t.name: z[f"eval_{t.name}"] for t in tasks}
                return cal, ev, None
        print(f"{path} was made with other settings: scoring again", flush=True)
    t0 = time.perf_counter()
    cal, ev = score_matrices(args, tasks)
    seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"cal_{t}": m for t, m in cal.items()} | {f"eval_{t}": m for t, m in ev.items()}
        np.savez(path, meta=np.array(meta), **arrays)
    return cal, ev, seconds


# -- estimator replay -------------------------------------------------------------------------


def rank_corr(x: np.ndarray, y: np.ndarray) -> float:
    if spearmanr is not None:
        return float(spearmanr(x, y).statistic)

    def ranks(v: np.ndarray) -> np.ndarray:  # average ranks of ties
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for val in np.unique(v):
            r[v == val] = r[v == val].mean()
        return r

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def replay(
    spec: str, seed: int, cal: Calibration, ev: np.ndarray, ids: list[str]
) -> dict[str, float]:
    est = make_estimator(spec, seed)
    est.calibrate(cal)
    picked = est.select(ids)
    col = {i: j for j, i in enumerate(ids)}
    cols = np.array([col[i] for i in picked])
    values = np.array(
        [est.estimate(dict(zip(picked, row[cols].tolist(), strict=True)), ids).value for row in ev]
    )
    truth = ev.mean(1)
    top = np.argsort(-truth)[:TOP]  # the close race among the best recipes
    return {
        "cost": len(picked) / len(ids),
        "spearman": rank_corr(values, truth),
        "spearman_top": rank_corr(values[top], truth[top]),
        "mae": 100 * float(np.abs(values - truth).mean()),
    }


def evaluate(
    args: argparse.Namespace,
    cal_m: dict[str, np.ndarray],
    ev_m: dict[str, np.ndarray],
    tasks: list[Task],
) -> dict[str, Any]:
    per_task: dict[str, dict[str, dict[str, float]]] = {}
    for task in tasks:
        ids = list(task.item_ids)
        t0 = time.perf_counter()
        cal = Calibration.fit(cal_m[task.name], ids, key=task.name, seed=args.seed)
        print(f"  {task.name}: IRT fit on {cal.n_models} models ({time.perf_counter() - t0:.1f}s)")
        truth = ev_m[task.name].mean(1)
        rows: dict[str, dict[str, float]] = {
            "truth": {
                "mean": 100 * float(truth.mean()),
                "sd": 100 * float(truth.std()),
                "min": 100 * float(truth.min()),
                "max": 100 * float(truth.max()),
            }
        }
        for name in ESTIMATORS:
            for k in args.ks:
                seeds = range(args.subsample_seeds) if name == "subsample" else [args.seed]
                runs = [replay(f"{name}:{k}", s, cal, ev_m[task.name], ids) for s in seeds]
                rows[f"{name}:{k}"] = {m: float(np.mean([r[m] for r in runs])) for m in runs[0]}
        per_task[task.name] = rows
    mean = {}
    for spec in per_task[tasks[0].name]:
        if spec == "truth":
            continue
        vals = [per_task[t.name][spec] for t in tasks]
        mean[spec] = {m: float(np.mean([v[m] for v in vals])) for m in vals[0]}
        mean[spec]["worst_spearman"] = min(v["spearman"] for v in vals)
        mean[spec]["worst_mae"] = max(v["mae"] for v in vals)
        cost = mean[spec]["cost"]
        mean[spec]["meets_target"] = bool(
            cost <= TARGET_COST + 1e-12
            and mean[spec]["spearman"] >= TARGET_RHO
            and mean[spec]["mae"] <= TARGET_MAE
        )
    return {"per_task": per_task, "mean": mean}


# -- throughput -------------------------------------------------------------------------------


def throughput(args: argparse.Namespace, tasks: list[Task]) -> dict[str, float]:
    engine = HFEngine(args.zoo / "base", device="cpu", batch_size=args.batch_size)
    subsets = {
        t.name: make_estimator(f"subsample:{args.timing_k}", 0).select(t.item_ids) for t in tasks
    }
    swap_recipe(engine, draw_recipe(args.zoo, args.seed, EVAL, 0))  # warm-up
    score_task(engine, tasks[0], subsets[tasks[0].name])
    merge, full, cheap = [], [], []
    for i in range(args.timing_candidates):
        recipe = draw_recipe(args.zoo, args.seed, EVAL, i)
        t0 = time.perf_counter()
        swap_recipe(engine, recipe)
        t1 = time.perf_counter()
        for task in tasks:
            score_task(engine, task)
        t2 = time.perf_counter()
        for task in tasks:
            score_task(engine, task, subsets[task.name])
        t3 = time.perf_counter()
        merge.append(t1 - t0)
        full.append(t2 - t1)
        cheap.append(t3 - t2)
        print(
            f"  candidate {i}: merge+swap {t1 - t0:.2f}s, full scoring {t2 - t1:.1f}s, "
            f"{args.timing_k}-item scoring {t3 - t2:.2f}s",
            flush=True,
        )
    m, f, c = (float(np.median(x)) for x in (merge, full, cheap))
    return {
        "candidates": args.timing_candidates,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
        "merge_swap_s": m,
        "full_score_s": f,
        "k_score_s": c,
        "k": args.timing_k,
        "full_candidates_per_min": 60 / (m + f),
        "k_candidates_per_min": 60 / (m + c),
    }


# -- report -----------------------------------------------------------------------------------


def table(rows: dict[str, dict[str, float]], ks: list[int], worst: bool) -> list[str]:
    head = f"| estimator | k | cost | Spearman | Spearman top-{TOP} | MAE (pts) |"
    sep = "| --- | ---: | ---: | ---: | ---: | ---: |"
    if worst:
        head += " worst-task Spearman | worst-task MAE | target |"
        sep += " ---: | ---: | :---: |"
    out = [head, sep]
    for name in ESTIMATORS:
        for k in ks:
            r = rows[f"{name}:{k}"]
            line = (
                f"| {name} | {k} | 1/{1 / r['cost']:.0f} | {r['spearman']:.3f} "
                f"| {r['spearman_top']:.3f} | {r['mae']:.2f} |"
            )
            if worst:
                mark = "yes" if r["meets_target"] else "no"
                line += f" {r['worst_spearman']:.3f} | {r['worst_mae']:.2f} | {mark} |"
            out.append(line)
    return out


def task_table(per_task: dict[str, dict[str, dict[str, float]]], k: int) -> list[str]:
    names = list(per_task)
    out = [
        "| estimator | " + " | ".join(f"{t} ρ / MAE" for t in names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for name in ESTIMATORS:
        cells = [
            f"{per_task[t][f'{name}:{k}']['spearman']:.3f} / "
            f"{per_task[t][f'{name}:{k}']['mae']:.2f}"
            for t in names
        ]
        out.append(f"| {name}:{k} | " + " | ".join(cells) + " |")
    truth = [
        f"{per_task[t]['truth']['mean']:.1f} ± {per_task[t]['truth']['sd']:.1f}" for t in names
    ]
    out.append("| full score, mean ± sd over recipes | " + " | ".join(truth) + " |")
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", type=Path, default=Path.home() / ".cache/evomerge/zoo")
    ap.add_argument("--recipes", type=int, default=40)
    ap.add_argument("--calibration-merges", type=int, default=16)
    ap.add_argument("--ks", default="20,50,100,200")
    ap.add_argument("--tasks", default="rev9,shift3,add1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subsample-seeds", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="where the score matrices are computed")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--scores-cache", type=Path, default=None)
    ap.add_argument("--timing-candidates", type=int, default=3, help="0: no throughput run")
    ap.add_argument("--timing-k", type=int, default=100)
    ap.add_argument("--out-json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",")]
    args.zoo = args.zoo.expanduser().resolve()
    tasks = [load_task(t, zoo=args.zoo) for t in args.tasks.split(",")]
    n_items = {t.name: len(t.item_ids) for t in tasks}
    n_cal = 1 + len(experts(args.zoo)) + args.calibration_merges
    print(
        f"{args.recipes} recipes + {n_cal} calibration models × {len(tasks)} tasks "
        f"({n_items}); torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )

    t0 = time.perf_counter()
    cal_m, ev_m, score_s = load_or_score(args, tasks)
    print("estimators:", flush=True)
    res = evaluate(args, cal_m, ev_m, tasks)
    replay_s = time.perf_counter() - t0 - (score_s or 0.0)
    timing = None
    if args.timing_candidates > 0:
        print("throughput (transformers engine, CPU):", flush=True)
        timing = throughput(args, tasks)

    mid = 100 if 100 in args.ks else args.ks[len(args.ks) // 2]
    lines = [
        f"Mean over tasks ({', '.join(n_items)}; {args.recipes} recipes, "
        f"{n_cal} calibration models):",
        "",
        *table(res["mean"], args.ks, True),
        "",
        f"Per task at k = {mid}:",
        "",
        *task_table(res["per_task"], mid),
    ]
    reach = sorted({s.split(":")[0] for s, r in res["mean"].items() if r["meets_target"]})
    miss = [e for e in ESTIMATORS if e not in reach]
    verdict = (
        f"Target (cost <= 1/20, Spearman >= {TARGET_RHO}, MAE <= {TARGET_MAE:g} pts, "
        f"means over tasks): met by {', '.join(reach) or 'no estimator'}"
        + (f"; not met by {', '.join(miss)}." if miss else " (all four).")
    )
    lines += ["", verdict]
    if timing:
        lines += [
            "",
            "| candidate on CPU | merge+swap (s) | scoring (s) | candidates / min |",
            "| --- | ---: | ---: | ---: |",
            f"| full ({sum(n_items.values())} items) | {timing['merge_swap_s']:.2f} "
            f"| {timing['full_score_s']:.2f} | {timing['full_candidates_per_min']:.2f} |",
            f"| k = {timing['k']} per task ({timing['k'] * len(tasks)} items) "
            f"| {timing['merge_swap_s']:.2f} | {timing['k_score_s']:.2f} "
            f"| {timing['k_candidates_per_min']:.1f} |",
        ]
    print("\n" + "\n".join(lines))
    if args.out_json:
        out = {
            "machine": {
                "nproc": os.cpu_count(),
                "cpu": cpu_model(),
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "scoring_seconds": score_s,
            "replay_seconds": replay_s,
            "estimators": res,
            "throughput": timing,
            "verdict": verdict,
            "table_markdown": "\n".join(lines),
        }
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

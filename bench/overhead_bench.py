"""Per-candidate overhead of a search on the tiny zoo: where the time goes besides forward passes.

    python bench/overhead_bench.py --zoo ~/.cache/evomerge/zoo --k 100 --budget 48

Three objectives (rev9, shift3, add1), each estimated on ``--k`` items, a DARE-TIES per-layer
search (24 genes), one torch thread, no reference points (scored once per run, before the
first trial). "Forward" is the time inside the engine's ``loglikelihood`` calls; overhead =
1 - forward / wall. ``--prefetch both`` alternates ``workers.prefetch`` off and on (merging the
next candidate on the core the engine leaves free). The run uses whatever ``evomerge`` is
first on the path, so two code trees can be compared side by side, alternating, in one
invocation:

    python bench/overhead_bench.py --prefetch both --repeat 3
    python bench/overhead_bench.py --trees /work/main . --repeat 2
    python bench/overhead_bench.py --trees /work/main . --repeat 3 --commit-only

(each tree runs in a subprocess with ``PYTHONPATH`` set to it; the JSON lines they print are
gathered and summarized as medians).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent


def measure(
    zoo: Path, k: int, budget: int, optimizer: str, seed: int, prefetch: bool | None = None
) -> dict[str, Any]:
    import torch
    from search_bench import experiment, run_search

    torch.set_num_threads(1)
    opt = {"name": optimizer, "pop_size" if optimizer == "nsga2" else "batch": 12}
    exp = experiment(opt, k, budget, seed)
    # once per run, not per candidate: the base, sources and uniform merge are scored before
    # the first trial; they are left out so that wall time is the trials' own
    exp["reference_points"] = False
    if prefetch is not None:
        exp["workers"]["prefetch"] = prefetch
    with tempfile.TemporaryDirectory(prefix="evomerge-overhead-") as work:
        r = run_search(zoo, exp, Path(work), timing=True)
    t = r["timing"]
    wall, n = t["wall"], t["evaluations"]
    return {
        "evaluations": n,
        "wall": wall,
        "forward": t["forward"],
        "overhead": 1 - t["forward"] / wall,
        "merge_ms": 1000 * t["worker"].get("merge", 0.0) / n,
        "commit_ms": 1000 * t["loop"]["commit"] / n,
        "checkpoint_ms": 1000 * t["loop"]["checkpoint"] / n,
        "evals_per_hour": 3600 * n / wall,
    }


def measure_commit(n: int = 200) -> dict[str, Any]:
    """The archive's commit alone: ``n`` synthetic evaluations (24 genes, 3 objectives, a
    recipe of the per-layer space's size) recorded into a fresh SQLite archive."""
    import numpy as np

    from evomerge.genes import Gene
    from evomerge.run.archive import Archive, Evaluation

    genes = [Gene(f"g{i}") for i in range(24)]
    recipe = "method: dare_ties\nsources:\n" + "".join(
        f"  s{i}:\n    path: /x/{i}\n    parameters:\n"
        "      weight: {per_layer: [0.1, 0.2, 0.3, 0.4]}\n"
        "      density: {per_layer: [0.5, 0.6, 0.7, 0.8]}\n"
        for i in range(3)
    )
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="evomerge-commit-") as work:
        archive = Archive(
            f"sqlite:///{work}/archive.db",
            objectives=["a", "b", "c"],
            directions=["maximize"] * 3,
            genes=genes,
            experiment_hash="bench",
        )
        times = []
        for i in range(n):
            ev = Evaluation(f"r{i}", recipe, rng.random(24).tolist(), rng.random(3).tolist())
            ev.timings = {"merge": 0.04, "total": 0.4}
            t0 = time.perf_counter()
            archive.record(ev)
            times.append(time.perf_counter() - t0)
    return {"commit_ms": 1000 * statistics.median(times), "n": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=Path.home() / ".cache" / "evomerge" / "zoo")
    ap.add_argument("--k", type=int, default=100, help="items per task")
    ap.add_argument("--budget", type=int, default=48)
    ap.add_argument("--optimizer", default="nsga2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trees", nargs="*", default=None, help="code trees to compare")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--commit-only", action="store_true", help="time the archive commit alone")
    ap.add_argument(
        "--prefetch",
        choices=["auto", "on", "off", "both"],
        default="auto",
        help="workers.prefetch (auto: the default rule); both: alternate off and on",
    )
    args = ap.parse_args()
    flags = {"auto": None, "on": True, "off": False}
    if not args.trees and args.repeat == 1 and args.prefetch != "both":
        if args.commit_only:
            print(json.dumps(measure_commit()))
        else:
            prefetch = flags[args.prefetch]
            row = measure(args.zoo, args.k, args.budget, args.optimizer, args.seed, prefetch)
            print(json.dumps(row))
        return
    modes = ["off", "on"] if args.prefetch == "both" else [args.prefetch]
    variants = [(t, m) for t in (args.trees or [str(ROOT)]) for m in modes]
    print(f"load average before: {os.getloadavg()}", flush=True)
    rows: dict[str, list[dict[str, Any]]] = {f"{t} prefetch={m}": [] for t, m in variants}
    for rep in range(args.repeat):
        for tree, mode in variants:
            cmd = [sys.executable, __file__, "--zoo", str(args.zoo), "--k", str(args.k)]
            cmd += ["--budget", str(args.budget), "--optimizer", args.optimizer]
            cmd += ["--seed", str(args.seed), "--prefetch", mode]
            cmd += ["--commit-only"] if args.commit_only else []
            env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
            t0 = time.perf_counter()
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            tree = f"{tree} prefetch={mode}"
            rows[tree].append(row)
            if args.commit_only:
                print(f"[{rep}] {tree}: commit {row['commit_ms']:.2f} ms (median)", flush=True)
                continue
            print(
                f"[{rep}] {tree}: overhead {row['overhead']:.1%}, merge {row['merge_ms']:.1f} ms, "
                f"commit {row['commit_ms']:.1f} ms, checkpoint {row['checkpoint_ms']:.2f} ms, "
                f"wall {row['wall']:.1f} s ({time.perf_counter() - t0:.0f} s with start-up)",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()}")
    for tree, rs in rows.items():
        med = {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        if args.commit_only:
            print(f"median {tree}: commit {med['commit_ms']:.2f} ms")
            continue
        print(
            f"median {tree}: overhead {med['overhead']:.1%}, merge {med['merge_ms']:.1f} ms, "
            f"commit {med['commit_ms']:.1f} ms, checkpoint {med['checkpoint_ms']:.2f} ms, "
            f"{med['evals_per_hour']:.0f} evals/hour"
        )


if __name__ == "__main__":
    main()

"""What one candidate costs on the SmolLM2 zoo (30 layers, 135M parameters), and where it goes.

    python bench/real_zoo_costs.py --zoo .cache/zoo-smollm2 --k 8 16 32 --dtype float32 bfloat16

Per configuration (items per skill ``k`` × engine dtype × the hf engine's ``share_prefix``:
``--share-prefix 16 0`` runs the template's system prompt once per batch, then per item), a
short search of ``experiments/smollm2-per-layer.yaml`` (its first, whole-model stage;
``--budget`` candidates, no reference points) runs in a fresh subprocess, which reports: seconds
per candidate, the merge's seconds and share of it, the engine's forward seconds, the
optimizer's ask, candidates per hour, and the worker's peak RSS. Configurations alternate over
``--repeat`` rounds; the medians are printed as a Markdown table. The load average is printed
before and after.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def one(
    zoo: Path, experiment: Path, k: int, dtype: str, budget: int, threads: int, share: int
) -> dict:
    sys.path.insert(0, str(HERE))
    import torch
    from search_bench import run_search

    torch.set_num_threads(threads)
    exp = yaml.safe_load(experiment.read_text())
    exp.pop("schedule", None)
    depth = 30
    exp.update(space_options={"granularity": depth}, budget=budget, reference_points=False)
    exp["objectives"] = [{**o, "estimator": f"subsample:{k}"} for o in exp["objectives"]]
    exp["workers"] = {**exp.get("workers", {}), "dtype": dtype, "threads": threads}
    exp["workers"]["engine_options"] = {"share_prefix": share}
    with tempfile.TemporaryDirectory(prefix="evomerge-real-costs-") as work:
        r = run_search(zoo, exp, Path(work), timing=True)
    t = r["timing"]
    n, wall = t["evaluations"], t["wall"]
    merge = t["worker"].get("merge", 0.0)
    return {
        "k": k,
        "dtype": dtype,
        "share_prefix": share,
        "evaluations": n,
        "s_per_candidate": wall / n,
        "merge_s": merge / n,
        "merge_share": merge / wall,
        "forward_s": t["forward"] / n,
        "ask_s": t["loop"].get("ask", 0.0) / n,
        "per_hour": 3600 * n / wall,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=ROOT / ".cache/zoo-smollm2")
    ap.add_argument("--experiment", type=Path, default=ROOT / "experiments/smollm2-per-layer.yaml")
    ap.add_argument("--k", type=int, nargs="+", default=[16])
    ap.add_argument("--dtype", nargs="+", default=["float32"])
    ap.add_argument("--budget", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--share-prefix",
        type=int,
        nargs="+",
        default=[16],
        help="the hf engine's share_prefix (0: the chat template's system prompt run per item)",
    )
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # k:dtype, in a subprocess
    args = ap.parse_args()
    if args.one:
        k, dtype, share = args.one.split(":")
        out = one(args.zoo, args.experiment, int(k), dtype, args.budget, args.threads, int(share))
        print("RESULT " + json.dumps(out), flush=True)
        return
    print(f"load average before: {os.getloadavg()}", flush=True)
    rows: dict[tuple[int, str, int], list[dict[str, Any]]] = {}
    for _ in range(args.repeat):
        for k, dtype, share in itertools.product(args.k, args.dtype, args.share_prefix):
            cmd = [sys.executable, __file__, "--one", f"{k}:{dtype}:{share}"]
            cmd += ["--zoo", str(args.zoo), "--experiment", str(args.experiment)]
            cmd += ["--budget", str(args.budget), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                sys.exit(f"{k}:{dtype}:{share} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(line[-1][7:])
            rows.setdefault((k, dtype, share), []).append(r)
            print(json.dumps(r), flush=True)
    print(f"load average after: {os.getloadavg()}")
    print(
        "\n| items per skill | dtype | shared prefix | s / candidate | merge s (share) |"
        " forward s | ask s | candidates / hour | peak RSS GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (k, dtype, share), rs in rows.items():
        skip = ("k", "dtype", "share_prefix")
        m = {key: statistics.median(r[key] for r in rs) for key in rs[0] if key not in skip}
        print(
            f"| {k} | {dtype} | {'once' if share else 'per item'} | {m['s_per_candidate']:.2f} | "
            f"{m['merge_s']:.2f} "
            f"({m['merge_share']:.0%}) | {m['forward_s']:.2f} | {m['ask_s']:.2f} | "
            f"{m['per_hour']:.0f} | {m['peak_rss_gib']:.2f} |"
        )


if __name__ == "__main__":
    main()

"""The merge method as a gene (``methods-per-layer``) against fixed DARE-TIES
(``dare_ties-per-layer``) at the same budget on the tiny zoo: hypervolume and best mean-skill.

    nice -n 10 python bench/methods_bench.py --zoo ~/.cache/evomerge/zoo --budget 48 --k 100 \\
        --seeds 0 1 2 --json methods.json

Same objectives and scoring as ``bench/search_bench.py`` (token accuracy on rev9, shift3, add1,
each on the same K held-out items); one layer per group (4 groups), optuna-tpe in batches of
``--step``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from search_bench import curve, experiment, hypervolume, run_search

SPACES = ("dare_ties-per-layer", "methods-per-layer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=Path.home() / ".cache" / "evomerge" / "zoo")
    ap.add_argument("--budget", type=int, default=48)
    ap.add_argument("--step", type=int, default=12)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--optimizer", default="optuna-tpe")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="evomerge-methods-"))
    opt: dict[str, Any] = {"name": args.optimizer}
    opt["batch" if args.optimizer.startswith(("optuna", "random")) else "pop_size"] = args.step
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    for space in SPACES:
        for seed in args.seeds:
            exp = {**experiment(opt, args.k, args.budget, seed), "space": space}
            exp["name"] = f"{exp['name']}-{space}"
            r = run_search(args.zoo, exp, work)
            v = r["values"]
            results.setdefault(space, []).append(
                {"seed": seed, "curve": curve(v, args.step), "wall": r["wall"]}
            )
            print(
                f"{space} seed {seed}: best mean {max(np.mean(x) for x in v):.4f}, "
                f"HV {hypervolume(v):.4f} ({r['wall']:.0f}s)",
                flush=True,
            )
    for space in SPACES:
        rows = results[space]
        hv = [r["curve"][-1]["hv"] for r in rows]
        best = [r["curve"][-1]["best_mean"] for r in rows]
        print(
            f"{space}: HV mean {np.mean(hv):.4f} ({', '.join(f'{h:.4f}' for h in hv)}); "
            f"best mean-skill {np.mean(best):.4f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

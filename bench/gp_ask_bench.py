"""Seconds optuna's GPSampler spends asking, with ``greenlet`` (a dependency) and without it.

    python bench/gp_ask_bench.py --trials 48 --repeats 3

Without ``greenlet`` optuna warns that its L-BFGS-B restarts run one after another; with it
they are batched (the same algorithm, the acquisition evaluated for every restart at
once). This measures what that is worth on the demo's shape of problem: three objectives,
24 parameters in [0, 1] (per layer, four layers, six coefficients), batches of 12 asked before
any is told. The objectives are a fixed smooth function with noise (seeded), so both variants
see the same kind of study; each variant runs in its own process (greenlet is imported once,
when optuna loads), alternating, so the two are measured side by side under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

GENES, OBJECTIVES, BATCH = 24, 3, 12


def _one(greenlet: bool, trials: int) -> dict[str, float | bool]:
    if not greenlet:
        sys.modules["greenlet"] = None  # type: ignore[assignment]  # its import then fails
    import numpy as np
    import optuna
    from optuna._gp import batched_lbfgsb

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(OBJECTIVES, GENES))
    space = {f"x{i}": optuna.distributions.FloatDistribution(0, 1) for i in range(GENES)}
    study = optuna.create_study(
        directions=["maximize"] * OBJECTIVES, sampler=optuna.samplers.GPSampler(seed=0)
    )
    wall = cpu = 0.0
    for _ in range(trials // BATCH):
        t0, c0 = time.perf_counter(), time.process_time()
        batch = [study.ask(space) for _ in range(BATCH)]
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        for t in batch:
            x = np.array([t.params[f"x{i}"] for i in range(GENES)])
            study.tell(t, list(np.tanh(w @ (x - 0.5)) + 0.05 * rng.normal(size=OBJECTIVES)))
    return {"greenlet": batched_lbfgsb._greenlet_imports.is_successful(), "wall": wall, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--only",
        choices=["on", "off"],
        help="one variant, in this process (JSON on stdout; e.g. under python -m cProfile)",
    )
    args = ap.parse_args()
    if args.only:
        print(json.dumps(_one(args.only == "on", args.trials)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(f"load average before: {os.getloadavg()}")
    times: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
    for _ in range(args.repeats):
        for variant in ("on", "off"):
            out = subprocess.run(
                [sys.executable, __file__, "--trials", str(args.trials), "--only", variant],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if variant == "on" and not r["greenlet"]:
                sys.exit("greenlet is not installed: pip install greenlet")
            times[variant].append((float(r["wall"]), float(r["cpu"])))
            print(
                f"greenlet {variant}: asks for {args.trials} trials: {r['wall']:.1f} s wall, "
                f"{r['cpu']:.1f} s CPU"
            )
    print(f"load average after: {os.getloadavg()}")
    for i, what in enumerate(("wall", "CPU")):
        on = statistics.median(t[i] for t in times["on"])
        off = statistics.median(t[i] for t in times["off"])
        print(f"median {what}: {off:.1f} s without, {on:.1f} s with greenlet ({off / on:.2f}x)")


if __name__ == "__main__":
    main()

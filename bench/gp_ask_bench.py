"""Seconds optuna's GPSampler spends asking, with ``greenlet`` (a dependency) and without it.

    python bench/gp_ask_bench.py --trials 48 --repeats 3
    python bench/gp_ask_bench.py --trials 48 --repeats 3 --batches 12 6   # greenlet on, per batch

Without ``greenlet`` optuna warns that its L-BFGS-B restarts run one after another; with it
they are batched (the same algorithm, the acquisition evaluated for every restart at
once). This measures what that is worth on the demo's shape of problem: three objectives,
24 parameters in [0, 1] (per layer, four layers, six coefficients), batches of 12 (``--batch``)
asked before any is told. ``--batches A B`` compares batch sizes instead, greenlet on: the
demo's batch of 6 shows the GPs new scores twice as often as 12, and conditions each ask on
fewer untold candidates. The objectives are a fixed smooth function with noise (seeded), so
both variants see the same kind of study; each variant runs in its own process (greenlet is
imported once, when optuna loads), alternating, so the two are measured side by side under the
same load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

GENES, OBJECTIVES = 24, 3


def _one(greenlet: bool, trials: int, batch_size: int) -> dict[str, float | bool]:
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
    for _ in range(trials // batch_size):
        t0, c0 = time.perf_counter(), time.process_time()
        batch = [study.ask(space) for _ in range(batch_size)]
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
    ap.add_argument("--batch", type=int, default=12, help="trials asked before any is told")
    ap.add_argument(
        "--batches", type=int, nargs=2, metavar=("A", "B"), help="compare two batch sizes instead"
    )
    args = ap.parse_args()
    if args.only:
        print(json.dumps(_one(args.only == "on", args.trials, args.batch)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # (label, greenlet variant, batch): the variants run alternately, one process each
    variants = (
        [(f"batch {b}", "on", b) for b in args.batches]
        if args.batches
        else [("greenlet on", "on", args.batch), ("greenlet off", "off", args.batch)]
    )
    print(f"load average before: {os.getloadavg()}")
    times: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in variants}
    for _ in range(args.repeats):
        for label, variant, batch in variants:
            cmd = [sys.executable, __file__, "--trials", str(args.trials), "--only", variant]
            out = subprocess.run(
                [*cmd, "--batch", str(batch)], capture_output=True, text=True, check=True, env=env
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if variant == "on" and not r["greenlet"]:
                sys.exit("greenlet is not installed: pip install greenlet")
            times[label].append((float(r["wall"]), float(r["cpu"])))
            print(
                f"{label}: asks for {args.trials} trials: {r['wall']:.1f} s wall, "
                f"{r['cpu']:.1f} s CPU"
            )
    print(f"load average after: {os.getloadavg()}")
    (a, *_), (b, *_) = variants
    for i, what in enumerate(("wall", "CPU")):
        ta = statistics.median(t[i] for t in times[a])
        tb = statistics.median(t[i] for t in times[b])
        print(f"median {what}: {a} {ta:.1f} s, {b} {tb:.1f} s ({tb / ta:.2f}x)")


if __name__ == "__main__":
    main()

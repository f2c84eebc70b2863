"""Seconds optuna's GPSampler spends asking, with ``greenlet`` (a dependency) and without it.

    python bench/gp_ask_bench.py --trials 48 --repeats 3
    python bench/gp_ask_bench.py --trials 48 --repeats 3 --batches 12 6   # greenlet on, per batch
    python bench/gp_ask_bench.py --trials 96 --shapes 6:2048:10 1:2048:10 1:512:4

``--shapes B:C:R …`` compares batch sizes and acquisition efforts (``C`` quasi-random candidates,
``R`` L-BFGS-B restarts: the ``optuna-gp`` options ``acquisition_candidates`` and
``acquisition_restarts``; optuna's defaults are 2048 and 10), greenlet on, and prints the best
mean objective each reached, so a cheaper ask is seen with what it costs in proposals.

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


def _one(
    greenlet: bool, trials: int, batch_size: int, candidates: int = 2048, restarts: int = 10
) -> dict[str, float | bool]:
    if not greenlet:
        sys.modules["greenlet"] = None  # type: ignore[assignment]  # its import then fails
    import numpy as np
    import optuna
    from optuna._gp import batched_lbfgsb

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(OBJECTIVES, GENES))
    space = {f"x{i}": optuna.distributions.FloatDistribution(0, 1) for i in range(GENES)}
    sampler = optuna.samplers.GPSampler(seed=0)
    sampler._n_preliminary_samples, sampler._n_local_search = candidates, restarts
    study = optuna.create_study(directions=["maximize"] * OBJECTIVES, sampler=sampler)
    wall = cpu = 0.0
    for _ in range(trials // batch_size):
        t0, c0 = time.perf_counter(), time.process_time()
        batch = [study.ask(space) for _ in range(batch_size)]
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        for t in batch:
            x = np.array([t.params[f"x{i}"] for i in range(GENES)])
            study.tell(t, list(np.tanh(w @ (x - 0.5)) + 0.05 * rng.normal(size=OBJECTIVES)))
    best = max(float(np.mean(t.values)) for t in study.trials)
    return {
        "greenlet": batched_lbfgsb._greenlet_imports.is_successful(),
        "wall": wall,
        "cpu": cpu,
        "best_mean": best,
    }


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
    ap.add_argument("--shapes", nargs="+", metavar="B:C:R", help="batch:candidates:restarts")
    ap.add_argument("--candidates", type=int, default=2048)
    ap.add_argument("--restarts", type=int, default=10)
    args = ap.parse_args()
    if args.only:
        one = _one(args.only == "on", args.trials, args.batch, args.candidates, args.restarts)
        print(json.dumps(one))
        return
    if args.shapes:
        _shapes(args.shapes, args.trials, args.repeats)
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


def _shapes(shapes: list[str], trials: int, repeats: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(f"load average before: {os.getloadavg()}")
    walls: dict[str, list[float]] = {s: [] for s in shapes}
    for _ in range(repeats):
        for shape in shapes:  # alternately, one process each
            b, c, r = shape.split(":")
            cmd = [sys.executable, __file__, "--trials", str(trials), "--only", "on"]
            cmd += ["--batch", b, "--candidates", c, "--restarts", r]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            one = json.loads(out.stdout.strip().splitlines()[-1])
            walls[shape].append(float(one["wall"]))
            print(
                f"batch {b}, {c} candidates, {r} restarts: asks for {trials} trials "
                f"{one['wall']:.1f} s wall; best mean objective {one['best_mean']:.3f}",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()}")
    first = statistics.median(walls[shapes[0]])
    for shape in shapes:
        m = statistics.median(walls[shape])
        print(f"median {shape}: {m:.1f} s ({m / first:.2f}x of {shapes[0]})")


if __name__ == "__main__":
    main()

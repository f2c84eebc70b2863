"""Optimizer checkpoints over a long run: size and time, the whole pickled study vs the flat
checkpoint (state + appended journal).

    python bench/optimizer_checkpoint_bench.py --evaluations 5000

No models: a cheap synthetic objective (3 objectives, 24 genes) goes through the optimizer and
the archive (each evaluation committed to SQLite), as in a search. After every batch both
checkpoints are taken from the same optimizer: ``state()`` (what every batch wrote before: the
in-memory study pickled whole) and ``checkpoint()`` (the state the search writes now, plus the
journal records appended). TPE is kept in its random start-up phase (``n_startup_trials`` above
the budget) so the run takes minutes, not hours: the study pickled is the same either way.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--evaluations", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--genes", type=int, default=24)
    ap.add_argument("--every", type=int, default=500, help="report every N evaluations")
    args = ap.parse_args()

    from evomerge.fileio import atomic_write_bytes
    from evomerge.genes import Gene
    from evomerge.optimize import make_optimizer
    from evomerge.run.archive import Archive, Evaluation
    from evomerge.run.loop import save_optimizer

    genes = [Gene(f"g{i}") for i in range(args.genes)]
    objectives = ["a", "b", "c"]
    print(f"load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="evomerge-ckpt-") as work:
        run = Path(work)
        archive = Archive(
            f"sqlite:///{run / 'archive.db'}",
            objectives=objectives,
            directions=["maximize"] * 3,
            genes=genes,
            experiment_hash="bench",
        )
        opt = make_optimizer(
            "optuna-tpe",
            genes,
            3,
            seed=0,
            options={"batch": args.batch, "n_startup_trials": 10 * args.evaluations},
        )
        centers = np.random.default_rng(0).random((3, args.genes))
        totals = {"old": 0.0, "new": 0.0, "commit": 0.0}
        print("| evaluations | whole study: size, time | flat: state size, journal size, time |")
        print("|---|---|---|")
        n = 0
        while n < args.evaluations:
            batch = opt.ask()
            losses = []
            for g in batch:
                values = [float(1 - np.mean((g - c) ** 2)) for c in centers]
                t0 = time.perf_counter()
                archive.record(Evaluation(f"r{n}", "method: linear\n", g.tolist(), values))
                totals["commit"] += time.perf_counter() - t0
                losses.append([-v for v in values])
                n += 1
            opt.tell(batch, losses)
            t0 = time.perf_counter()
            state = opt.state()
            atomic_write_bytes(run / "old.pkl", state)
            t1 = time.perf_counter()
            archive.sync()
            save_optimizer(run, opt)
            t2 = time.perf_counter()
            totals["old"] += t1 - t0
            totals["new"] += t2 - t1
            if n % args.every == 0:
                flat = (run / "optimizer.pkl").stat().st_size
                journal = (run / "optimizer.journal").stat().st_size
                print(
                    f"| {n} | {len(state) / 1e6:.2f} MB, {1000 * (t1 - t0):.1f} ms | "
                    f"{flat / 1e3:.1f} kB, {journal / 1e6:.2f} MB, {1000 * (t2 - t1):.1f} ms |",
                    flush=True,
                )
        print(
            f"total over {n} evaluations: whole-study checkpoints {totals['old']:.1f} s, flat "
            f"{totals['new']:.1f} s; archive commits {1000 * totals['commit'] / n:.2f} ms each"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

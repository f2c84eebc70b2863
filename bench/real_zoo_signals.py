"""Which search signal, on a search's few items, ranks recipes as held-out exact match does?

    python bench/real_zoo_signals.py --zoo .cache/zoo-smollm2 --seed 101 --recipes 12

Draws ``--recipes`` DARE-TIES recipes over the SmolLM2 zoo's experts (a third whole-model, one
weight in [0.2, 0.7] and one density in [0.5, 1] per expert; the rest per layer, Gaussian
around weight 0.45 / density 0.9, spread 0.15 or 0.3 in unit genes), scores each on the search
items of ``experiments/smollm2-per-layer.yaml`` (its ``subsample:16`` per skill, this seed) and
on ``--held`` of each skill's held-out items, under ``token_accuracy``, ``token_prob`` and
``acc`` (exact match) from one forward pass, and prints the Spearman correlation of each search
signal with held-out exact match, per skill and for the mean over skills.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METRICS = ("token_accuracy", "token_prob", "acc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=ROOT / ".cache/zoo-smollm2")
    ap.add_argument("--experiment", type=Path, default=ROOT / "experiments/smollm2-per-layer.yaml")
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--recipes", type=int, default=12)
    ap.add_argument("--held", type=int, default=100, help="held-out items per skill")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch
    from scipy import stats

    from evomerge.checkpoint import ModelSource
    from evomerge.evaluate.scoring import prepare, score_prepared_metrics
    from evomerge.evaluate.select import load_candidate, make_engine
    from evomerge.experiment import Experiment
    from evomerge.merge.materialize import plan
    from evomerge.space import SearchSpace, load_space
    from evomerge.workers.local import load_objectives

    raw = yaml.safe_load(args.experiment.read_text())
    raw["seed"] = args.seed
    exp = Experiment.parse(raw)
    torch.set_num_threads(exp.workers.threads or 2)
    paths = exp.resolved_sources(args.zoo)
    sources = {n: ModelSource(p, name=n) for n, p in paths.items()}
    obs = [o for o in load_objectives(exp, args.zoo) if o.scored]
    engine = make_engine("hf", paths["base"], batch_size=exp.workers.batch_size or 48)
    ids = {
        "search": [o.estimator.select(o.task.item_ids) for o in obs],
        "held": [list(o.held_out)[: args.held] for o in obs],
    }
    prep = {
        k: [prepare(engine, o.whole_task, i) for o, i in zip(obs, v, strict=True)]
        for k, v in ids.items()
    }
    spaces = {
        g: SearchSpace(load_space(exp.space, {"granularity": g}), sources=paths, base=exp.base)
        for g in (30, 1)
    }
    rng = np.random.default_rng(0)
    rows = []
    for i in range(args.recipes):
        if i < args.recipes // 3:
            sp = spaces[30]
            u = rng.uniform(0, 1, len(sp.genes))
            x = np.where(["weight" in g.name for g in sp.genes], 0.2 + 0.5 * u, 0.5 + 0.5 * u)
        else:
            sp = spaces[1]
            centre = np.array([0.45 if "weight" in g.name else 0.9 for g in sp.genes])
            spread = 0.15 if i < 2 * args.recipes // 3 else 0.3
            x = np.clip(centre + rng.normal(0, spread, len(centre)), 0, 1)
        t0 = time.perf_counter()
        recipe = sp.decode(x)
        load_candidate(engine, recipe, plan=plan(recipe, sources), device="cpu")
        row = {k: {m: [] for m in METRICS} for k in prep}  # split → metric → per-skill means
        for k, preps in prep.items():
            for p in preps:
                for m, res in score_prepared_metrics(engine, p, METRICS).items():
                    row[k][m].append(res.value)
        rows.append(row)
        print(f"recipe {i}: {time.perf_counter() - t0:.0f}s", json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=1))
    labels = [o.spec.label for o in obs]
    held_acc = [[r["held"]["acc"][j] for r in rows] for j in range(len(obs))]
    print(f"\nSpearman ρ with held-out exact match ({len(rows)} recipes, seed {args.seed}):")
    print(f"| search signal (16 items per skill) | {' | '.join(labels)} | mean over skills |")
    print("|---|" + "---:|" * (len(labels) + 1))
    for m in METRICS:
        per = [
            stats.spearmanr([r["search"][m][j] for r in rows], held_acc[j])[0]
            for j in range(len(obs))
        ]
        mean = stats.spearmanr(
            [np.mean(r["search"][m]) for r in rows], [np.mean(r["held"]["acc"]) for r in rows]
        )[0]
        print(f"| {m} | {' | '.join(f'{v:.2f}' for v in per)} | {mean:.2f} |")


if __name__ == "__main__":
    main()

"""Which front member is "the knee"? Knee rules compared on kept runs (issue 19).

    # every evaluation of each run kept (and the reference points: base, each expert, uniform)
    python bench/knee_rules.py collect --zoo ~/.cache/evomerge/zoo-qwen2 --seeds 0 1 2 3 4 \\
        --configs coarse sched-curve-gp --out runs-qwen2.json
    # per rule: does the per-layer knee beat coarse's on all items (48 and 96 evaluations)?
    python bench/knee_rules.py compare runs-qwen2.json

The runs are `bench/granularity_bench.py`'s experiments with reference points on (scored beside
the search, not trials: the evaluations are those of the script, digit for digit). Each rule
picks a knee from the first 48 / 96 evaluations' front (on their 200-item estimates); the knee
is scored on all 2000 items of each task (cached in ``OUT.full.json``) and its mean compared
with ``coarse``'s knee under the same rule. ``plain`` is `Archive.knee`'s rule for [0, 1]
scores, ``scaled`` the rule for other units (and the former rule for scores).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import granularity_bench as gb  # a sibling script, not a package

BASELINE, BUDGETS = "coarse", (48, 96)


def collect(zoo: Path, seeds: list[int], configs: list[str], out: Path, k: int) -> None:
    import torch
    import yaml

    from evomerge.checkpoint import num_layers
    from evomerge.hub import resolve_sources
    from evomerge.run import lifecycle as search
    from evomerge.run.reference_points import read_reference
    from evomerge.zoo import SOURCES

    torch.set_num_threads(1)
    depth = num_layers(resolve_sources(SOURCES, zoo=zoo)[0], "base")
    runs = json.loads(out.read_text()) if out.exists() else []  # resumable: a run at a time
    done = {(r["config"], r["seed"]) for r in runs}
    work = Path(tempfile.mkdtemp(prefix="evomerge-knee-"))
    for seed, config in itertools.product(seeds, configs):
        if (config, seed) in done:
            continue
        exp = gb.experiment(config, depth, max(BUDGETS), seed, f"subsample:{k}")
        if gb.by_budget(exp):  # its 48 would not be the first 48 of its 96
            raise SystemExit(f"{config}: a schedule counted from the budget's end is not kept")
        exp["reference_points"] = True
        path = work / f"{config}-{seed}.yaml"
        path.write_text(yaml.safe_dump(exp))
        s, budget = search.start(path, work / f"run-{config}-{seed}", zoo=zoo)
        try:
            s.run(budget)
            evs = [{"values": e.values, "recipe": e.recipe} for e in s.archive.evaluations if e.ok]
        finally:
            s.close()
        refs = read_reference(work / f"run-{config}-{seed}")[1]
        runs.append(
            {
                "zoo": str(zoo),
                "config": config,
                "seed": seed,
                "evals": evs,
                "refs": [{"kind": r.kind, "values": r.values} for r in refs],
            }
        )
        out.write_text(json.dumps(runs))
        print(f"{zoo.name} {config} seed {seed}: {len(evs)} evaluations", flush=True)
    shutil.rmtree(work, ignore_errors=True)


# -- rules: front F (rows: members, higher is better), the run's reference points → a row of F --
Rule = Callable[[np.ndarray, list[dict[str, Any]]], int]


def _experts(refs: list[dict[str, Any]]) -> list[list[float]]:
    """The scores of the base and of each expert (the uniform merge left out)."""
    return [r["values"] for r in refs if r["kind"] in ("base", "source")]


def _nearest(deficit: np.ndarray, f: np.ndarray) -> int:
    """The smallest deficit; ties: the better mean."""
    return int(np.argmin(deficit - 1e-9 * f.mean(axis=1)))


def _plain(f: np.ndarray, refs: list[dict[str, Any]]) -> int:
    from evomerge.objectives import knee_index

    return knee_index(-f, common_unit=True)


def _scaled(f: np.ndarray, refs: list[dict[str, Any]]) -> int:
    from evomerge.objectives import knee_index

    return knee_index(-f, common_unit=False)


def _with_experts(f: np.ndarray, refs: list[dict[str, Any]]) -> int:
    """Plain points; the ideal: the best of the front, the base and each expert."""
    ideal = np.max(
        [f.max(axis=0), *(r["values"] for r in refs if r["kind"] in ("base", "source"))], axis=0
    )
    return int(np.argmin(np.linalg.norm(ideal - f, axis=1)))


def _chebyshev(f: np.ndarray, refs: list[dict[str, Any]]) -> int:
    return _nearest(np.max(f.max(axis=0) - f, axis=1), f)


def _band(f: np.ndarray, refs: list[dict[str, Any]], n: int = 200) -> int:
    """Plain points; of the members within one binomial standard error (n items) of the
    nearest's distance, the best mean."""
    d = np.linalg.norm(f.max(axis=0) - f, axis=1)
    j = int(np.argmin(d))
    se = np.sqrt(np.clip(f[j] * (1 - f[j]), 1e-6, None) / n)
    band = float(np.linalg.norm((f.max(axis=0) - f[j]) / max(d[j], 1e-12) * se))
    near = np.flatnonzero(d <= d[j] + band)
    return int(near[np.argmax(f[near].mean(axis=1))])


def _marginal_utility(f: np.ndarray, refs: list[dict[str, Any]], steps: int = 60) -> int:
    """Branke et al. 2004: the member with the largest expected marginal utility over linear
    weights (a lattice on the simplex)."""
    m = f.shape[1]
    grid = [c for c in itertools.product(range(steps + 1), repeat=m - 1) if sum(c) <= steps]
    weights = np.array([[*c, steps - sum(c)] for c in grid], dtype=float) / steps
    u = weights @ f.T
    order = np.argsort(-u, axis=1)
    rows = np.arange(len(weights))
    margin = u[rows, order[:, 0]] - u[rows, order[:, 1]] if len(f) > 1 else np.ones(len(rows))
    return int(np.argmax(np.bincount(order[:, 0], weights=margin, minlength=len(f))))


def _hyperplane(f: np.ndarray, refs: list[dict[str, Any]]) -> int:
    """Das 1999 / Deb & Gupta 2011: furthest beyond the plane through the extreme members
    (three objectives)."""
    e = f[np.argmax(f, axis=0)]
    normal = np.cross(e[1] - e[0], e[2] - e[0])
    if not np.any(normal):
        return _plain(f, refs)
    normal = normal if normal.sum() >= 0 else -normal
    return int(np.argmax((f - e[0]) @ normal))


def _utopia(f: np.ndarray, refs: list[dict[str, Any]]) -> int:
    return int(np.argmin(np.linalg.norm(1.0 - f, axis=1)))


def _best_mean(f: np.ndarray, refs: list[dict[str, Any]]) -> int:
    """The L1 distance to the ideal: the best mean skill (not a compromise point)."""
    return int(np.argmax(f.mean(axis=1)))


def _normalized(f: np.ndarray, refs: list[dict[str, Any]]) -> int:
    """Each skill as a fraction of the best reference's (normalized accuracy), to all ones."""
    best = np.max(_experts(refs), axis=0)
    return _nearest(np.linalg.norm(np.clip(1 - f / best, 0, None), axis=1), f)


RULES: dict[str, Rule] = {
    "plain": _plain,
    "scaled": _scaled,
    "with-experts": _with_experts,
    "chebyshev": _chebyshev,
    "band": _band,
    "marginal-utility": _marginal_utility,
    "hyperplane": _hyperplane,
    "utopia": _utopia,
    "best-mean": _best_mean,
    "normalized": _normalized,
}


def _front(values: np.ndarray) -> list[int]:
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    return sorted(NonDominatedSorting().do(-values, only_non_dominated_front=True))


def compare(path: Path, rules: list[str]) -> None:
    runs = json.loads(path.read_text())
    cache_path = path.with_suffix(".full.json")
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    zoo = Path(runs[0]["zoo"])
    scorer: gb.FullScorer | None = None

    def full(recipe: str) -> list[float]:
        nonlocal scorer
        key = hashlib.sha1(recipe.encode()).hexdigest()
        if key not in cache:
            if scorer is None:
                from evomerge.checkpoint import num_layers
                from evomerge.hub import resolve_sources
                from evomerge.zoo import SOURCES

                scorer = gb.FullScorer(
                    zoo, num_layers(resolve_sources(SOURCES, zoo=zoo)[0], "base")
                )
            cache[key] = scorer(recipe)
            cache_path.write_text(json.dumps(cache))
        return cache[key]

    by = {(r["config"], r["seed"]): r for r in runs}
    pairs = sorted((s, c) for c, s in by if c != BASELINE and (BASELINE, s) in by)
    for name in rules:
        lines, wins = [], 0
        for (seed, config), budget in itertools.product(pairs, BUDGETS):
            knees = {}
            for c in (config, BASELINE):
                evs = by[(c, seed)]["evals"][:budget]
                values = np.array([e["values"] for e in evs])
                front = _front(values)
                pick = front[RULES[name](values[front], by[(c, seed)]["refs"])]
                knees[c] = np.mean(full(evs[pick]["recipe"]))
            won = knees[config] > knees[BASELINE]
            wins += won
            lines.append(
                f"  {config} seed {seed} @{budget}: {knees[config]:.4f} vs "
                f"{knees[BASELINE]:.4f} {'✓' if won else '✗'}"
            )
        print(f"{zoo.name}, rule {name}: the knee wins {wins} of {len(lines)}")
        print("\n".join(lines))
    _common_ideal(by, pairs)


def _common_ideal(by: dict[tuple[str, int], Any], pairs: list[tuple[int, str]]) -> None:
    """The knee rule's own measure across configurations: each (plain) knee's distance to one
    ideal point, each objective's best over both fronts."""
    wins = 0
    for (seed, config), budget in itertools.product(pairs, BUDGETS):
        knees, fronts = {}, []
        for c in (config, BASELINE):
            values = np.array([e["values"] for e in by[(c, seed)]["evals"][:budget]])
            f = values[_front(values)]
            fronts.append(f)
            knees[c] = f[_plain(f, [])]
        ideal = np.vstack(fronts).max(axis=0)
        wins += np.linalg.norm(ideal - knees[config]) < np.linalg.norm(ideal - knees[BASELINE])
    print(f"common ideal: the per-layer knee is the nearer in {wins} of {len(pairs) * 2}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--zoo", type=Path, default=Path.home() / ".cache/evomerge/zoo")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    c.add_argument("--configs", nargs="+", default=[BASELINE, "sched-curve-gp"])
    c.add_argument("--k", type=int, default=200)
    c.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("compare")
    p.add_argument("runs", type=Path)
    p.add_argument("--rules", nargs="+", choices=list(RULES), default=list(RULES))
    args = ap.parse_args()
    if args.cmd == "collect":
        collect(args.zoo, args.seeds, args.configs, args.out, args.k)
    else:
        compare(args.runs, args.rules)


if __name__ == "__main__":
    main()

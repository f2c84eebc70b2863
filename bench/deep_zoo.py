"""Builds a deeper tiny zoo: the default preset's training with N transformer layers instead of 4.

    python bench/deep_zoo.py ~/.cache/evomerge/zoo-qwen2-8l --layers 8 --arch qwen2

For measurements only (does per-layer search gain more over whole-model search as depth grows,
issue 19): the product's zoo presets stay as they are. The zoo records its preset as
``default-<N>l``, so a later call with the same arguments reuses it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from evomerge.zoo.build import PRESETS, build_zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--arch", default="qwen2")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    default = PRESETS["default"]
    name = f"default-{args.layers}l"
    PRESETS[name] = dataclasses.replace(
        default, shape=dataclasses.replace(default.shape, num_layers=args.layers)
    )
    report = build_zoo(args.out_dir, name, args.seed, arch=args.arch, log=print)
    for model, scores in report.scores.items():
        print(model, {task: round(s.token_accuracy, 3) for task, s in scores.items()})


if __name__ == "__main__":
    main()

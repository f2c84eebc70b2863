"""The layer prior AP-BMM builds from the sources themselves: how far each expert's layers moved
from the base (relative Frobenius norm of the weight difference, per decoder layer).

    python bench/real_zoo_prior.py --zoo .cache/zoo-smollm2 --json bench/results/smollm2-prior.json

A prior can only group layers, or seed and scale a per-layer search, where it differs between
layers; the ratio of the most- to the least-moved layer per expert says whether it does.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from safetensors import safe_open

LAYER = re.compile(r"\.layers\.(\d+)\.")


def relative_deltas(base_dir: Path, expert_dir: Path) -> tuple[list[float], dict[str, float]]:
    """Per layer, ‖θ_expert − θ_base‖ / ‖θ_base‖ over the layer's tensors; the same for each
    tensor outside the layers (embeddings, final norm)."""
    base = safe_open(str(next(base_dir.glob("*.safetensors"))), "pt")
    expert = safe_open(str(next(expert_dir.glob("*.safetensors"))), "pt")
    moved: dict[int, float] = {}
    size: dict[int, float] = {}
    outside: dict[str, float] = {}
    for key in base.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
        b = base.get_tensor(key).double()
        d = float((expert.get_tensor(key).double() - b).norm() ** 2)
        n = float(b.norm() ** 2)
        m = LAYER.search(key)
        if m:
            layer = int(m.group(1))
            moved[layer] = moved.get(layer, 0.0) + d
            size[layer] = size.get(layer, 0.0) + n
        else:
            outside[key] = (d / n) ** 0.5 if n else float("nan")
    return [(moved[la] / size[la]) ** 0.5 for la in sorted(moved)], outside


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=Path(".cache/zoo-smollm2"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = {}
    for expert in sorted((args.zoo / "experts").iterdir()):
        per_layer, outside = relative_deltas(args.zoo / "base", expert)
        rel = np.asarray(per_layer)
        out[expert.name] = {"per_layer": per_layer, "outside": outside}
        print(
            f"{expert.name:8s} per layer ×1e-3: min {rel.min() * 1e3:.2f} (layer {rel.argmin()}), "
            f"max {rel.max() * 1e3:.2f} (layer {rel.argmax()}), "
            f"max/min {rel.max() / rel.min():.2f}; "
            + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in outside.items())
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

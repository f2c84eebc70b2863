"""Validate materialization on CUDA: same tensors as on the CPU, and throughput on the GPU.

Needs a CUDA GPU; run on one with `python bench/gpu_check.py --out-json gpu.json`.
Prints, per method, the max abs difference between CPU and CUDA merges of a tiny Llama family,
then bytes-read throughput of linear and dare_ties merges of a synthetic bf16 model on the GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from models import make_family

from evomerge.merge.materialize import materialize, plan
from evomerge.recipe import Recipe

DETERMINISTIC = {
    "linear": ({"ft0": {"weight": 0.5}, "ft1": {"weight": [0.2, 0.9]}}, {}),
    "slerp": ({"ft0": {}}, {"t": [0.1, 0.7]}),
    "task_arithmetic": ({"ft0": {"weight": 0.7}, "ft1": {"weight": -0.3}}, {"lambda": 0.8}),
    "ties": ({"ft0": {"weight": 0.7, "density": 0.4}, "ft1": {"weight": 0.5, "density": 0.6}}, {}),
    "breadcrumbs": ({"ft0": {"weight": 0.7, "density": 0.5}, "ft1": {"weight": 0.5}}, {}),
    "model_stock": ({"ft0": {}, "ft1": {}, "ft2": {}}, {}),
    "dare_ties": (
        {"ft0": {"weight": 0.7, "density": 0.5}, "ft1": {"weight": 0.5, "density": 0.5}},
        {},
    ),
}


def recipe(fam: dict[str, Path], method: str, models: dict, params: dict) -> Recipe:
    sources: dict = {k: {"path": str(fam[k]), "parameters": v} for k, v in models.items()}
    base = None if method == "linear" else "base"
    if base:
        sources["base"] = str(fam["base"])
    return Recipe.from_dict(
        {
            "sources": sources,
            "method": method,
            "base": base,
            "parameters": params,
            "dtype": "float32",
        }
    )


def synthetic(root: Path, hidden: int, layers: int, inter: int, vocab: int) -> dict[str, Path]:
    g = torch.Generator().manual_seed(0)
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (hidden, hidden),
                p + "self_attn.k_proj.weight": (hidden, hidden),
                p + "self_attn.v_proj.weight": (hidden, hidden),
                p + "self_attn.o_proj.weight": (hidden, hidden),
                p + "mlp.gate_proj.weight": (inter, hidden),
                p + "mlp.up_proj.weight": (inter, hidden),
                p + "mlp.down_proj.weight": (hidden, inter),
                p + "input_layernorm.weight": (hidden,),
                p + "post_attention_layernorm.weight": (hidden,),
            }
        )
    base = {k: torch.randn(s, generator=g).mul_(0.02).to(torch.bfloat16) for k, s in shapes.items()}
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": inter,
        "vocab_size": vocab,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
    }
    out = {}
    for name in ("base", "ft0", "ft1", "ft2"):
        d = root / name
        d.mkdir(parents=True)
        state = (
            base
            if name == "base"
            else {
                k: (v.float() + 0.002 * torch.randn(v.shape, generator=g)).to(torch.bfloat16)
                for k, v in base.items()
            }
        )
        save_file(state, d / "model.safetensors")
        (d / "config.json").write_text(json.dumps(cfg))
        out[name] = d
    return out


def timed(mp, device: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _name, _t in materialize(mp, device):
            pass
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-json", type=Path)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    report: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cpu_vs_cuda": {},
        "throughput": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        fam = make_family(Path(tmp) / "fam")
        for method, (models, params) in DETERMINISTIC.items():
            r = recipe(fam, method, models, params)
            cpu = dict(materialize(plan(r), "cpu"))
            cuda = dict(materialize(plan(r), "cuda"))
            again = dict(materialize(plan(r), "cuda"))
            diff = max((cpu[k] - cuda[k].cpu()).abs().max().item() for k in cpu)
            repro = all(torch.equal(cuda[k], again[k]) for k in cuda)
            report["cpu_vs_cuda"][method] = {"max_abs_diff": diff, "cuda_reproducible": repro}
            print(f"{method:>16}: cpu vs cuda max |diff| {diff:.2e}   cuda repeatable: {repro}")
        syn = synthetic(Path(tmp) / "syn", args.hidden, args.layers, args.intermediate, args.vocab)
        srcs = {k: str(v) for k, v in syn.items()}
        lin = Recipe.from_dict(
            {
                "sources": {k: srcs[k] for k in ("ft0", "ft1", "ft2")},
                "method": "linear",
                "dtype": "bfloat16",
            }
        )
        dare = Recipe.from_dict(
            {
                "sources": {
                    "base": srcs["base"],
                    **{
                        k: {"path": srcs[k], "parameters": {"weight": 0.5, "density": 0.5}}
                        for k in ("ft0", "ft1", "ft2")
                    },
                },
                "method": "dare_ties",
                "base": "base",
                "dtype": "bfloat16",
            }
        )
        for name, r in (("linear x3", lin), ("dare_ties x3 + base", dare)):
            mp = plan(r)
            timed(mp, "cuda", 1)  # warm page cache and CUDA
            s = timed(mp, "cuda")
            gbs = mp.bytes_read / s / 1e9
            report["throughput"][name] = {"bytes_read": mp.bytes_read, "seconds": s, "GB_s": gbs}
            print(f"{name:>20}: {mp.bytes_read / 1e9:.2f} GB read in {s:.2f}s = {gbs:.2f} GB/s")
    if args.out_json:
        args.out_json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

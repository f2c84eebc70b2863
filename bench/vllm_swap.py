"""Seconds per candidate: swapped into a resident vLLM engine vs a new engine on a merged
checkpoint written to disk (what Mergenetic does), measured side by side in one run.

- swap: one ``VLLMEngine`` stays up; per candidate ``load_recipe`` sends the recipe, the worker
  merges it in memory and reloads it in place, the prefix cache is reset (timed: the whole call);
- restart: per candidate ``merge_to_dir`` writes the merged checkpoint, a new ``vllm.LLM`` starts
  on it, answers one probe and is shut down (timed: write, start, shutdown; "to ready" = write +
  start).

The same probe (a log-likelihood request) is scored after each swap and on each restarted
engine, and the two must agree, so both paths load the same weights. Load averages (``uptime``)
are printed before and after: on a shared machine they say how much the figures can be trusted.

CPU mode (default; ``make test-vllm``'s venv): the unit tiny zoo, float32.

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python bench/vllm_swap.py --candidates 8 --restarts 2

GPU mode: a 7B-shaped Llama (hidden 4096, 32 layers, intermediate 11008, vocab 32000), random
bf16 weights, three sources (a base and two "fine-tunes": base + small random deltas), written
once under ``--work-dir`` (about 40 GB; ``--layers`` shrinks it); needs vLLM 0.33 on a CUDA GPU.

    python bench/vllm_swap.py --mode gpu --work-dir /tmp/vllm7b --candidates 8 --restarts 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LLAMA_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    max_position_embeddings=4096,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--zoo", type=Path, default=ROOT / ".cache" / "zoo-unit", help="unit zoo")
    ap.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "bench" / "vllm_swap")
    ap.add_argument("--layers", type=int, default=32, help="GPU mode: depth of the 7B shape")
    ap.add_argument("--candidates", type=int, default=8, help="swaps into the resident engine")
    ap.add_argument("--restarts", type=int, default=2, help="write-and-restart candidates")
    ap.add_argument("--gpu-memory-utilization", type=float, default=None)
    ap.add_argument("--out-json", type=Path, default=None)
    return ap.parse_args(argv)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


# -- sources ------------------------------------------------------------------------------------
def unit_zoo(zoo: Path) -> Path:
    if not (zoo / "base" / "config.json").exists():
        from evomerge.zoo import build_zoo

        print(f"building the unit zoo at {zoo}", flush=True)
        build_zoo(zoo, preset="unit", seed=0)
    return zoo


def llama_7b_sources(work: Path, layers: int, tokenizer_from: Path) -> dict[str, Path]:
    """Base + two fine-tunes of a 7B-shaped Llama, random bf16 weights, written once."""
    import torch
    from transformers import LlamaConfig

    from evomerge.checkpoint import CheckpointWriter

    names = ("base", "ft0", "ft1")
    out = {n: work / n for n in names}
    if all((p / "config.json").exists() for p in out.values()):
        return out
    cfg = LlamaConfig(num_hidden_layers=layers, tie_word_embeddings=False, **LLAMA_7B)
    cfg_dict = {**cfg.to_dict(), "architectures": ["LlamaForCausalLM"], "dtype": "bfloat16"}
    shapes = {
        "model.embed_tokens.weight": (cfg.vocab_size, cfg.hidden_size),
        "model.norm.weight": (cfg.hidden_size,),
        "lm_head.weight": (cfg.vocab_size, cfg.hidden_size),
    }
    h, i, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * cfg.head_dim
    per_layer = {
        "self_attn.q_proj.weight": (h, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, h),
        "mlp.gate_proj.weight": (i, h),
        "mlp.up_proj.weight": (i, h),
        "mlp.down_proj.weight": (h, i),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
    }
    for n in range(layers):
        shapes.update({f"model.layers.{n}.{k}": v for k, v in per_layer.items()})
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    writers = {n: CheckpointWriter(out[n], config=cfg_dict, overwrite=True) for n in names}
    gen = torch.Generator(dev).manual_seed(0)
    print(f"writing three {layers}-layer 7B-shaped sources under {work}", flush=True)
    for name, shape in shapes.items():
        if len(shape) == 1:
            base = torch.ones(shape, device=dev)
        else:
            base = torch.randn(shape, device=dev, generator=gen) * 0.02
        writers["base"].add(name, base.bfloat16())
        for n in names[1:]:
            delta = torch.randn(shape, device=dev, generator=gen) * 0.002
            writers[n].add(name, (base + delta).bfloat16())
    for w in writers.values():
        w.finish(tokenizer_from=tokenizer_from)
    return out


def recipes(sources: dict[str, Path], n: int, dtype: str) -> list[Any]:
    """``n`` candidates over the sources: ties, linear and dare_ties in turn, varying weights."""
    from evomerge.recipe import Recipe

    base, *experts = sources
    out = []
    for k in range(n):
        method = ("ties", "linear", "dare_ties")[k % 3]
        w = 0.2 + 0.6 * (k % 5) / 4
        srcs: dict[str, Any] = {
            e: {"path": str(sources[e]), "parameters": {"weight": w if j == 0 else 1 - w}}
            for j, e in enumerate(experts[:2])
        }
        if method != "linear":
            for j, e in enumerate(experts[:2]):
                srcs[e]["parameters"]["density"] = 0.5 + 0.1 * j
            srcs[base] = str(sources[base])
        data = {"sources": srcs, "method": method, "dtype": dtype, "seed": k}
        if method != "linear":
            data["base"] = base
        out.append(Recipe.from_dict(data))
    return out


# -- the two paths --------------------------------------------------------------------------------
PROBE_CONTEXT, PROBE_CONTINUATION = (3, 5, 7, 9, 11), (13, 15, 17)


def swap_path(model_dir: Path, cands: list[Any], settings: dict[str, Any]) -> dict[str, Any]:
    from evomerge.evaluate.tasks import LoglikelihoodRequest
    from evomerge.evaluate.vllm import VLLMEngine

    probe = [LoglikelihoodRequest(PROBE_CONTEXT, PROBE_CONTINUATION)]
    t0 = time.perf_counter()
    eng = VLLMEngine(model_dir, **settings)
    start = time.perf_counter() - t0
    swaps, probes = [], []
    try:
        for r in cands:
            t0 = time.perf_counter()
            eng.load_recipe(r)
            swaps.append(time.perf_counter() - t0)
            probes.append(eng.loglikelihood(probe)[0].logprob)
            print(f"  swap {len(swaps)}: {swaps[-1]:.3f}s ({r.method})", flush=True)
        rebuilds = eng.rebuilds
    finally:
        t0 = time.perf_counter()
        eng.close()
        shutdown = time.perf_counter() - t0
    return {
        "engine_start_s": start,
        "swap_s": swaps,
        "probe_logprob": probes,
        "shutdown_s": shutdown,
        "rebuilds": rebuilds,
    }


def restart_path(
    cands: list[Any], settings: dict[str, Any], work: Path, vllm: Any
) -> dict[str, Any]:
    from evomerge.evaluate.vllm.engine import _shutdown, llm_kwargs
    from evomerge.evaluate.vllm.transport import loglikelihood_sampling, parse_prompt_logprobs
    from evomerge.merge.materialize import merge_to_dir

    rows = []
    params = vllm.SamplingParams(**loglikelihood_sampling())
    prompt = {"prompt_token_ids": [*PROBE_CONTEXT, *PROBE_CONTINUATION]}
    for k, r in enumerate(cands):
        out = work / f"candidate-{k}"
        t0 = time.perf_counter()
        merge_to_dir(r, out, overwrite=True)
        t1 = time.perf_counter()
        kw = llm_kwargs(out, **settings)
        kw.pop("worker_extension_cls")  # a plain engine, as Mergenetic starts it
        llm = vllm.LLM(**kw)
        t2 = time.perf_counter()
        o = llm.generate([prompt], params, use_tqdm=False)[0]
        lp = parse_prompt_logprobs(o.prompt_logprobs, len(PROBE_CONTEXT), PROBE_CONTINUATION)
        t3 = time.perf_counter()
        _shutdown(llm)
        del llm
        gc.collect()
        t4 = time.perf_counter()
        shutil.rmtree(out)
        rows.append(
            {"write_s": t1 - t0, "start_s": t2 - t1, "probe_s": t3 - t2, "shutdown_s": t4 - t3}
        )
        rows[-1]["probe_logprob"] = lp.logprob
        print(f"  restart {k + 1}: write {t1 - t0:.2f}s, start {t2 - t1:.1f}s", flush=True)
    return {"candidates": rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import vllm
    except ImportError:
        from evomerge.evaluate.vllm import INSTALL_HINT

        print(INSTALL_HINT, file=sys.stderr)
        return 2
    import torch

    if args.mode == "gpu" and not torch.cuda.is_available():
        print("--mode gpu needs a CUDA GPU", file=sys.stderr)
        return 2
    zoo = unit_zoo(args.zoo.resolve())
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.mode == "cpu":
        sources = {"base": zoo / "base", **{p.name: p for p in sorted((zoo / "experts").iterdir())}}
        dtype = "float32"
        settings: dict[str, Any] = dict(
            dtype=dtype,
            enforce_eager=True,
            gpu_memory_utilization=args.gpu_memory_utilization or 0.1,
        )
    else:
        sources = llama_7b_sources(work, args.layers, zoo / "base")
        dtype = "bfloat16"
        settings = dict(
            dtype=dtype,
            gpu_memory_utilization=args.gpu_memory_utilization or 0.5,
            max_model_len=2048,
        )
    cands = recipes(sources, max(args.candidates, args.restarts), dtype)
    load_before = uptime()
    print(f"before: {load_before}", flush=True)
    print(f"swap path: one resident engine, {args.candidates} candidates", flush=True)
    swap = swap_path(sources["base"], cands[: args.candidates], settings)
    print(f"restart path: write + new engine, {args.restarts} candidates", flush=True)
    restart = restart_path(cands[: args.restarts], settings, work, vllm)
    load_after = uptime()
    print(f"after:  {load_after}")

    agree = [
        abs(a["probe_logprob"] - b)
        for a, b in zip(restart["candidates"], swap["probe_logprob"], strict=False)
    ]
    tol = 1e-3 if dtype == "float32" else 5e-2
    s = swap["swap_s"]
    rc = restart["candidates"]
    ready = [c["write_s"] + c["start_s"] for c in rc]
    print()
    print(f"mode {args.mode}, vllm {getattr(vllm, '__version__', '?')}, dtype {dtype}")
    print(f"resident engine start (once): {swap['engine_start_s']:.1f}s")
    print(
        f"swap per candidate:    median {statistics.median(s):.3f}s "
        f"(min {min(s):.3f}, max {max(s):.3f}, n={len(s)})"
    )
    if rc:
        print(
            f"restart per candidate: median {statistics.median(ready):.1f}s to ready "
            f"(write {statistics.median(c['write_s'] for c in rc):.2f}s + start "
            f"{statistics.median(c['start_s'] for c in rc):.1f}s), shutdown "
            f"{statistics.median(c['shutdown_s'] for c in rc):.1f}s, n={len(rc)}"
        )
        print(f"ratio restart/swap: {statistics.median(ready) / statistics.median(s):.0f}x")
        print(f"probe agreement (swap vs restart, same recipe): max |Δlogprob| {max(agree):.1e}")
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(
            json.dumps(
                {
                    "mode": args.mode,
                    "vllm": getattr(vllm, "__version__", "?"),
                    "torch": torch.__version__,
                    "load_before": load_before,
                    "load_after": load_after,
                    "swap": swap,
                    "restart": restart,
                },
                indent=2,
            )
        )
    return 0 if all(d <= tol for d in agree) else 1


if __name__ == "__main__":
    sys.exit(main())

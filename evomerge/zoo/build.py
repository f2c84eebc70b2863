"""Building the zoo: a base, one expert per skill, held-out task files and a report of accuracies.

The recipe follows shared/ZOO-NOTES.md ("third regime"): the base sees the generic tasks plus a
1% share of each skill, so it is weak but not blind on them; each expert is fine-tuned from it
with 10% replay of the generic tasks. Then a plain average of the experts lands between base and
experts, which is what makes merge recipes worth searching. The report records the figures,
because small shares sit near a phase transition and other seeds may land elsewhere.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evomerge.errors import EvomergeError, OutputExistsError
from evomerge.evaluate.engines import Engine
from evomerge.evaluate.hf import HFEngine
from evomerge.fileio import atomic_write_text, replace_dir
from evomerge.merge.methods import Params, get_method
from evomerge.zoo.evaluate import engine_scores, model_engine
from evomerge.zoo.skills import (
    CROSS_TASKS,
    GENERIC_TASKS,
    SKILLS,
    TASKS,
    TaskItem,
    held_out_items,
    read_items,
    write_items,
)
from evomerge.zoo.tokenizer import build_tokenizer, save_tokenizer
from evomerge.zoo.train import ARCHES, ModelShape, TrainPlan, new_model, train

REPORT_FILE = "zoo.json"
_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
FORMAT_VERSION = 1
AVERAGE = "uniform_average"


@dataclass(frozen=True)
class Preset:
    """How big and how long: everything a build depends on besides the seed."""

    shape: ModelShape
    base_steps: int
    base_lr: float
    skill_share: float  # share of each skill in the base's pretraining mixture
    expert_steps: int
    expert_lr: float
    replay: float  # share of generic tasks while fine-tuning an expert
    batch_size: int
    warmup: int
    held_out: int  # items written per task file
    eval_items: int  # items per task scored for the report
    eval_batch_size: int = 256
    threads: int | None = None  # torch threads while building; None: the cores we may use (<= 8)


PRESETS: dict[str, Preset] = {
    # ~2.5 minutes on 2 CPU cores; measured figures are in the zoo's report.
    "default": Preset(
        shape=ModelShape(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=256),
        base_steps=600,
        base_lr=2e-3,
        skill_share=0.01,
        expert_steps=250,
        expert_lr=3e-4,
        replay=0.1,
        batch_size=64,
        warmup=50,
        held_out=2000,
        eval_items=200,
    ),
    # A few seconds, for tests: same layout and code paths, smaller model, figures not meaningful.
    "unit": Preset(
        shape=ModelShape(hidden_size=64, num_layers=4, num_heads=2, intermediate_size=128),
        base_steps=160,
        base_lr=3e-3,
        skill_share=0.05,
        expert_steps=40,
        expert_lr=1e-3,
        replay=0.1,
        batch_size=32,
        warmup=10,
        held_out=200,
        eval_items=100,
        # One thread: nearly as fast for this size, and immune to the spin-wait slowdown of
        # OpenMP threads when tests or other jobs share the cores.
        threads=1,
    ),
}


class Score(BaseModel):
    """One model on one task: greedy exact match, teacher-forced token accuracy, mean log-prob."""

    model_config = ConfigDict(frozen=True)

    exact_match: float
    token_accuracy: float
    mean_logprob: float


class TaskInfo(BaseModel):
    """A held-out task file: where it is, what it asks, how many items it holds."""

    model_config = ConfigDict(frozen=True)

    file: str
    kind: str
    prefix: str
    description: str
    items: int


class ZooReport(BaseModel):
    """What `zoo.json` holds: how the zoo was built and how well each model does each task.

    `models` maps a model name to its directory relative to the zoo (`base`, `experts/<skill>`);
    `scores` also holds `uniform_average`, the plain parameter average of the experts, which is
    not saved: it is the zoo's sanity check (neither ~0 nor expert level on every skill).
    """

    model_config = ConfigDict(frozen=True)

    format: int = FORMAT_VERSION
    preset: str
    seed: int
    arch: str = "llama"  # the model family (zoo.json files written before qwen2 lack it)
    built_at: str
    build_seconds: float
    skills: list[str]
    cross_tasks: list[str]
    tasks: dict[str, TaskInfo]
    models: dict[str, str]
    eval_items: int
    eval_batch_size: int
    scores: dict[str, dict[str, Score]]
    training: dict[str, object]
    versions: dict[str, str]

    def table(self) -> str:
        """The scores as a plain text table: one row per model, exact / token per task."""
        tasks = [*self.skills, *self.cross_tasks]
        name_w = max(len(m) for m in self.scores) + 2
        head = "model".ljust(name_w) + "".join(t.center(14) for t in tasks)
        sub = "".ljust(name_w) + "".join("exact  token ".rjust(14) for _ in tasks)
        lines = [head, sub]
        for model, row in self.scores.items():
            cells = "".join(f"{row[t].exact_match:7.2f}{row[t].token_accuracy:7.2f}" for t in tasks)
            lines.append(model.ljust(name_w) + cells)
        note = (
            f"({self.arch} {self.preset} preset, seed {self.seed}, "
            f"first {self.eval_items} items per task)"
        )
        return "\n".join([*lines, note])


def zoo_is_built(path: Path) -> bool:
    """Whether `path` holds a complete zoo: a readable report and every file it names."""
    path = Path(path)
    try:
        report = load_zoo_report(path)
    except (OSError, ValueError, EvomergeError):
        return False
    needed = [path / info.file for info in report.tasks.values()]
    for rel in report.models.values():
        needed += [path / rel / n for n in ("config.json", "model.safetensors", "tokenizer.json")]
    return all(p.is_file() for p in needed)


def load_zoo_report(path: Path) -> ZooReport:
    """Read `<zoo>/zoo.json`."""
    file = Path(path) / REPORT_FILE
    try:
        return ZooReport.model_validate_json(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvomergeError(f"{file}: no zoo report here (build one with build_zoo)") from None


def load_task_items(zoo_dir: Path, task: str, limit: int | None = None) -> list[TaskItem]:
    """The held-out items of one task of a built zoo (the first `limit` if given)."""
    return read_items(Path(zoo_dir) / "tasks" / f"{task}.jsonl", limit)


def average_state_dicts(
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Plain parameter average (the uniform merge): the ``linear`` merge method with equal
    weights, summed in list order, in float32."""
    linear = get_method("linear")
    equal = Params({"weight": [1.0] * len(state_dicts)}, {"normalize": True})
    return {
        key: linear([sd[key].detach().float() for sd in state_dicts], None, equal)
        for key in state_dicts[0]
    }


def score_model(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Mapping[str, list[TaskItem]],
    batch_size: int,
) -> dict[str, Score]:
    """A model's Score on each task, as the report computes it (tests re-run this)."""
    return _score(model_engine(model, tokenizer, batch_size), items)


def _score(engine: Engine, items: Mapping[str, list[TaskItem]]) -> dict[str, Score]:
    """The resident weights' Score on each task."""
    out = {}
    for task, rows in items.items():
        s = engine_scores(engine, rows, task)
        n = len(rows)
        out[task] = Score(
            exact_match=sum(s.exact_match) / n,
            token_accuracy=sum(s.token_accuracy) / n,
            mean_logprob=sum(s.mean_logprob) / n,
        )
    return out


@contextlib.contextmanager
def _quiet_and_threaded(threads: int | None) -> Iterator[None]:
    """Use `threads` torch threads (default: the cores this process may use, at most 8: more only
    adds overhead here), and hide transformers' per-save progress bars in the build log."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    before = torch.get_num_threads()
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            threads = os.cpu_count() or 1
    torch.set_num_threads(max(1, min(threads, 8)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if bars:
            hf_logging.enable_progress_bar()


def _mixture_for_base(p: Preset) -> dict[str, float]:
    generic = (1.0 - p.skill_share * len(SKILLS)) / len(GENERIC_TASKS)
    return {**dict.fromkeys(GENERIC_TASKS, generic), **dict.fromkeys(SKILLS, p.skill_share)}


def _mixture_for_expert(p: Preset, skill: str) -> dict[str, float]:
    return {**dict.fromkeys(GENERIC_TASKS, p.replay / len(GENERIC_TASKS)), skill: 1.0 - p.replay}


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    model.save_pretrained(path)  # safetensors (the default, and the only format in transformers 5)
    save_tokenizer(tokenizer, path)


def measured_report(plan: Any, training: dict[str, object], **fields: Any) -> ZooReport:
    """A zoo's report, stamped now: the plan it was trained and scored by (with ``training``'s
    extras and the thread count, which sets the speed), and the library versions."""
    return ZooReport(
        built_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        eval_items=plan.eval_items,
        eval_batch_size=plan.eval_batch_size,
        training={**asdict(plan), **training, "threads": torch.get_num_threads()},
        versions=_versions(),
        **fields,
    )


def _versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _build_into(
    work: Path, preset_name: str, seed: int, arch: str, log: Callable[[str], None]
) -> ZooReport:
    p = PRESETS[preset_name]
    t0 = time.perf_counter()
    tokenizer = build_tokenizer()

    (work / "tasks").mkdir(parents=True)
    task_names = [*SKILLS, *CROSS_TASKS]
    tasks: dict[str, TaskInfo] = {}
    scored: dict[str, list[TaskItem]] = {}
    for name in task_names:
        items = held_out_items(name, p.held_out, seed)
        rel = f"tasks/{name}.jsonl"
        write_items(work / rel, items)
        spec = TASKS[name]
        tasks[name] = TaskInfo(
            file=rel,
            kind=spec.kind,
            prefix=spec.prefix,
            description=spec.description,
            items=len(items),
        )
        scored[name] = items[: p.eval_items]
    log(f"wrote {len(task_names)} task files ({p.held_out} held-out items each)")

    base = new_model(p.shape, seed, arch)
    base_plan = TrainPlan(_mixture_for_base(p), p.base_steps, p.base_lr, p.batch_size, p.warmup)
    train(base, base_plan, seed=1000 * seed, log=log, label="base")
    _save(base, tokenizer, work / "base")
    models = {"base": "base"}
    states: dict[str, Mapping[str, torch.Tensor]] = {"base": base.state_dict()}
    experts = []
    for i, skill in enumerate(SKILLS):
        expert = copy.deepcopy(base)
        plan = TrainPlan(
            _mixture_for_expert(p, skill), p.expert_steps, p.expert_lr, p.batch_size, p.warmup
        )
        train(expert, plan, seed=1000 * seed + 1 + i, log=log, label=f"expert {skill}")
        rel = f"experts/{skill}"
        _save(expert, tokenizer, work / rel)
        models[rel] = rel
        states[rel] = expert.state_dict()
        experts.append(states[rel])
    states[AVERAGE] = average_state_dicts(experts)

    # One resident engine (the saved base), each model's weights swapped in, as in a search.
    engine = HFEngine(work / "base", batch_size=p.eval_batch_size)
    scores = {}
    for name, state in states.items():
        engine.load_weights(state.items())
        scores[name] = _score(engine, scored)
    log("evaluated base, experts and their uniform average")

    report = measured_report(
        p,
        {"base_mixture": base_plan.weights},
        preset=preset_name,
        seed=seed,
        arch=arch,
        build_seconds=round(time.perf_counter() - t0, 2),
        skills=list(SKILLS),
        cross_tasks=list(CROSS_TASKS),
        tasks=tasks,
        models=models,
        scores=scores,
    )
    atomic_write_text(work / "README.md", _readme(report))
    # The report goes last: its presence marks a complete zoo.
    atomic_write_text(work / REPORT_FILE, report.model_dump_json(indent=2) + "\n")
    return report


def _readme(report: ZooReport) -> str:
    lines = [
        "# Tiny synthetic model zoo",
        "",
        f"Built by `evomerge.zoo.build_zoo`. `base/` is a small {_CLASSES[report.arch]} "
        "pretrained on",
        "generic character tasks plus a small share of each skill; `experts/<skill>/` are",
        "fine-tuned from it. `tasks/<task>.jsonl` hold held-out items (never trained on).",
        "Prompts are `<prefix>:<input>=`; the answer follows, then `</s>`.",
        "",
        "Tasks:",
        *(
            f"- `{name}` ({t.kind}, prefix `{t.prefix}`): {t.description}"
            for name, t in report.tasks.items()
        ),
        "",
        *scores_section(report),
    ]
    return "\n".join(lines)


def scores_section(report: ZooReport) -> list[str]:
    """The README's score table: every model on every task, as the report measured them."""
    return [
        "Scores (exact match, teacher-forced token accuracy):",
        "",
        "```",
        report.table(),
        "```",
        "",
    ]


def _matches(path: Path, preset: str, seed: int, arch: str) -> ZooReport | None:
    if not zoo_is_built(path):
        return None
    report = load_zoo_report(path)
    return report if (report.preset, report.seed, report.arch) == (preset, seed, arch) else None


def build_zoo(
    out_dir: Path,
    preset: str = "default",
    seed: int = 0,
    *,
    arch: str = "llama",
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> ZooReport:
    """Build the tiny zoo into `out_dir`, or return the report of the one already there.

    ``arch``: the model family, ``llama`` (default) or ``qwen2`` (:func:`~.train.new_model`);
    the presets' sizes and schedules are the same for both.

    A complete zoo of the same preset, seed and family is reused (unless `force`). The build goes
    into a temporary folder beside `out_dir`, renamed at the end, so an interrupted build never
    leaves a half-built zoo under the final name. An existing non-empty `out_dir` that is not
    that zoo is only replaced with `force=True`.
    """
    if preset not in PRESETS:
        raise EvomergeError(f"unknown zoo preset {preset!r}; choose one of {sorted(PRESETS)}")
    if arch not in ARCHES:
        raise EvomergeError(f"unknown zoo architecture {arch!r}; choose one of {list(ARCHES)}")
    out_dir = Path(out_dir)
    say = log or (lambda _msg: None)
    if not force:
        cached = _matches(out_dir, preset, seed, arch)
        if cached is not None:
            say(f"zoo already built at {out_dir}")
            return cached
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            what = (
                "a zoo of another preset, seed or family"
                if zoo_is_built(out_dir)
                else "other files"
            )
            raise OutputExistsError(f"{out_dir}: holds {what}; pass force=True to replace it")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(out_dir)
    work = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with _quiet_and_threaded(PRESETS[preset].threads):
            report = _build_into(work, preset, seed, arch, say)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        replace_dir(work, out_dir)  # by renames only: the old zoo is moved aside, then deleted
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
        theirs = None if force else _matches(out_dir, preset, seed, arch)
        if theirs is None:
            raise
        return theirs  # another process finished the same zoo first
    say(f"zoo built at {out_dir} in {report.build_seconds:.1f}s")
    return report


def _remove_abandoned_builds(out_dir: Path) -> None:
    """Delete temporary build folders left by killed builds (their process no longer exists)."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.building-*"):
        try:
            pid = int(stale.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except (ValueError, IndexError, OSError):
            continue  # not ours to judge: unreadable name, or a live process of another user

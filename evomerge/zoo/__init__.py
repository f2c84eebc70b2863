"""The tiny synthetic model zoo: a base and skill experts as real Hugging Face checkpoints.

No weights can be downloaded, so evomerge trains its own zoo on the CPU in a few minutes: a small
LlamaForCausalLM (or Qwen2ForCausalLM) base, one expert per skill fine-tuned from it, and
held-out items per task.
Merges of these experts land between base and experts, so merge recipes are worth searching.

    report = build_zoo(Path("zoo"))     # cached: returns at once if already built
    print(report.table())
"""

from evomerge.zoo.build import (
    AVERAGE,
    PRESETS,
    Preset,
    Score,
    TaskInfo,
    ZooReport,
    average_state_dicts,
    build_zoo,
    load_task_items,
    load_zoo_report,
    score_model,
    zoo_is_built,
)
from evomerge.zoo.evaluate import (
    evaluate_exact_match,
    evaluate_token_accuracy,
    exact_match_scores,
    teacher_forced_scores,
)
from evomerge.zoo.skills import CROSS_TASKS, SKILLS, TASKS, TaskItem
from evomerge.zoo.tokenizer import build_tokenizer

#: the zoo's base and experts as ``zoo:`` source paths, as an experiment on the zoo names them
SOURCES: dict[str, str] = {"base": "zoo:base", **{s: f"zoo:experts/{s}" for s in SKILLS}}

__all__ = [
    "AVERAGE",
    "CROSS_TASKS",
    "PRESETS",
    "SKILLS",
    "SOURCES",
    "TASKS",
    "Preset",
    "Score",
    "TaskInfo",
    "TaskItem",
    "ZooReport",
    "average_state_dicts",
    "build_tokenizer",
    "build_zoo",
    "evaluate_exact_match",
    "evaluate_token_accuracy",
    "exact_match_scores",
    "load_task_items",
    "load_zoo_report",
    "score_model",
    "teacher_forced_scores",
    "zoo_is_built",
]

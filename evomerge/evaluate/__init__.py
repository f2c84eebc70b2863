"""Scoring models: tasks, engines, estimators. ``score_checkpoint`` is ``evomerge eval``.

Imports nothing heavy itself: ``evomerge.evaluate.options`` is read when an experiment file is
checked, before torch or vLLM load."""

from __future__ import annotations

from typing import Any

__all__ = ["score_checkpoint"]


def __getattr__(name: str) -> Any:
    if name == "score_checkpoint":
        from evomerge.evaluate.checkpoint_scores import score_checkpoint

        return score_checkpoint
    raise AttributeError(f"module 'evomerge.evaluate' has no attribute {name!r}")

"""evomerge: evolutionary and black-box search for LLM merge recipes.

The public API (imported on first use, so ``import evomerge`` stays light):

- :func:`start`, :func:`reopen`, :func:`load_run`: a search run, new, resumed or opened to read;
- :class:`Recipe` and :func:`merge_to_dir`: a merge as data, and materialized;
- :func:`score_checkpoint`: one checkpoint scored on tasks (``evomerge eval``).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_API = {
    "start": "evomerge.run.lifecycle",
    "reopen": "evomerge.run.lifecycle",
    "load_run": "evomerge.run.lifecycle",
    "Recipe": "evomerge.recipe",
    "merge_to_dir": "evomerge.merge.materialize",
    "score_checkpoint": "evomerge.evaluate.checkpoint_scores",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'evomerge' has no attribute {name!r}")

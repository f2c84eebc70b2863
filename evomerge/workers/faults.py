"""What a failure during an evaluation means.

- **The candidate's**: a recipe out of range, a merge with non-finite weights, NaN or infinite
  scores, a model the engine cannot hold (an ``EvomergeError``, or torch's ``RuntimeError`` /
  ``ValueError`` on its tensors). It becomes a failed trial with the reason, and the run goes on
  (``workers.max_failures`` of them in a row stop it, status ``failing``).
- **The system's**: out of memory, a source file gone, truncated or changed, an I/O error, a bug
  of ours (``TypeError``, ``AttributeError``, ``AssertionError``…). Memory and I/O errors are
  retried once (memory freed first); then, or at once for the others, the worker raises
  :class:`WorkerFault` and the run stops cleanly: status ``stopped`` with the reason, the
  archive and the optimizer checkpoint as they were, the candidate not recorded (a resume
  evaluates it again).
"""

from __future__ import annotations

import gc
import traceback
from typing import Literal

from evomerge.errors import CheckpointError, EvomergeError

Kind = Literal["candidate", "retry", "stop"]

# errors no candidate should cause: a bug of ours, the same on every try
_BUGS = (
    TypeError,
    AttributeError,
    AssertionError,
    NameError,
    KeyError,
    IndexError,
    ImportError,
    NotImplementedError,
)


class WorkerFault(EvomergeError):
    """The system failed, not the candidate: the run stops with this reason (``detail``: the
    traceback, kept in ``run.json``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # crosses Ray's process boundary
        return (type(self), (self.reason, self.detail))


def is_oom(e: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None)
    return (
        isinstance(e, MemoryError)
        or (oom is not None and isinstance(e, oom))
        or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())
    )


def classify(e: BaseException) -> Kind:
    if is_oom(e):
        return "retry"
    if isinstance(e, CheckpointError):  # a source file gone, truncated or changed
        return "stop"
    if isinstance(e, OSError):  # I/O: a transient error may pass
        return "retry"
    if isinstance(e, _BUGS):
        return "stop"
    if isinstance(e, (EvomergeError, RuntimeError, ValueError, ArithmeticError)):
        return "candidate"
    return "stop"


def fault(e: BaseException, retried: bool) -> WorkerFault:
    """The reason a run stops on ``e``, in one line, saying what to do about it."""
    first = (str(e).strip().splitlines() or [""])[0]
    what = f"{type(e).__name__}: {first}" if first else type(e).__name__
    if is_oom(e):
        reason = (
            f"out of memory{' again after freeing memory' if retried else ''} ({what}); lower "
            "workers.batch_size, use a larger device, or a space of smaller models"
        )
    elif isinstance(e, CheckpointError):
        reason = f"a source cannot be read ({what}); restore it, then `evomerge resume`"
    elif isinstance(e, OSError):
        reason = f"I/O error{' twice' if retried else ''} ({what})"
    else:
        reason = f"internal error ({what}); a bug in evomerge, please report it with run.json"
    return WorkerFault(reason, "".join(traceback.format_exception(e)))


def free_memory() -> None:
    """What a retry after an out-of-memory error starts with."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass

"""Errors users see. Each names the file, key or tensor at fault, so a fix needs no debugger."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class EvomergeError(Exception):
    """Base of every error evomerge raises on purpose (the CLI prints these without a trace)."""


class CheckpointError(EvomergeError):
    """A checkpoint directory cannot be read as asked (missing shard, pickle refused, bad index)."""


class IncompatibleSourcesError(EvomergeError):
    """Sources cannot be merged together: different tensors, shapes or architectures."""


class RecipeError(EvomergeError):
    """A recipe (ours or mergekit's) is malformed or asks for something out of range."""


class MergeError(EvomergeError):
    """A merge failed on a particular tensor (non-finite values, unsupported dtype...)."""


class OutputExistsError(EvomergeError):
    """The output directory exists; we never overwrite a checkpoint unless told to."""


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Errors raised inside name ``path`` (the file being worked from) where they do not yet:
    a source that cannot be opened, a value out of range found when a merge is planned…"""
    try:
        yield
    except EvomergeError as e:
        if str(path) not in str(e):
            e.args = (f"{path}: {e}", *e.args[1:])
        raise

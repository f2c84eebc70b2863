"""A run's sources, opened, and one resident engine that candidates are swapped into.

Every scorer of recipes (the search's worker and so each Ray actor, ``evomerge confirm``, the
benches) opens it here, so they hold the same engine: the same threads, dtype and options, and,
when the sources' vocabularies differ (``tokenizer_source``), an engine built on the merges'
vocabulary rather than on the base's.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import torch

from evomerge.checkpoint import ModelSource
from evomerge.evaluate.engines import Engine
from evomerge.evaluate.select import load_candidate, make_engine

if TYPE_CHECKING:
    from evomerge.merge.materialize import MergePlan
    from evomerge.recipe import Recipe


class EngineSettings(Protocol):
    """What an engine is built from (an experiment's ``workers:`` section)."""

    engine: str
    device: str
    dtype: str
    batch_size: int
    threads: int | None
    engine_options: dict[str, Any]


class Resident:
    """The opened sources (``sources``: name → :class:`ModelSource`) and ``engine``, on
    ``device``; :meth:`close` releases the engine (vLLM: its processes) and any vocabulary
    template written for it."""

    def __init__(
        self,
        settings: EngineSettings,
        sources: Mapping[str, str],
        *,
        base: str | None = None,
        tokenizer_source: str | None = None,
    ) -> None:
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        self.device = settings.device
        self.sources = {n: ModelSource(p, name=n) for n, p in sources.items()}
        ref = sources[base] if base else next(iter(sources.values()))
        self._vocab_dir: str | None = None
        if tokenizer_source:  # the engine holds the merges' vocabulary
            from evomerge.merge.vocab import engine_template

            self._vocab_dir = tempfile.mkdtemp(prefix="evomerge-vocab-")
            try:
                template = engine_template(sources, base, tokenizer_source, self._vocab_dir)
            except BaseException:
                shutil.rmtree(self._vocab_dir, ignore_errors=True)
                raise
            ref = str(template) if template else ref
        try:
            self.engine: Engine = make_engine(
                settings.engine,
                ref,
                device=settings.device,
                dtype=settings.dtype,
                batch_size=settings.batch_size,
                options=settings.engine_options,
            )
        except BaseException:
            if self._vocab_dir is not None:
                shutil.rmtree(self._vocab_dir, ignore_errors=True)
            raise

    def load(self, recipe: Recipe, plan: MergePlan | None = None) -> None:
        """Swap ``recipe`` into the engine (planned against the sources unless ``plan``)."""
        if plan is None:
            from evomerge.merge.materialize import plan as make_plan

            plan = make_plan(recipe, self.sources)
        load_candidate(self.engine, recipe, plan=plan, device=self.device)

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()
        if self._vocab_dir is not None:
            shutil.rmtree(self._vocab_dir, ignore_errors=True)
            self._vocab_dir = None

"""Every evaluation of a run, kept as an Optuna study in RDB storage.

One evaluated recipe is one Optuna trial: genes as params, objective values as values (named
with ``set_metric_names``), start and end of its evaluation as the trial's datetimes, and the
rest (recipe YAML and hash, the recipe's values as ``recipe.<source>.<param>``, fidelity,
estimator error, timings, worker, error) as user attrs; the study's ``knee_trial`` attr names
the front's knee. A failed candidate is a FAIL trial. So ``optuna.load_study`` and
optuna-dashboard open a run as it is, SQLite by default and any SQLAlchemy URL (PostgreSQL…)
for many machines.

Each trial is committed before the optimizer hears of it (one transaction of a few inserts:
:mod:`evomerge.run.trial_writer`); :meth:`Archive.lookup` serves recipes
already evaluated (same hash), so a resumed run never evaluates one twice.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import OptunaError
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from evomerge.errors import EvomergeError
from evomerge.genes import Gene
from evomerge.objectives import (
    hypervolume,
    ideal_distances,
    ideal_point,
    knee_index,
    losses,
    maximized,
    non_dominated,
    reference_losses,
    signs,
)
from evomerge.run.trial_writer import writer_for
from evomerge.workers.base import Evaluation

# study user attributes: every item id scored during the search, per objective; and one
# confirmation per (set, trial), e.g. "confirmation:holdout:12"
SCORED_ITEMS, CONFIRMATION = "scored_items", "confirmation:"
# kept for evomerge in system attrs, which optuna-dashboard does not list: the full recipe and
# the exact genome of a trial, the ids of every item scored (runs from before read user attrs)
RECIPE_ATTR, GENOME_ATTR = "evomerge:recipe", "evomerge:genome"
SCORED_ATTR = "evomerge:scored_items"
GENE_PREFIX = "gene:"  # a parameter of the study is a unit gene, not a recipe value


def param_name(gene: str) -> str:
    """The study's name for a gene (``gene:add1.density.L0``): optuna-dashboard lists it
    beside the recipe's values (``recipe.add1.density``), which it is not."""
    return GENE_PREFIX + gene


CONFIRMATION_SETS = ("holdout", "full")

STUDY_NAME = "evomerge"  # the study of a run that has its own SQLite file

# what opening a storage URL raises: a bad URL or database, optuna's own, a missing DB driver
_STORAGE_ERRORS = (SQLAlchemyError, OptunaError, ImportError)


UNIT_OBJECTIVES = "unit_objectives"  # study attr: which objectives are [0, 1] scores


class ArchiveError(EvomergeError):
    """The run's storage cannot be opened or does not belong to this experiment."""


@contextmanager
def _quiet() -> Iterator[None]:
    """Optuna's INFO lines (study created / loaded) muted while we call it, and only then."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(verbosity, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: 10x faster


def recipe_attrs(recipe_yaml: str) -> dict[str, Any]:
    """The recipe's values as short user attrs, one per source and parameter
    (``recipe.rev9.weight.per_layer``: a list per layer, 4 decimals; ``recipe.lambda``), so
    optuna-dashboard shows the decoded recipe next to the raw genes; paths and the seed are
    left out (the full YAML is kept in the system attr ``evomerge:recipe``)."""
    try:
        tree = yaml.load(recipe_yaml, Loader=_YAML_LOADER) if recipe_yaml else None
    except yaml.YAMLError:
        return {}
    out: dict[str, Any] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("sources", "parameters"):  # recipe.rev9.weight, recipe.lambda
                    walk(v, key)
                elif k not in ("path", "seed", "dtype", "tokenizer"):
                    walk(v, f"{key}.{k}")
        elif isinstance(node, list) and any(isinstance(v, (dict, list)) for v in node):
            for i, v in enumerate(node):
                walk(v, f"{key}.{i}")
        elif isinstance(node, float):
            out[key] = round(node, 4)
        elif isinstance(node, list):
            out[key] = [round(v, 4) if isinstance(v, float) else v for v in node]
        elif node is not None:
            out[key] = node

    if isinstance(tree, dict):
        walk(tree, "recipe")
    return out


def _distributions(genes: Sequence[Gene]) -> dict[str, BaseDistribution]:
    return {
        param_name(g.name): FloatDistribution(0.0, 1.0)
        if g.choices is None
        else IntDistribution(0, g.choices - 1)
        for g in genes
    }


class Archive:
    def __init__(
        self,
        storage: str,
        *,
        objectives: Sequence[str],
        directions: Sequence[str],
        genes: Sequence[Gene],
        experiment_hash: str,
        study_name: str = STUDY_NAME,
        unit_objectives: Sequence[bool] | None = None,
    ) -> None:
        """``unit_objectives``: which objectives are scores on the common [0, 1] scale
        (:func:`evomerge.experiment.is_unit_metric`), recorded when the run is created; the
        knee's rule depends on it (:func:`knee_index`)."""
        self.objectives, self.directions = list(objectives), list(directions)
        self.genes = list(genes)
        self._dists = _distributions(genes)
        self._sign = signs(self.directions)  # losses are minimized
        try:
            with _quiet():
                self.study = optuna.create_study(
                    storage=storage,
                    study_name=study_name,
                    directions=self.directions,
                    load_if_exists=True,
                )
        except _STORAGE_ERRORS as e:
            raise ArchiveError(f"cannot open the run's storage {storage}: {e}") from None
        attrs = self.study.user_attrs
        if not attrs:
            self.study.set_user_attr("experiment_hash", experiment_hash)
            self.study.set_user_attr("objectives", self.objectives)
            if unit_objectives is not None:
                self.study.set_user_attr(UNIT_OBJECTIVES, [bool(u) for u in unit_objectives])
        elif attrs.get("experiment_hash") != experiment_hash:
            raise ArchiveError(
                f"storage {storage} holds a run of another experiment "
                f"({attrs.get('experiment_hash')}, not {experiment_hash}); use another run dir"
            )
        if self.objectives and self.study.metric_names != self.objectives:
            with warnings.catch_warnings():  # set_metric_names is "experimental" in optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(self.objectives)  # optuna-dashboard's axis names
        self._knee = attrs.get("knee_trial")
        # a new study holds what was just written; absent from an old one: a run from before it
        units = attrs.get(UNIT_OBJECTIVES) if attrs else unit_objectives
        self._common_unit = bool(units) and len(units) == len(self.objectives) and all(units)
        self._writer = writer_for(self.study)
        self._evals: list[Evaluation] = [
            self._from_trial(t) for t in self.study.get_trials(deepcopy=False)
        ]
        self._by_hash = {e.recipe_hash: e for e in self._evals}
        self._scored: dict[str, set[str]] | None = None

    @classmethod
    def load(cls, url: str, *, study_name: str, experiment_hash: str) -> Archive:
        """An archive as stored (no models are opened): genes, objectives and directions come
        from the study itself. :func:`evomerge.run.run_dir.open_archive` opens a run's."""
        name = study_name
        try:
            with _quiet():
                study = optuna.load_study(study_name=name, storage=url)
        except KeyError:
            raise ArchiveError(f"no study {name!r} in {url} (no trial yet?)") from None
        except _STORAGE_ERRORS as e:
            raise ArchiveError(f"cannot open the run's storage {url}: {e}") from None
        trials = study.get_trials(deepcopy=False)
        dists = trials[0].distributions if trials else {}
        genes = [
            Gene(
                g.removeprefix(GENE_PREFIX),
                int(d.high) + 1 if isinstance(d, IntDistribution) else None,
            )
            for g, d in dists.items()
        ]
        return cls(
            url,
            study_name=name,
            objectives=study.user_attrs.get("objectives", []),
            directions=[d.name.lower() for d in study.directions],
            genes=genes,
            experiment_hash=experiment_hash,
        )

    # -- writing -----------------------------------------------------------------------------
    def record(self, ev: Evaluation) -> Evaluation:
        """Commit one evaluation (one transaction in the storage) and index it."""
        finished = time.time()
        total = ev.timings.get("total")
        started = ev.started if ev.started is not None else finished - (total or 0.0)
        params = {
            param_name(g.name): (float(v) if g.choices is None else round(v))
            for g, v in zip(self.genes, ev.genome, strict=True)
        }
        attrs: dict[str, Any] = {
            "hash": ev.recipe_hash,
            "status": ev.status,
            "fidelity": ev.fidelity,
            "stderr": ev.stderr,
            "timings": ev.timings,
            "worker": ev.worker,
            **recipe_attrs(ev.recipe),
        }
        hidden = {RECIPE_ATTR: ev.recipe, GENOME_ATTR: [float(v) for v in ev.genome]}
        if ev.error:
            attrs["error"] = ev.error
        ok = ev.ok and all(math.isfinite(v) for v in ev.values or [])
        trial = FrozenTrial(
            number=-1,  # the storage numbers it
            state=TrialState.COMPLETE if ok else TrialState.FAIL,
            value=None,
            values=list(ev.values) if ok else None,
            datetime_start=datetime.fromtimestamp(min(started, finished)),
            datetime_complete=datetime.fromtimestamp(finished),
            params=params,
            distributions=self._dists,
            user_attrs=attrs,
            system_attrs=hidden,
            intermediate_values={},
            trial_id=-1,
        )
        if self._writer is not None:
            self._writer.add(trial)
        else:
            self.study.add_trial(trial)
        ev.number = len(self._evals)
        if not ok:
            ev.status = "failed"
        self._evals.append(ev)
        self._by_hash[ev.recipe_hash] = ev
        return ev

    def note_scored(self, items: Mapping[str, Iterable[str]]) -> None:
        """Add ``items`` (objective → item ids a candidate was scored on) to the run's record of
        every item the search has scored. Rewritten only when an id is new (the first candidate,
        the first promotion); the search notes a candidate's items before it records the trial,
        so the record never misses an item that was scored."""
        have = self._scored if self._scored is not None else self.scored_items()
        grown = False
        for label, ids in items.items():
            seen = have.setdefault(label, set())
            n = len(seen)
            seen.update(ids)
            grown |= len(seen) > n
        self._scored = have
        if grown:
            self.set_system_attr(SCORED_ATTR, {k: sorted(v) for k, v in sorted(have.items())})

    def record_confirmation(self, number: int, kind: str, result: Mapping[str, Any]) -> None:
        """Commit trial ``number``'s scores on a confirmation set (``holdout``: the items the
        search never saw; ``full``: every item), next to its search-time values: one study user
        attribute per (set, trial), each its own transaction, so a crash loses none committed.
        ``result["scores"]`` maps objectives to their confirmed values (:mod:`evomerge.run.confirm`
        writes the rest: stderr, items, fidelity, the estimate it confirms)."""
        if kind not in CONFIRMATION_SETS:
            raise ArchiveError(f"confirmation set {kind!r}: choose one of {CONFIRMATION_SETS}")
        self.trial(number)
        self.study.set_user_attr(f"{CONFIRMATION}{kind}:{number}", dict(result))

    def sync(self) -> None:
        """A durability barrier: every evaluation recorded so far survives a power loss (a
        commit already survives the process being killed). Called before the optimizer's
        checkpoint is written, so no checkpoint is ever ahead of the archive."""
        if self._writer is not None:
            self._writer.sync()

    def tag_knee(self) -> int | None:
        """Name the front's knee in the study (user attr ``knee_trial``, what optuna-dashboard
        shows with the study), written only when it moved; the knee's trial number."""
        knee = self.knee()
        number = None if knee is None else knee.number
        if number != self._knee:
            self.study.set_user_attr("knee_trial", number)
            self._knee = number
        return number

    def _from_trial(self, t: FrozenTrial) -> Evaluation:
        a, hidden = t.user_attrs, t.system_attrs
        return Evaluation(
            recipe_hash=a.get("hash", f"trial{t.number}"),
            recipe=hidden.get(RECIPE_ATTR, a.get("recipe", "")),
            genome=list(hidden.get(GENOME_ATTR, a.get("genome", []))),
            values=list(t.values) if t.state == TrialState.COMPLETE and t.values else None,
            status="ok" if t.state == TrialState.COMPLETE else "failed",
            error=a.get("error"),
            fidelity=dict(a.get("fidelity", {})),
            stderr=dict(a.get("stderr", {})),
            timings=dict(a.get("timings", {})),
            worker=a.get("worker", "?"),
            number=t.number,
        )

    # -- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._evals)

    @property
    def evaluations(self) -> list[Evaluation]:
        return list(self._evals)

    def lookup(self, recipe_hash: str) -> Evaluation | None:
        return self._by_hash.get(recipe_hash)

    def _losses(self, evs: Sequence[Evaluation]) -> np.ndarray:
        return losses([e.values for e in evs], self.directions)  # type: ignore[misc]

    def front(self) -> list[Evaluation]:
        """The non-dominated evaluations (each recipe once, at the fidelity it was scored at)."""
        ok = [e for e in self._evals if e.ok]
        if not ok:
            return []
        return [ok[i] for i in non_dominated(self._losses(ok))]

    def hypervolume(self, reference: Sequence[float | None]) -> float:
        """Volume dominated by the front and bounded by ``reference`` (in objective units; a
        None entry: the worst value evaluated so far, :func:`reference_losses`)."""
        front = self.front()
        if not front:
            return 0.0
        try:
            ref = reference_losses(
                reference, self.directions, self._losses([e for e in self._evals if e.ok])
            )
        except ValueError as e:
            raise ArchiveError(f"hypervolume: {e}") from None
        return hypervolume(self._losses(front), ref)

    @property
    def common_unit(self) -> bool:
        """Whether every objective is a score on one common [0, 1] scale (the knee's unit)."""
        return self._common_unit

    def knee(self) -> Evaluation | None:
        """The front's compromise: the member closest to the ideal point (:func:`knee_index`;
        ties: the earliest trial)."""
        front = self.front()
        if not front:
            return None
        return front[knee_index(self._losses(front), common_unit=self._common_unit)]

    def ideal_point(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The front's ideal point and units (:func:`ideal_point`, as losses); None before any
        candidate scored."""
        front = self.front()
        if not front:
            return None
        return ideal_point(self._losses(front), common_unit=self._common_unit)

    def ideal_distances(self, evs: Sequence[Evaluation]) -> np.ndarray:
        """Each evaluation's distance to the front's ideal point, by the knee's rule (the knee
        is the nearest front member)."""
        front = self.front()
        if not evs or not front:
            return np.zeros(len(evs))
        return ideal_distances(
            self._losses(evs), common_unit=self._common_unit, front=self._losses(front)
        )

    def best(self, objective: str) -> Evaluation | None:
        if objective not in self.objectives:
            raise ArchiveError(f"no objective {objective!r}; the run has {self.objectives}")
        i = self.objectives.index(objective)
        ok = [e for e in self._evals if e.ok]
        if not ok:
            return None
        pick = max if maximized(self.directions[i]) else min
        return pick(ok, key=lambda e: (e.values[i], -(e.number or 0)))  # type: ignore[index]

    def trial(self, number: int) -> Evaluation:
        if not 0 <= number < len(self._evals):
            raise ArchiveError(f"no trial {number}; the run has trials 0…{len(self._evals) - 1}")
        return self._evals[number]

    # optuna 5 dropped Study.system_attrs and set_system_attr; its storages keep both calls
    # (Study._storage, as trial_writer.py uses it; tests/test_dashboard.py reads them back)
    def system_attrs(self) -> dict[str, Any]:
        """The study's system attributes: evomerge's own records, which optuna-dashboard does
        not list (:data:`SCORED_ATTR`, the dashboard's notes)."""
        return self.study._storage.get_study_system_attrs(self.study._study_id)

    def set_system_attr(self, key: str, value: Any) -> None:
        self.study._storage.set_study_system_attr(self.study._study_id, key, value)

    def scored_items(self) -> dict[str, set[str]]:
        """Objective → every item id the search has scored on it (``note_scored``), read from
        the storage: a held-out item must never be among them."""
        stored = self.system_attrs().get(SCORED_ATTR)
        if stored is None:  # a run from before the ids moved to the system attrs
            stored = self.study.user_attrs.get(SCORED_ITEMS, {})
        return {k: set(v) for k, v in stored.items()}

    def confirmations(self, kind: str = "holdout") -> dict[int, dict[str, Any]]:
        """Trial number → its confirmation on set ``kind`` (``record_confirmation``), by trial."""
        prefix = f"{CONFIRMATION}{kind}:"
        found = {
            int(k[len(prefix) :]): v
            for k, v in self.study.user_attrs.items()
            if k.startswith(prefix)
        }
        return dict(sorted(found.items()))

    def confirmed(self, kind: str | None = None) -> Archive:
        """This run seen through its confirmations: only the confirmed trials, each scored
        objective's value replaced by its confirmed score (costs are exact already), fidelity
        and stderr those of the confirmation. ``front``, ``knee``, ``best`` and ``hypervolume``
        of the view rank by confirmed scores. ``kind``: ``holdout``, ``full``, or None for
        held-out confirmations where there are any, else full ones."""
        kinds = [kind] if kind is not None else list(CONFIRMATION_SETS)
        for k in kinds:
            rows = self.confirmations(k)
            if rows:
                break
        else:
            which = f"on {kind} items " if kind else ""
            raise ArchiveError(
                f"no trial of this run is confirmed {which}yet; `evomerge confirm RUN_DIR` "
                "scores the front on its held-out items (--full: on every item)"
            )
        evs = []
        for n, c in rows.items():
            e = self._evals[n] if n < len(self._evals) else None
            if e is None or e.values is None or not e.ok:
                continue
            scores = c.get("scores", {})
            values = [
                float(scores.get(o, v)) for o, v in zip(self.objectives, e.values, strict=True)
            ]
            evs.append(
                dataclasses.replace(
                    e,
                    values=values,
                    fidelity={**e.fidelity, **c.get("fidelity", {})},
                    stderr={**e.stderr, **c.get("stderr", {})},
                )
            )
        return _View(self, evs)


class _View(Archive):
    """An archive's reading methods over other evaluations of the same run (``confirmed``)."""

    def __init__(self, parent: Archive, evaluations: Sequence[Evaluation]) -> None:
        self.__dict__.update(copy.copy(parent.__dict__))
        self._evals = list(evaluations)
        self._by_hash = {e.recipe_hash: e for e in self._evals}

    def trial(self, number: int) -> Evaluation:
        for e in self._evals:
            if e.number == number:
                return e
        raise ArchiveError(f"trial {number} is not among the confirmed trials")

"""One finished trial written to optuna's RDB storage in one transaction of a few inserts.

``study.add_trial`` goes through optuna's ORM: for every param, value and attribute it looks the
trial up again, checks the distribution against the study's first trial with that name and
flushes, ~100 SQL round trips for a 24-gene candidate (~40 ms of Python, the archive's whole
commit cost). The rows written here are the same rows (optuna's own table models, the same
JSON and value encodings), inserted with one ``executemany`` per table; tests compare the
result, read back through ``optuna.load_study``, with ``add_trial``'s.

On a SQLite file the writer switches the database to write-ahead logging and its own commits to
``synchronous=NORMAL``: a commit is then a write into the WAL, not an fsync (~1 ms instead of
~10-20 ms), and it survives the process being killed; :meth:`TrialWriter.sync` is the barrier
that makes every commit so far survive a power loss too (an fsync of the WAL), which the
search loop calls before it writes the optimizer's checkpoint.

Any storage that is not an RDB storage (or an optuna whose models no longer look like this)
returns None from :func:`writer_for`: the archive then uses ``add_trial``.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optuna.distributions import distribution_to_json
from optuna.trial import FrozenTrial
from sqlalchemy import func, select

_TABLES = (
    "TrialModel",
    "TrialParamModel",
    "TrialValueModel",
    "TrialUserAttributeModel",
    "TrialSystemAttributeModel",
)


def _utc(when: datetime | None) -> datetime | None:
    """optuna's RDB storage keeps naive UTC datetimes (FrozenTrials carry naive local ones)."""
    return None if when is None else when.astimezone(UTC).replace(tzinfo=None)


class TrialWriter:
    """Inserts finished trials into one study of an ``RDBStorage``."""

    def __init__(self, backend: Any, study_id: int) -> None:
        # optuna's private table models, on purpose: the same rows add_trial writes, ~40x
        # cheaper (module docstring). tests/test_archive_record.py reads them back through
        # optuna.load_study against add_trial's; writer_for falls back when they change.
        from optuna.storages._rdb import models

        self._models = models
        self._engine = backend.engine
        self._study_id = study_id
        self._tables = {name: getattr(models, name).__table__ for name in _TABLES}
        self._conn = self._engine.connect()  # ours alone: its pragmas are ours
        self._wal: Path | None = None
        url = self._engine.url
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            mode = self._conn.exec_driver_sql("PRAGMA journal_mode=WAL").scalar()
            self._conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
            self._conn.commit()
            if str(mode).lower() == "wal":
                self._wal = Path(str(url.database) + "-wal")

    def sync(self) -> None:
        """Every trial written so far survives a power loss once this returns."""
        if self._wal is not None and self._wal.exists():
            fd = os.open(self._wal, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def add(self, trial: FrozenTrial) -> int:
        """Insert ``trial`` (finished) as the study's next trial; its number."""
        if not trial.state.is_finished() or trial.intermediate_values:
            raise ValueError("only finished trials without intermediate values are written here")
        t = self._tables
        value_type = self._models.TrialValueModel.value_to_stored_repr
        conn = self._conn
        with conn.begin():  # one transaction: all of the trial, or nothing
            trials = t["TrialModel"]
            number = conn.execute(
                select(func.count()).select_from(trials).where(trials.c.study_id == self._study_id)
            ).scalar_one()
            trial_id = conn.execute(
                trials.insert().values(
                    number=number,
                    study_id=self._study_id,
                    state=trial.state,
                    datetime_start=_utc(trial.datetime_start),
                    datetime_complete=_utc(trial.datetime_complete),
                )
            ).inserted_primary_key[0]
            if trial.params:
                conn.execute(
                    t["TrialParamModel"].insert(),
                    [
                        {
                            "trial_id": trial_id,
                            "param_name": name,
                            "param_value": dist.to_internal_repr(trial.params[name]),
                            "distribution_json": distribution_to_json(dist),
                        }
                        for name, dist in trial.distributions.items()
                    ],
                )
            if trial.values is not None:
                rows = []
                for objective, v in enumerate(trial.values):
                    stored, kind = value_type(v)
                    rows.append(
                        {
                            "trial_id": trial_id,
                            "objective": objective,
                            "value": stored,
                            "value_type": kind,
                        }
                    )
                conn.execute(t["TrialValueModel"].insert(), rows)
            if trial.user_attrs:
                conn.execute(
                    t["TrialUserAttributeModel"].insert(),
                    [
                        {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                        for k, v in trial.user_attrs.items()
                    ],
                )
            if trial.system_attrs:
                conn.execute(
                    t["TrialSystemAttributeModel"].insert(),
                    [
                        {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                        for k, v in trial.system_attrs.items()
                    ],
                )
        return int(number)


def writer_for(study: Any) -> TrialWriter | None:
    """A fast writer for ``study``'s storage when it is optuna's (cached) RDB storage, else None."""
    from optuna.storages import RDBStorage

    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, RDBStorage):
        return None
    try:
        return TrialWriter(backend, study._study_id)
    except (ImportError, AttributeError):  # optuna's models moved: add_trial still works
        return None

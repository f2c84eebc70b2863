"""A run directory: everything a run needs to resume and to be inspected.

- ``experiment.yaml`` — the experiment as given; ``run.json`` — its hash, the zoo, the budget,
  the status, the storage URL and study name;
- ``archive.db`` — the Optuna study (unless the experiment names another ``storage:``);
- ``optimizer.pkl`` — the optimizer's state after its last complete batch;
  ``optimizer.journal`` — the history that state needs, for optimizers whose history grows
  with the run (the optuna samplers' trials): appended, so a checkpoint costs the same at
  the 5,000th candidate as at the 5th;
- ``workers.json`` — a Ray run's pool: actors, their utilization, candidates in flight, retries;
- ``run.lock`` — held (an OS lock, ``flock``) by the one process driving the run, released when
  it exits or dies; ``run.lock.json`` says who holds it (pid, host, since when).

Every file here is written atomically (:mod:`evomerge.fileio`): a crash leaves the old version
or the new one, never half of one; the journal is appended, and a torn tail is cut off when it
is read.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from evomerge.errors import EvomergeError
from evomerge.experiment import Experiment, ExperimentError
from evomerge.fileio import atomic_write_bytes, atomic_write_json
from evomerge.killpoints import kill_point
from evomerge.optimize.base import Optimizer
from evomerge.run.archive import STUDY_NAME, Archive, ArchiveError

RUN_FILE, EXPERIMENT_FILE, ARCHIVE_FILE, OPTIMIZER_FILE = (
    "run.json",
    "experiment.yaml",
    "archive.db",
    "optimizer.pkl",
)
WORKERS_FILE = "workers.json"
LOCK_FILE, HOLDER_FILE = "run.lock", "run.lock.json"


class RunError(EvomergeError):
    """A run directory cannot be used as asked."""


def read_info(run_dir: Path) -> dict[str, Any]:
    """``run.json``; a directory without one is not a run."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise RunError(f"{run_dir} is not a run directory (no {RUN_FILE})")
    return json.loads(path.read_text())


def update_info(run_dir: Path, **changes: Any) -> dict[str, Any]:
    """Rewrite ``run.json`` with ``changes`` applied; the new content."""
    info = {**read_info(run_dir), **changes}
    atomic_write_json(Path(run_dir) / RUN_FILE, info)
    return info


def _info_or_empty(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def storage_url(run_dir: Path) -> str:
    """The run's archive: the experiment's ``storage:`` URL, else SQLite in the run dir."""
    url = _info_or_empty(run_dir).get("storage")
    return str(url) if url else f"sqlite:///{(Path(run_dir) / ARCHIVE_FILE).resolve()}"


def study_name(run_dir: Path) -> str:
    return str(_info_or_empty(run_dir).get("study_name", STUDY_NAME))


def read_optimizer_state(run_dir: Path) -> bytes | None:
    path = Path(run_dir) / OPTIMIZER_FILE
    return path.read_bytes() if path.exists() else None


def write_optimizer_state(run_dir: Path, state: bytes) -> None:
    atomic_write_bytes(Path(run_dir) / OPTIMIZER_FILE, state)


# the optimizer's journal (``Optimizer.checkpoint``): records appended, each framed as
# (index, length, crc32) + bytes; the last record written with an index wins, and a torn tail
# (a kill mid-append) is cut off when the journal is read
JOURNAL_FILE = "optimizer.journal"
_FRAME = struct.Struct("<QQI")


def append_optimizer_journal(run_dir: Path, first: int, records: Sequence[bytes]) -> None:
    """Append ``records`` as journal entries ``first``, ``first + 1``…, durably (fsync), before
    the state that needs them is written."""
    if not records:
        return
    blob = b"".join(
        _FRAME.pack(first + i, len(r), zlib.crc32(r)) + r for i, r in enumerate(records)
    )
    with open(Path(run_dir) / JOURNAL_FILE, "ab") as fh:
        fh.write(blob)
        fh.flush()
        kill_point(f"write:{JOURNAL_FILE}")
        os.fsync(fh.fileno())


def read_optimizer_journal(run_dir: Path) -> list[bytes]:
    """The journal's records by index (0, 1, 2… as long as they run on); a torn tail is cut
    off the file, so the next append follows the last whole record."""
    path = Path(run_dir) / JOURNAL_FILE
    if not path.exists():
        return []
    data = path.read_bytes()
    by_index: dict[int, bytes] = {}
    pos = 0
    while pos + _FRAME.size <= len(data):
        index, length, crc = _FRAME.unpack_from(data, pos)
        body = data[pos + _FRAME.size : pos + _FRAME.size + length]
        if len(body) != length or zlib.crc32(body) != crc:
            break
        by_index[index] = body
        pos += _FRAME.size + length
    if pos != len(data):
        with open(path, "r+b") as fh:
            fh.truncate(pos)
            os.fsync(fh.fileno())
    out = []
    while len(out) in by_index:
        out.append(by_index[len(out)])
    return out


def create(
    run_dir: Path,
    experiment_file: Path,
    experiment: Experiment,
    *,
    zoo: Path | None,
    budget: int | None,
) -> dict[str, Any]:
    """A new run directory for ``experiment`` (status ``starting``); its ``run.json``.

    Refuses a directory that holds a run (of this experiment or another) or anything else.
    """
    if (run_dir / RUN_FILE).exists():
        check_unlocked(run_dir)  # a live run: name its driver
        info = read_info(run_dir)
        if info["experiment_hash"] != experiment.content_hash():
            raise RunError(
                f"{run_dir} belongs to another experiment ({info.get('experiment_file')}); "
                "choose another --run-dir"
            )
        raise RunError(
            f"{run_dir} already holds this experiment's run; `evomerge resume {run_dir}`"
        )
    if run_dir.exists() and any(not _start_leftover(p) for p in run_dir.iterdir()):
        raise RunError(f"{run_dir} exists and is not empty; choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock(run_dir)
    shutil.copyfile(experiment_file, run_dir / EXPERIMENT_FILE)
    info = {
        "experiment_hash": experiment.content_hash(),
        "experiment_file": str(Path(experiment_file).resolve()),
        "zoo": str(zoo) if zoo else None,
        "budget": budget or experiment.budget,
        # a shared database holds many runs: each gets its own study there
        "storage": experiment.storage,
        "study_name": (
            STUDY_NAME
            if experiment.storage is None
            else f"{experiment.name}-{experiment.content_hash()}"
        ),
        "status": "starting",
        "created": time.time(),
        "pid": os.getpid(),
    }
    atomic_write_json(run_dir / RUN_FILE, info)
    return info


def _start_leftover(path: Path) -> bool:
    """What a start killed before its ``run.json`` was written leaves (no trial yet): a new
    start takes the directory over."""
    return path.name in (EXPERIMENT_FILE, LOCK_FILE, HOLDER_FILE) or (
        path.name.startswith(".") and path.name.endswith(".tmp")
    )


def discard(run_dir: Path) -> None:
    """Remove a run that never evaluated anything (its start failed)."""
    unlock(run_dir, all_=True)
    shutil.rmtree(run_dir)


# -- one driver per run directory --------------------------------------------------------------
_HELD: dict[Path, list[Any]] = {}  # run dirs this process drives: [lock, times taken]


def lock(run_dir: Path) -> None:
    """Take the run's lock, or refuse naming the process (pid, host) that drives it.

    The lock is ``flock`` on ``run.lock``: the operating system releases it when its process
    exits or dies (SIGKILL, OOM killer, power cut), so a crashed run never stays locked. This
    process may take it again (a ``Search`` reopened in the same process); :func:`unlock` as
    often releases it."""
    key = Path(run_dir).resolve()
    held = _HELD.get(key)
    if held is not None:
        held[1] += 1
        return
    fl = FileLock(str(key / LOCK_FILE), timeout=0)
    try:
        fl.acquire()
    except Timeout:
        raise RunError(f"{run_dir} is being run by {_holder(key)}; one driver per run") from None
    _HELD[key] = [fl, 1]
    atomic_write_json(
        key / HOLDER_FILE, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    )
    for tmp in key.glob(".*.tmp"):  # atomic writes a crash cut short (we own the dir now)
        tmp.unlink(missing_ok=True)


def unlock(run_dir: Path, *, all_: bool = False) -> None:
    key = Path(run_dir).resolve()
    held = _HELD.get(key)
    if held is None:
        return
    held[1] = 0 if all_ else held[1] - 1
    if held[1] <= 0:
        del _HELD[key]
        held[0].release(force=True)


def check_unlocked(run_dir: Path) -> None:
    """Refuse, naming the holder, when another process drives the run."""
    lock(run_dir)
    unlock(run_dir)


def _holder(key: Path) -> str:
    try:
        h = json.loads((key / HOLDER_FILE).read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["since"]))
        return (
            f"process {h['pid']} on {h['host']} (since {since}); stop it first (Ctrl-C finishes "
            "the candidates in flight)"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not said which yet)"


def load_experiment(
    run_dir: Path, experiment_file: Path | None = None
) -> tuple[Experiment, dict[str, Any]]:
    """The run's experiment and ``run.json``, checked unchanged since the run started (and the
    same as ``experiment_file`` when given)."""
    info = read_info(run_dir)
    experiment = Experiment.load(run_dir / EXPERIMENT_FILE)
    if experiment.content_hash() != info["experiment_hash"]:
        raise ExperimentError(
            f"{run_dir / EXPERIMENT_FILE} changed since the run started; restore it or start a "
            "new run (the archive is untouched)"
        )
    if experiment_file is not None:
        other = Experiment.load(experiment_file)
        if other.content_hash() != info["experiment_hash"]:
            raise ExperimentError(
                f"{experiment_file} differs from the experiment of {run_dir}; resuming would mix "
                "two searches in one archive. Start a new run for it."
            )
    return experiment, info


def owner_alive(info: dict[str, Any]) -> bool:
    """Whether the process that last ran the run (``info["pid"]``) still exists."""
    try:
        os.kill(int(info.get("pid")), 0)  # type: ignore[arg-type]
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def read_workers(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / WORKERS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def open_archive(run_dir: Path) -> Archive:
    """The archive of a run, read from its storage alone (no models are opened)."""
    info = read_info(run_dir)
    try:
        return Archive.load(
            storage_url(run_dir),
            study_name=study_name(run_dir),
            experiment_hash=info["experiment_hash"],
        )
    except ArchiveError as e:
        raise ArchiveError(f"{run_dir}: {e}") from None


def save_optimizer(run_dir: Path, optimizer: Optimizer) -> None:
    """The optimizer's checkpoint: its new journal records appended (durably), then its state,
    which needs them, written over the last."""
    state, records = optimizer.checkpoint()
    append_optimizer_journal(run_dir, optimizer.journal_length - len(records), records)
    write_optimizer_state(run_dir, state)


def claim_study(archive: Archive, run_dir: Path, storage: str) -> None:
    """One driver per study: a shared database's study is this run directory's alone (two
    drivers telling one optimizer apart would each miss the other's results)."""
    ours = f"{socket.gethostname()}:{Path(run_dir).resolve()}"
    theirs = archive.study.user_attrs.get("driver")
    if theirs is None:
        archive.study.set_user_attr("driver", ours)
    elif theirs != ours:
        raise RunError(
            f"the study {study_name(run_dir)!r} in {storage} belongs to the run "
            f"{theirs}; several drivers feeding one study are not supported. Resume that run "
            "directory (`workers: {backend: ray, count: N}` spreads it over many GPUs), or "
            "change the experiment's name or seed for a study of its own"
        )

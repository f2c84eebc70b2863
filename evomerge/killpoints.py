"""A test hook for the crash-safety sweep (``tests/test_runs.py``): with
``EVOMERGE_TEST_KILL_AT=POINT:N`` set, the N-th time this process reaches ``POINT`` it SIGKILLs
itself, as a power cut or the OOM killer would. Unset, a point costs one environment lookup.

Points: ``merge`` (a merged tensor), ``score`` (an objective about to be scored), ``commit``
(a result committed to the archive, before the optimizer hears of it), ``tell`` (a batch told,
before the optimizer checkpoint), ``write:NAME`` (an atomic write of the file ``NAME``: the new
content complete in its temporary file, not yet renamed), ``export`` (a checkpoint's first shard
written, before the directory is moved into place).
"""

from __future__ import annotations

import os
import signal

ENV = "EVOMERGE_TEST_KILL_AT"
_seen: dict[str, int] = {}


def kill_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, n = spec.rpartition(":")
    if point != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)

"""Writing files so that a crash never leaves half of one under its final name, and reading
configuration files with errors that name the file and the key.

Atomic writes: a temporary file in the same directory, fsync, rename over the target, fsync the
directory (the rename itself must survive a power cut). A directory is swapped in by renames
only: the old one is moved aside first, never deleted before the new one is in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import yaml
from pydantic import ValidationError

from evomerge.errors import EvomergeError


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """A file handle whose content appears under ``path`` only if the block ends normally."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def replace_dir(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move the finished directory ``src`` to ``dst``, replacing any ``dst`` by renames only.

    A crash at any point leaves either the old ``dst`` or the new one under its name (and maybe
    a ``.old-`` directory beside it), never a half-deleted one.
    """
    src, dst = Path(src), Path(dst)
    old: Path | None = None
    if os.path.lexists(dst):  # a dangling link is moved aside too
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, old / dst.name)
    try:
        os.replace(src, dst)
    except BaseException:
        if old is not None:  # put the old one back: the caller still has src
            os.replace(old / dst.name, dst)
            shutil.rmtree(old, ignore_errors=True)
        raise
    fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------
# configuration files


def resolve_named(
    ref: str | os.PathLike[str],
    *,
    presets: Path,
    what: str,
    error: type[EvomergeError],
) -> Path:
    """A preset by name (``presets/NAME.yaml``) or a path; the error lists the known names."""
    path = Path(ref)
    if not path.suffix:
        path = presets / f"{ref}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in presets.glob("*.yaml"))
            raise error(f"unknown {what} {str(ref)!r}; known: {known}")
    if not path.exists():
        raise error(f"{what} file {path} does not exist")
    return path


def read_yaml(path: str | os.PathLike[str], *, error: type[EvomergeError]) -> Any:
    """YAML from a file, with an error naming the file (and the line, from the parser)."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{path}: malformed YAML: {e}") from None


def read_json(path: str | os.PathLike[str], *, error: type[EvomergeError], what: str = "") -> Any:
    """JSON from a file (configs, run files), with an error naming the file and the position.

    JSON stays JSON: YAML would read ``1e-06`` as a string."""
    path = Path(path)
    label = f"{what}: {path}" if what else str(path)
    if not path.exists():
        raise error(f"{label} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{label} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise error(f"{label} is not valid JSON: {e}") from None
    except OSError as e:
        raise error(f"{label}: cannot read: {e.strerror}") from None


def error_location(err: Mapping[str, Any], skip: int = 0) -> str:
    """A pydantic error's key path as ``a.b.0.c`` (``<top>`` for the whole document)."""
    return ".".join(str(p) for p in list(err["loc"])[skip:]) or "<top>"


def validate(
    parse: Callable[[Any], Any],
    data: Any,
    *,
    origin: str,
    error: type[EvomergeError],
    skip: int = 0,
) -> Any:
    """``parse(data)`` (a ``model_validate``) with its first error as ``origin: key: msg``."""
    try:
        return parse(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise error(f"{origin}: {error_location(err, skip)}: {err['msg']}") from None

"""Writing files so that a crash never leaves half of one under its final name, and reading
configuration files with errors that name the file and the key.

Atomic writes: a temporary file in the same directory, fsync, rename over the target, fsync the
directory (the rename itself must survive a power cut). A directory is swapped in by renames
only: the old one is moved aside first, never deleted before the new one is in place.
"""

from __future__ import annotations

import contextlib
import importlib.resources
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
from evomerge.killpoints import kill_point


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
            kill_point(f"write:{path.name}")  # the crash-safety sweep: killed before the rename
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


def preset_dir(kind: str) -> Path:
    """The presets of one kind (``search_spaces``, ``fitness``, ``experiments``) shipped inside
    the package: an installed wheel has no checkout beside it. In a checkout,
    ``evomerge/presets/KIND`` links to the top-level ``KIND/``, the presets' source of truth."""
    return Path(str(importlib.resources.files("evomerge") / "presets" / kind))


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


MAX_YAML_VALUES = 100_000  # far beyond any real config; YAML aliases can expand past it


class _DuplicateKey(Exception):
    pass


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (YAML keeps the last one
    silently: two sources of the same name would become one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the constructor reports it
                continue
            if dup:
                line = key_node.start_mark.line + 1
                raise _DuplicateKey(f"duplicate key {key!r} (line {line})")
        return super().construct_mapping(node, deep=deep)


def _count_values(data: Any, limit: int) -> int:
    """How many values a document holds, counting an aliased node each time it is used (what
    a reader walks), stopping past ``limit``: a few lines of aliases can stand for billions."""
    n, stack = 0, [data]
    while stack and n <= limit:
        x = stack.pop()
        n += 1
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return n


def read_text(path: str | os.PathLike[str], *, error: type[EvomergeError], what: str = "") -> str:
    """A text file's content; the error names the file (and ``what`` it is) when it is missing,
    unreadable or not UTF-8."""
    path = Path(path)
    label = f"{what}: {path}" if what else str(path)
    if not path.exists():
        raise error(f"{label}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{label}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise error(f"{label}: cannot read: {e.strerror}") from None


def read_yaml(path: str | os.PathLike[str], *, error: type[EvomergeError]) -> Any:
    """YAML from a file, with an error naming the file (and the line, from the parser). Keys
    written twice and alias expansions past :data:`MAX_YAML_VALUES` values are refused."""
    path = Path(path)
    text = read_text(path, error=error)
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no Python objects
    except _DuplicateKey as e:
        raise error(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: malformed YAML: {e}") from None
    except RecursionError:
        raise error(f"{path}: the YAML nests too deeply") from None
    if _count_values(data, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise error(
            f"{path}: more than {MAX_YAML_VALUES} values once its aliases expand; "
            "write the config out without YAML aliases"
        )
    return data


def read_json(path: str | os.PathLike[str], *, error: type[EvomergeError], what: str = "") -> Any:
    """JSON from a file (configs, run files), with an error naming the file and the position.

    JSON stays JSON: YAML would read ``1e-06`` as a string."""
    path = Path(path)
    label = f"{what}: {path}" if what else str(path)
    if not path.exists():
        raise error(f"{label} is missing")
    if not path.is_file():
        raise error(f"{label} is not a file")
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
        errs = e.errors()
        # an unknown key first: a misspelt key also makes the key it meant "missing"
        err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
        raise error(f"{origin}: {error_location(err, skip)}: {err['msg']}") from None

"""Sources named by Hugging Face hub id (``org/name``, ``org/name@revision``).

A hub id resolves to a snapshot directory of huggingface_hub's cache: offline when the files are
there, downloaded otherwise (unless ``HF_HUB_OFFLINE`` is set). Only what a merge reads is
fetched: safetensors weights, configs and tokenizer files; never pickles (``.bin``) nor code
(``.py``), so no checkpoint can run code here. The resolved revision (a commit hash) is returned
with each path: a run records it and resumes on the very same files.

A floor module, as :mod:`evomerge.fileio`: recipes, checkpoints and experiments use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from evomerge.errors import CheckpointError

# a checkpoint's tokenizer files (copied beside merged weights, fetched from the hub)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
# what a merge reads from a hub repository: weights as safetensors only, configs, tokenizer
ALLOW_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    *TOKENIZER_FILES,
]
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HUB_ID = re.compile(
    rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>[A-Za-z0-9][A-Za-z0-9._/-]{{0,254}}))?$"
)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class SourceError(CheckpointError):
    """A source cannot be found: a missing path, or a hub id that is neither cached nor
    downloadable."""


def parse_hub_id(ref: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision or None)`` when ``ref`` reads as a hub id, else None. Paths that
    start with ``.``, ``/`` or ``~``, ``zoo:`` names and anything with more than one ``/``
    are paths."""
    if not isinstance(ref, str) or ref.startswith((".", "/", "~", "zoo:")):
        return None
    m = _HUB_ID.match(ref)
    if m is None or "--" in m["repo"] or ".." in m["repo"]:
        return None
    return m["repo"], m["rev"]


def is_hub_id(ref: str) -> bool:
    """A hub id that is not also an existing local path (a local directory wins)."""
    return parse_hub_id(ref) is not None and not os.path.lexists(ref)


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or env.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _cache_dir() -> str | None:
    return os.environ.get("HF_HUB_CACHE") or None  # None: huggingface_hub's default


def _complete(snapshot: Path) -> bool:
    """A config and weights (pickles count here: the checkpoint reader refuses them by name)."""
    weights = (*snapshot.glob("*.safetensors"), *snapshot.glob("*.bin"))
    return (snapshot / "config.json").is_file() and bool(weights)


def resolve_hub(
    ref: str, *, revision: str | None = None, name: str | None = None
) -> tuple[Path, str]:
    """The snapshot directory of hub id ``ref`` and its commit hash. ``revision`` (a recorded
    commit, on resume) overrides the one written after ``@``. Cached files are used without the
    network; missing ones are downloaded (safetensors, configs, tokenizer) unless offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    parsed = parse_hub_id(ref)
    label = f"source {name!r}" if name else "source"
    if parsed is None:
        raise SourceError(f"{label}: {ref!r} is not a hub id (org/name or org/name@revision)")
    repo, rev = parsed
    rev = revision or rev or "main"
    where = f"{label}: hub id {repo!r} (revision {rev})"
    snapshot: Path | None = None
    try:
        snapshot = Path(
            snapshot_download(repo, revision=rev, local_files_only=True, cache_dir=_cache_dir())
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, HFValidationError):
        snapshot = None
    if snapshot is None or not _complete(snapshot):
        if _offline():
            state = "is incomplete" if snapshot is not None else "is not"
            raise SourceError(
                f"{where} {state} in the Hugging Face cache ({_cache_dir() or 'default'}) and "
                "HF_HUB_OFFLINE forbids a download"
            )
        try:
            snapshot = Path(
                snapshot_download(
                    repo, revision=rev, allow_patterns=ALLOW_PATTERNS, cache_dir=_cache_dir()
                )
            )
        except (RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise SourceError(f"{where}: not found on the hub ({type(e).__name__})") from None
        except (OSError, HFValidationError, ValueError) as e:
            raise SourceError(f"{where}: cannot download it: {type(e).__name__}: {e}") from None
    commit = snapshot.name
    if not _COMMIT.match(commit):
        raise SourceError(f"{where}: resolved to {snapshot}, not a cache snapshot")
    if revision is not None and _COMMIT.match(revision) and commit != revision:
        raise SourceError(f"{where}: the cache gave commit {commit}, not the recorded one")
    return snapshot, commit


def resolve_sources(
    sources: Mapping[str, str],
    *,
    zoo: str | os.PathLike[str] | None = None,
    revisions: Mapping[str, str] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Every source as a local path: ``zoo:NAME`` in the tiny zoo, hub ids through the Hugging
    Face cache, paths as they are. Returns ``(paths, revisions)``: the commit hash of each hub
    source, to record in a run so that a resume (passing them back as ``revisions``) reads the
    very same files even if the repository moved on."""
    paths: dict[str, str] = {}
    revs: dict[str, str] = {}
    for key, ref in sources.items():
        if not isinstance(ref, str):
            raise SourceError(f"source {key!r}: expected a path or hub id, got {ref!r}")
        if ref.startswith("zoo:"):
            if zoo is None:
                raise SourceError(f"source {key!r}: {ref!r} names the tiny zoo; pass its dir")
            paths[key] = str(Path(zoo) / ref[4:])
        elif is_hub_id(ref):
            path, revs[key] = resolve_hub(ref, revision=(revisions or {}).get(key), name=key)
            paths[key] = str(path)
        else:
            paths[key] = ref
    return paths, revs

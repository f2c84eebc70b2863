"""Hugging Face checkpoints as merge sources and outputs.

Sources are read lazily through ``safe_open`` (memory-mapped) so a merge touches one tensor name
at a time, never whole models. Layer structure is discovered from tensor names (the ``layers.N``
/ ``h.N`` / ``blocks.N`` families), so any family's blocks can be counted and routed; which
tensors are attention, MLP, norms... comes from the family's table in
:mod:`evomerge.architectures` (guessed from names for a family without one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from evomerge import dtypes
from evomerge.architectures import Architecture, ModuleKind, architecture_of, module_kind
from evomerge.errors import CheckpointError, IncompatibleSourcesError, OutputExistsError
from evomerge.fileio import read_json, replace_dir
from evomerge.hub import TOKENIZER_FILES, is_hub_id, resolve_hub
from evomerge.killpoints import kill_point

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# Config keys that must agree for tensors of the same name to mean the same thing.
_KEY_CONFIG_FIELDS = (
    "model_type",
    "hidden_size",
    "n_embd",
    "d_model",
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "n_inner",
    "vocab_size",
    "tie_word_embeddings",
)
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_LAYER_RE = re.compile(r"(^|\.)(layers|h|blocks|layer)\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The transformer block a tensor belongs to, or None for embeddings, final norm and head."""
    m = _LAYER_RE.search(name)
    return int(m.group(3)) if m else None


def rename_layer(name: str, new_index: int) -> str:
    """The same tensor moved to block ``new_index`` (routing renumbers output layers)."""
    m = _LAYER_RE.search(name)
    if m is None:
        raise ValueError(f"tensor {name!r} belongs to no layer")
    return f"{name[: m.start(3)]}{new_index}{name[m.end(3) :]}"


def layer_count_key(config: Mapping[str, Any]) -> str | None:
    """The config key that holds the depth (it differs across families)."""
    return next((k for k in _LAYER_COUNT_KEYS if k in config), None)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    file: str
    layer: int | None
    kind: ModuleKind

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        """Bytes the tensor takes in its stored dtype (4 per element where the dtype is unknown)."""
        try:
            size = dtypes.itemsize(self.dtype)
        except KeyError:
            size = 4
        return self.numel * size


def _identity(file: Path) -> tuple[int, int, int]:
    st = file.stat()  # through links: a hub snapshot's blob
    return st.st_ino, st.st_size, st.st_mtime_ns


class ModelSource:
    """One checkpoint directory opened for lazy, per-tensor reads.

    Pickle checkpoints (``.bin``) can execute code when loaded, so they are refused unless
    ``allow_pickle`` is set; even then they are read with ``weights_only=True``.
    """

    def __init__(self, path: str | Path, *, name: str | None = None, allow_pickle: bool = False):
        self.path = Path(path)
        self.name = name or self.path.name
        self.revision: str | None = None  # the commit hash of a hub source
        if not self.path.is_dir() and is_hub_id(str(path)):
            self.path, self.revision = resolve_hub(str(path), name=self.name)
        if not self.path.is_dir():
            raise CheckpointError(f"source {self.name!r}: {self.path} is not a directory")
        self.config = self._read_config()
        _refuse_remote_code(self.config, f"source {self.name!r}: {self.path / 'config.json'}")
        self.architecture: Architecture | None = architecture_of(self.config)
        self._handles: dict[str, Any] = {}
        # tensors read so far: views into the files' memory maps (safetensors copies nothing
        # on the CPU), kept so that a search's every candidate does not build them again
        self._views: dict[str, torch.Tensor] = {}
        self._stats: dict[Path, tuple[int, int, int]] = {}  # (inode, size, mtime) when opened
        self._pickled: dict[str, torch.Tensor] | None = None
        self._expected: set[str] = set()
        self.tensors: dict[str, TensorInfo] = {}
        files = self._weight_files(allow_pickle)
        if self._pickled is None:
            for file in files:
                self._index_safetensors(file)
        missing = self._expected - set(self.tensors)
        if missing:
            raise CheckpointError(
                f"source {self.name!r}: tensor {sorted(missing)[0]!r} is named in "
                f"{SAFETENSORS_INDEX} but absent from its shard ({len(missing)} missing)"
            )
        if not self.tensors:
            raise CheckpointError(f"source {self.name!r}: no tensors found in {self.path}")
        layers = {t.layer for t in self.tensors.values() if t.layer is not None}
        self.num_layers = max(layers) + 1 if layers else 0
        key = layer_count_key(self.config)
        if key is not None and layers and int(self.config[key]) != self.num_layers:
            raise CheckpointError(
                f"source {self.name!r}: config.json says {key}={self.config[key]} but the "
                f"weights hold {self.num_layers} layers ({self.path})"
            )

    # -- discovery --------------------------------------------------------------------------
    def _read_config(self) -> dict[str, Any]:
        cfg = read_json(
            self.path / "config.json", error=CheckpointError, what=f"source {self.name!r}"
        )
        if not isinstance(cfg, dict):
            raise CheckpointError(
                f"source {self.name!r}: {self.path / 'config.json'} is not a mapping"
            )
        return cfg

    def _weight_files(self, allow_pickle: bool) -> list[Path]:
        index = self.path / SAFETENSORS_INDEX
        if index.exists():
            return self._files_from_index(index)
        single = self.path / SAFETENSORS_SINGLE
        if single.exists():
            return [single]
        loose = sorted(self.path.glob("*.safetensors"))
        if loose:
            return loose
        pickles = [self.path / PICKLE_SINGLE, self.path / PICKLE_INDEX]
        if any(p.exists() for p in pickles):
            if not allow_pickle:
                raise CheckpointError(
                    f"source {self.name!r}: {self.path} holds only pickle weights (.bin), which "
                    "can run code when loaded; convert to safetensors or opt in with allow_pickle"
                )
            self._load_pickle(pickles)
            return []
        raise CheckpointError(f"source {self.name!r}: no safetensors weights in {self.path}")

    def _files_from_index(self, index: Path) -> list[Path]:
        data = read_json(index, error=CheckpointError, what=f"source {self.name!r}")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise CheckpointError(
                f"source {self.name!r}: {index}: weight_map: expected a mapping of tensor "
                "names to shard file names"
            )
        files = sorted(set(weight_map.values()))
        for f in files:
            self._inside(self.path / f, f"{index}: weight_map")
            if not (self.path / f).exists():
                raise CheckpointError(
                    f"source {self.name!r}: shard {f} named in {index} is missing"
                )
        self._expected = set(weight_map)
        return [self.path / f for f in files]

    def _inside(self, file: Path, where: str) -> None:
        """Refuse a weight file (or a link) that leads out of the checkpoint directory."""
        root = self.path.resolve()
        if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
            root = root.parent.parent  # a hub cache snapshot: its files link into ../../blobs
        target = file.resolve()
        if root not in target.parents:
            raise CheckpointError(
                f"source {self.name!r}: {where}: {file.name} leads outside {self.path} "
                f"(to {target})"
            )

    def _index_safetensors(self, file: Path) -> None:
        self._inside(file, "weights")
        _check_header(file, f"source {self.name!r}")
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"source {self.name!r}: cannot read {file}: {e}") from e
        self._handles[file.name] = handle
        self._stats[file] = _identity(file)
        for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
            sl = handle.get_slice(key)
            self.tensors[key] = TensorInfo(
                name=key,
                shape=tuple(sl.get_shape()),
                dtype=str(sl.get_dtype()),
                file=file.name,
                layer=layer_index(key),
                kind=module_kind(key, self.architecture),
            )

    def _load_pickle(self, candidates: list[Path]) -> None:
        state: dict[str, torch.Tensor] = {}
        if candidates[1].exists():
            data = read_json(candidates[1], error=CheckpointError, what=f"source {self.name!r}")
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"source {self.name!r}: {candidates[1]}: no weight_map")
            files = sorted({str(v) for v in weight_map.values()})
        else:
            files = [candidates[0].name]
        for f in files:
            self._inside(self.path / f, "weights")
            try:
                loaded = torch.load(self.path / f, map_location="cpu", weights_only=True)
            except Exception as e:  # torch raises many kinds for a bad or hostile pickle
                raise CheckpointError(
                    f"source {self.name!r}: cannot read {self.path / f}: {type(e).__name__}: {e}"
                ) from None
            if not isinstance(loaded, dict) or not all(
                isinstance(t, torch.Tensor) for t in loaded.values()
            ):
                raise CheckpointError(f"source {self.name!r}: {f} is not a state dict of tensors")
            state.update(loaded)
        self._pickled = state
        for key, t in state.items():
            self.tensors[key] = TensorInfo(
                key,
                tuple(t.shape),
                str(t.dtype),
                "pickle",
                layer_index(key),
                module_kind(key, self.architecture),
            )

    # -- reads ------------------------------------------------------------------------------
    def get(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """One tensor, on the CPU a view into the file's memory map (not to be written to)."""
        t = self._views.get(name)
        if t is None:
            info = self.tensors.get(name)
            if info is None:
                raise CheckpointError(
                    f"source {self.name!r}: tensor {name!r} is absent ({self.path})"
                )
            if self._pickled is not None:
                t = self._pickled[name]
            else:
                t = self._views[name] = self._handles[info.file].get_tensor(name)
        return t.to(device) if str(device) != "cpu" else t

    def check_unchanged(self) -> None:
        """Refuse to read on when a weight file was deleted, replaced, truncated or rewritten
        since it was opened: the memory map would give stale tensors, or kill the process
        (SIGBUS) on pages cut off. A few ``stat`` calls; the search loop makes them before each
        candidate."""
        for file, seen in self._stats.items():
            try:
                now = _identity(file)
            except OSError as e:
                raise CheckpointError(
                    f"source {self.name!r}: {file} is gone since the run opened it ({e.strerror})"
                ) from None
            if now != seen:
                what = "truncated" if now[1] < seen[1] else "replaced or rewritten"
                raise CheckpointError(
                    f"source {self.name!r}: {file} was {what} since the run opened it "
                    f"({seen[1]} → {now[1]} bytes)"
                )

    def layer_tensors(self, layer: int) -> list[str]:
        return [n for n, t in self.tensors.items() if t.layer == layer]

    def non_layer_tensors(self) -> list[str]:
        return [n for n, t in self.tensors.items() if t.layer is None]

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def close(self) -> None:
        self._handles.clear()
        self._views.clear()
        self._pickled = None

    def __enter__(self) -> ModelSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ModelSource({self.name!r}, {str(self.path)!r}, layers={self.num_layers})"


def _refuse_remote_code(config: Mapping[str, Any], where: str) -> None:
    """A config whose ``auto_map`` points at the repository's own code, for a ``model_type``
    transformers does not know, can only be loaded with ``trust_remote_code``, which evomerge
    never sets: refused here, before anything is read or merged. (Known families carrying a
    stale ``auto_map`` load with transformers' own classes and are accepted.)"""
    auto_map = config.get("auto_map")
    if not auto_map:
        return
    model_type = config.get("model_type")
    if isinstance(model_type, str):
        from transformers import CONFIG_MAPPING

        if model_type in CONFIG_MAPPING:
            return
    raise CheckpointError(
        f"{where}: auto_map: model_type {model_type!r} needs the repository's own code "
        "(trust_remote_code), which evomerge never runs"
    )


def check_compatible(
    sources: Mapping[str, ModelSource],
    tensors: Iterable[str] | None = None,
    *,
    vocab_tensors: Iterable[str] = (),
) -> None:
    """Fail before any compute if the sources cannot be merged tensor by tensor.

    ``tensors`` restricts the name/shape check (routing may only touch some layers); the
    architecture check always runs. ``vocab_tensors`` (re-indexed to one vocabulary before the
    merge) may differ in their first dimension, and then ``vocab_size`` may differ too.
    """
    loose = set(vocab_tensors)
    items = list(sources.items())
    if not items:
        raise IncompatibleSourcesError("no sources given")
    ref_name, ref = items[0]
    ref_arch = ref.config.get("architectures")
    for name, src in items[1:]:
        arch = src.config.get("architectures")
        if ref_arch and arch and ref_arch != arch:
            raise IncompatibleSourcesError(
                f"source {name!r} ({src.path}) is {arch} but source {ref_name!r} is {ref_arch}"
            )
        for key in _KEY_CONFIG_FIELDS:
            if key == "vocab_size" and loose:
                continue
            a, b = ref.config.get(key), src.config.get(key)
            if a is not None and b is not None and a != b:
                raise IncompatibleSourcesError(
                    f"config.json field {key!r} differs: source {ref_name!r} has {a}, "
                    f"source {name!r} has {b} ({src.path})"
                )
    names = list(tensors) if tensors is not None else sorted(ref.tensors)
    wanted = set(names)
    for name, src in items:
        if tensors is None and src is not ref:
            extra = set(src.tensors) - wanted
            if extra:
                raise IncompatibleSourcesError(
                    f"tensor {sorted(extra)[0]!r} is in source {name!r} ({src.path}) but absent "
                    f"from source {ref_name!r} ({len(extra)} such tensors)"
                )
        for t in names:
            info = src.tensors.get(t)
            if info is None:
                raise IncompatibleSourcesError(
                    f"tensor {t!r} is absent from source {name!r} ({src.path})"
                )
            ref_info = ref.tensors.get(t)
            if t in loose and ref_info is not None and ref_info.shape[1:] == info.shape[1:]:
                continue
            if ref_info is not None and ref_info.shape != info.shape:
                raise IncompatibleSourcesError(
                    f"tensor {t!r}: source {ref_name!r} has shape {list(ref_info.shape)}, "
                    f"source {name!r} has shape {list(info.shape)}"
                )


_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def _check_header(file: Path, label: str) -> None:
    """A safetensors file starts with its header's length (8 bytes, little-endian): refuse a
    length that exceeds the limit or the file before anything reads or allocates it."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        raise CheckpointError(f"{label}: cannot read {file}: {e.strerror}") from None
    if len(head) < 8:
        raise CheckpointError(f"{label}: {file} is not a safetensors file ({size} bytes)")
    n = int.from_bytes(head, "little")
    if n > _MAX_HEADER or n > size - 8:
        raise CheckpointError(
            f"{label}: {file}: the header claims {n} bytes but the file has {size}; "
            "not a valid safetensors file"
        )


class CheckpointWriter:
    """Write a Hugging Face checkpoint shard by shard, atomically.

    Everything goes to a temporary sibling directory that is renamed onto ``out_dir`` only in
    :meth:`finish`, so a crash never leaves a half-written checkpoint under the final name.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        config: Mapping[str, Any],
        max_shard_size: int = 5 * 1024**3,
        overwrite: bool = False,
    ):
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not overwrite:
            raise OutputExistsError(
                f"output directory {self.out_dir} exists; choose another or pass overwrite"
            )
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.out_dir.name}.tmp-", dir=self.out_dir.parent)
        )
        self._config = dict(config)
        self._max = max_shard_size
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._ptrs: set[int] = set()  # storages of the pending tensors
        self._shards: list[list[str]] = []
        self._total = 0
        self._done = False

    def add(self, name: str, tensor: torch.Tensor) -> None:
        t = tensor.detach().to("cpu").contiguous()
        size = t.numel() * t.element_size()
        if self._pending and self._pending_bytes + size > self._max:
            self._flush()
        if t.data_ptr() in self._ptrs:  # a routed layer used twice: safetensors stores copies
            t = t.clone()
        self._ptrs.add(t.data_ptr())
        self._pending[name] = t
        self._pending_bytes += size
        self._total += size

    def _flush(self) -> None:
        if not self._pending:
            return
        idx = len(self._shards)
        save_file(
            self._pending, str(self._tmp / f"shard-{idx:05d}.part"), metadata={"format": "pt"}
        )
        self._shards.append(list(self._pending))
        kill_point("export")  # the crash-safety sweep: a shard written, the directory not moved
        self._pending = {}
        self._pending_bytes = 0
        self._ptrs = set()

    def finish(
        self,
        *,
        num_layers: int | None = None,
        tokenizer_from: Path | None = None,
        model_card: str | None = None,
        extra_files: Mapping[str, str] | None = None,
    ) -> Path:
        """Write index, config, tokenizer, card and ``extra_files`` (name → text), then move
        the checkpoint into place."""
        self._flush()
        n = len(self._shards)
        weight_map: dict[str, str] = {}
        for i, names in enumerate(self._shards):
            final = SAFETENSORS_SINGLE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self._tmp / f"shard-{i:05d}.part", self._tmp / final)
            weight_map.update(dict.fromkeys(names, final))
        if n > 1:
            index = {"metadata": {"total_size": self._total}, "weight_map": weight_map}
            (self._tmp / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))
        config = dict(self._config)
        if num_layers is not None:
            config[layer_count_key(config) or "num_hidden_layers"] = num_layers
            for key in ("layer_types", "block_types"):  # per-layer lists must follow the depth
                if isinstance(config.get(key), list) and config[key]:
                    config[key] = (config[key] * num_layers)[:num_layers]
        (self._tmp / "config.json").write_text(json.dumps(config, indent=2))
        if tokenizer_from is not None:
            for f in (*TOKENIZER_FILES, "generation_config.json"):
                if (Path(tokenizer_from) / f).exists():
                    shutil.copy2(Path(tokenizer_from) / f, self._tmp / f)
        if model_card is not None:
            (self._tmp / "README.md").write_text(model_card)
        for name, text in (extra_files or {}).items():
            (self._tmp / name).write_text(text)
        # mkdtemp made the directory private (0700) and safetensors writes 0600 files: the
        # checkpoint gets the modes the user's umask gives any new file
        mask = _umask()
        for f in self._tmp.iterdir():
            os.chmod(f, 0o666 & ~mask)
        os.chmod(self._tmp, 0o777 & ~mask)
        replace_dir(self._tmp, self.out_dir)  # an existing out_dir (overwrite allowed) is swapped
        self._done = True
        return self.out_dir

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._done = True

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if not self._done:
            self.abort()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def iter_state(source: ModelSource) -> Iterator[tuple[str, torch.Tensor]]:
    """All tensors of a source, one at a time (tests and tools compare whole checkpoints)."""
    for name in source.tensors:
        yield name, source.get(name)


def num_layers(
    sources: Mapping[str, str | os.PathLike[str]], base: str | None, *, loose_vocab: bool = False
) -> int:
    """The layer count every source shares (``base``'s, else the first source's).

    Raises IncompatibleSourcesError when the sources cannot be merged tensor by tensor
    (``loose_vocab``: their vocabularies may differ, as a tokenizer_source re-indexes them).
    """
    opened = {n: ModelSource(p, name=n) for n, p in sources.items()}
    ref = opened[base] if base else next(iter(opened.values()))
    vocab = [n for n, i in ref.tensors.items() if i.kind.value in ("embedding", "head")]
    check_compatible({ref.name: ref, **opened}, vocab_tensors=vocab if loose_vocab else ())
    return ref.num_layers

"""Sources named by hub id resolve through a Hugging Face cache laid out as huggingface_hub lays
it out (``models--org--name/{refs,snapshots,blobs}``), offline; the commit is recorded."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from models import make_model
from typer.testing import CliRunner

from evomerge.checkpoint import ModelSource
from evomerge.cli import app
from evomerge.errors import CheckpointError
from evomerge.experiment import Experiment
from evomerge.hub import SourceError, is_hub_id, parse_hub_id, resolve_sources

ROOT = Path(__file__).resolve().parent.parent


def _cache_repo(cache: Path, repo: str, model: Path, *, ref: str = "main") -> str:
    """Lay ``model``'s files out as a cached snapshot: blobs named by content, snapshot links."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    sha = hashlib.sha1(f"{repo}{ref}".encode()).hexdigest()
    snap = storage / "snapshots" / sha
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in model.iterdir():
        blob = storage / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / ref).write_text(sha)
    return sha


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("hub")
    model = make_model(root / "tiny", 0)
    sha = _cache_repo(root / "cache", "org/tiny", model)
    pkl = root / "pickled"
    pkl.mkdir()
    (pkl / "config.json").write_text((model / "config.json").read_text())
    (pkl / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")  # a pickle: never loaded
    _cache_repo(root / "cache", "org/pickled", pkl)
    return root / "cache", sha


@pytest.fixture
def offline(hub: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub[0]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def test_hub_ids_are_told_from_paths() -> None:
    assert parse_hub_id("mistralai/Mistral-7B-v0.1") == ("mistralai/Mistral-7B-v0.1", None)
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    for path in ("./qwen2.5-7b-ja-sft", "/models/base", "zoo:base", "a/b/c", "base", "~/m"):
        assert not is_hub_id(path), path
    for name in ("sakana-jp-math-ps", "sakana-jp-math-dfs", "math-code-language-front"):
        exp = Experiment.load(ROOT / "experiments" / f"{name}.yaml")
        hubs = [s for s in exp.sources.values() if is_hub_id(s)]
        assert hubs, name  # the real-scale experiments name hub ids


def test_resolve_offline_records_the_commit(offline: tuple[Path, str], tmp_path: Path) -> None:
    cache, sha = offline
    paths, revs = resolve_sources(
        {"base": "org/tiny", "local": str(tmp_path), "z": "zoo:base"}, zoo=tmp_path / "zoo"
    )
    assert Path(paths["base"]) == cache / "models--org--tiny" / "snapshots" / sha
    assert paths["local"] == str(tmp_path) and paths["z"] == str(tmp_path / "zoo" / "base")
    assert revs == {"base": sha}
    # a resume asks for the recorded commit: the same files, by hash or written after @
    assert resolve_sources({"base": "org/tiny"}, revisions=revs)[0] == {"base": paths["base"]}
    assert resolve_sources({"base": f"org/tiny@{sha}"})[1] == revs
    src = ModelSource("org/tiny", name="base")  # blobs are links out of the snapshot: allowed
    assert src.revision == sha and src.num_layers == 3
    exp = Experiment.parse(
        {
            "name": "h",
            "sources": {"base": "org/tiny"},
            "space": "linear-per-layer",
            "objectives": [{"task": "rev9"}],
            "budget": 1,
        }
    )
    assert exp.resolved_sources(None) == {"base": paths["base"]}


def test_missing_ids_and_revisions_name_the_source(offline: tuple[Path, str]) -> None:
    with pytest.raises(SourceError, match=r"source 'm': hub id 'org/absent' .*HF_HUB_OFFLINE"):
        resolve_sources({"m": "org/absent"})
    with pytest.raises(SourceError, match=r"source 'm': hub id 'org/tiny' \(revision 0{40}\)"):
        resolve_sources({"m": "org/tiny"}, revisions={"m": "0" * 40})
    with pytest.raises(SourceError, match=r"'org/tiny' \(revision v9\)"):
        ModelSource("org/tiny@v9", name="m")


def test_pickle_snapshots_are_refused(offline: tuple[Path, str]) -> None:
    with pytest.raises(CheckpointError, match=r"source 'p': .* holds only pickle weights"):
        ModelSource("org/pickled", name="p", allow_pickle=False)


def test_merge_a_recipe_naming_hub_ids(offline: tuple[Path, str], tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "method: linear\nsources:\n  a: org/tiny\n  b: {path: org/tiny, parameters: {weight: 2}}\n"
    )
    res = CliRunner().invoke(app, ["merge", str(tmp_path / "r.yaml"), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "model.safetensors").exists()
    (tmp_path / "s.yaml").write_text("method: linear\nsources:\n  a: org/absent\n")
    res = CliRunner().invoke(app, ["merge", str(tmp_path / "s.yaml"), str(tmp_path / "o2")])
    assert res.exit_code == 2 and "'org/absent'" in res.output, res.output
    assert not (tmp_path / "o2").exists()

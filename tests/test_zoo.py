"""The tiny zoo: layout, loadable checkpoints, held-out items, determinism, cache, recorded scores.

Uses the session's `unit_zoo` (the unit preset, built once by conftest.py).
"""

from __future__ import annotations

import copy
import json
import os
import string
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import evomerge.zoo.build as zoo_build
from evomerge.errors import EvomergeError, OutputExistsError
from evomerge.zoo import (
    AVERAGE,
    CROSS_TASKS,
    SKILLS,
    TASKS,
    ZooReport,
    average_state_dicts,
    build_tokenizer,
    build_zoo,
    evaluate_exact_match,
    evaluate_token_accuracy,
    exact_match_scores,
    load_task_items,
    load_zoo_report,
    score_model,
    teacher_forced_scores,
    zoo_is_built,
)
from evomerge.zoo.skills import GENERIC_TASKS, held_out_items, is_held_out, sample_mixture
from evomerge.zoo.train import collate, encode

ALL_TASKS = [*SKILLS, *CROSS_TASKS]


def _model_dirs(zoo: Path) -> list[Path]:
    return [zoo / "base", *(zoo / "experts" / s for s in SKILLS)]


def _load(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_layout(unit_zoo: Path) -> None:
    assert zoo_is_built(unit_zoo)
    report = load_zoo_report(unit_zoo)
    assert (report.preset, report.seed) == ("unit", 0)
    assert report.skills == list(SKILLS) and len(SKILLS) >= 3
    assert {"rev9", "shift3", "add1"} <= set(SKILLS)
    assert report.cross_tasks == list(CROSS_TASKS) and CROSS_TASKS
    for d in _model_dirs(unit_zoo):
        for name in ("config.json", "generation_config.json", "model.safetensors"):
            assert (d / name).is_file(), d / name
        assert (d / "tokenizer.json").is_file() and (d / "tokenizer_config.json").is_file()
        assert not list(d.glob("*.bin")), "no pickle checkpoints"
    for task in ALL_TASKS:
        assert (unit_zoo / "tasks" / f"{task}.jsonl").is_file()
        assert report.tasks[task].items >= 200
    assert set(report.scores) == {*report.models, AVERAGE}
    assert set(report.models.values()) == {"base", *(f"experts/{s}" for s in SKILLS)}
    for row in report.scores.values():
        assert set(row) == set(ALL_TASKS)
    assert not list(unit_zoo.parent.glob(".*building*")), "no leftover temporary build"


def test_checkpoints_load_and_generate(unit_zoo: Path) -> None:
    for d in _model_dirs(unit_zoo):
        tok = AutoTokenizer.from_pretrained(d)
        model = _load(d)
        assert model.config.architectures == ["LlamaForCausalLM"]
        assert not model.config.tie_word_embeddings
        assert model.generation_config.eos_token_id == tok.eos_token_id
        assert model.generation_config.pad_token_id == tok.pad_token_id
        batch = tok(["rev:abcdef=", "add:123="], return_tensors="pt", padding=True)
        out = model.generate(**batch, max_new_tokens=12, do_sample=False)
        assert out.shape[0] == 2 and out.shape[1] > batch["input_ids"].shape[1]
        assert all(isinstance(s, str) for s in tok.batch_decode(out, skip_special_tokens=True))


def test_tokenizer_round_trip(unit_zoo: Path) -> None:
    saved = AutoTokenizer.from_pretrained(unit_zoo / "base")
    fresh = build_tokenizer()
    text = string.ascii_lowercase + string.digits + ":=+ " + "rev:hello world=dlrow olleh"
    for tok in (saved, fresh):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)
        assert ids == encode(text), "training ids must equal the tokenizer's"
        assert tok.decode(ids) == text
        assert tok.decode([*ids, tok.eos_token_id], skip_special_tokens=True) == text
        assert tok("A")["input_ids"] == [tok.unk_token_id]
        assert len({tok.pad_token_id, tok.eos_token_id, tok.unk_token_id}) == 3
    assert len(saved) == len(fresh) == _load(unit_zoo / "base").config.vocab_size


@pytest.mark.parametrize("task", ALL_TASKS)
def test_held_out_items(unit_zoo: Path, task: str) -> None:
    items = load_task_items(unit_zoo, task)
    assert len(items) == load_zoo_report(unit_zoo).tasks[task].items
    assert [it.id for it in items] == [f"{task}-{i:05d}" for i in range(len(items))]
    assert len({it.prompt for it in items}) == len(items), "prompts are unique"
    spec = TASKS[task]
    for it in items:
        assert it.prompt.startswith(spec.prefix + ":") and it.prompt.endswith("=")
        assert is_held_out(task, it.prompt), "file holds only the held-out side of the split"
    # Stable ids: the same seed regenerates the same items; a smaller pool is a prefix.
    assert held_out_items(task, len(items), seed=0) == items
    assert held_out_items(task, 17, seed=0) == items[:17]
    # The lines are exactly {"id", "prompt", "answer"} objects.
    first = json.loads((unit_zoo / "tasks" / f"{task}.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "prompt", "answer"}


def test_answers_are_right() -> None:
    for it in held_out_items("rev9", 50, 0):
        word = it.prompt[len("rev:") : -1]
        assert it.answer == word[::-1] and 5 <= len(word) <= 9
    for it in held_out_items("shift3", 50, 0):
        word = it.prompt[len("shift:") : -1]
        assert it.answer == "".join(chr((ord(c) - 97 + 3) % 26 + 97) for c in word)
    for it in held_out_items("add1", 50, 0):
        number = it.prompt[len("add:") : -1]
        assert int(it.answer) == int(number) + 1 and len(it.answer) >= len(number)
    for it in held_out_items("revshift", 50, 0):
        word = it.prompt[len("revshift:") : -1]
        assert it.answer == "".join(chr((ord(c) - 97 + 3) % 26 + 97) for c in word[::-1])


def test_training_stream_never_emits_held_out_items(unit_zoo: Path) -> None:
    held = {it.prompt for t in ALL_TASKS for it in load_task_items(unit_zoo, t)}
    weights = dict.fromkeys([*GENERIC_TASKS, *SKILLS], 1.0)
    g = torch.Generator().manual_seed(0)
    drawn = sample_mixture(weights, 20_000, g)
    assert {TASKS[t].prefix for t in SKILLS} <= {p.split(":")[0] for p, _ in drawn}
    assert not held & {p for p, _ in drawn}
    prefix_task = {TASKS[t].prefix: t for t in TASKS}
    assert not any(is_held_out(prefix_task[p.split(":")[0]], p) for p, _ in drawn)


def test_collate_masks_all_but_the_answer() -> None:
    ids, targets = collate([("add:123=", "124"), ("rev:abcde=", "edcba")])
    tok = build_tokenizer()
    for row, (prompt, answer) in enumerate([("add:123=", "124"), ("rev:abcde=", "edcba")]):
        want = [-100] * (len(prompt) - 1) + encode(answer) + [tok.eos_token_id]
        got = targets[row].tolist()
        assert got[: len(want)] == want and set(got[len(want) :]) <= {-100}
        assert ids[row, : len(prompt)].tolist() == encode(prompt)


def test_recorded_scores_equal_a_reevaluation(unit_zoo: Path) -> None:
    report = load_zoo_report(unit_zoo)
    tok = AutoTokenizer.from_pretrained(unit_zoo / "base")
    items = {t: load_task_items(unit_zoo, t, report.eval_items) for t in ALL_TASKS}
    models = {name: _load(unit_zoo / rel) for name, rel in report.models.items()}
    average = copy.deepcopy(models["base"])
    experts = [models[f"experts/{s}"].state_dict() for s in SKILLS]
    average.load_state_dict(average_state_dicts(experts))
    models[AVERAGE] = average
    for name, model in models.items():
        again = score_model(model, tok, items, report.eval_batch_size)
        for task in ALL_TASKS:
            rec, new = report.scores[name][task], again[task]
            assert new.exact_match == pytest.approx(rec.exact_match, abs=1e-9), (name, task)
            assert new.token_accuracy == pytest.approx(rec.token_accuracy, abs=1e-6), (name, task)
            assert new.mean_logprob == pytest.approx(rec.mean_logprob, abs=1e-4), (name, task)
    # The public float helpers agree with the per-item scores.
    base, rows = models["base"], items["add1"]
    assert evaluate_exact_match(base, tok, rows) == pytest.approx(
        report.scores["base"]["add1"].exact_match
    )
    assert evaluate_token_accuracy(base, tok, rows, batch_size=7) == pytest.approx(
        report.scores["base"]["add1"].token_accuracy, abs=1e-6
    )


def test_batched_greedy_matches_generate(unit_zoo: Path) -> None:
    """Items whose answers are the model's own `generate` output must score 1.0 everywhere."""
    tok = AutoTokenizer.from_pretrained(unit_zoo / "experts" / "add1")
    model = _load(unit_zoo / "experts" / "add1")
    prompts = [it.prompt for t in ALL_TASKS for it in load_task_items(unit_zoo, t, 8)]
    own = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1] :].tolist()
        if tok.eos_token_id in out and out.index(tok.eos_token_id) > 0:
            own.append({"prompt": prompt, "answer": tok.decode(out[: out.index(tok.eos_token_id)])})
    assert len(own) >= len(prompts) // 2
    assert exact_match_scores(model, tok, own, batch_size=5) == [1.0] * len(own)
    assert teacher_forced_scores(model, tok, own).token_accuracy == [1.0] * len(own)
    wrong = [{"prompt": r["prompt"], "answer": r["answer"] + "x"} for r in own]
    assert evaluate_exact_match(model, tok, wrong) == 0.0
    assert (
        evaluate_exact_match(
            model,
            tok,
            [
                {"prompt": r["prompt"], "answer": r["answer"][:-1]}
                for r in own
                if len(r["answer"]) > 1
            ],
        )
        == 0.0
    )


def test_cache_hit_does_not_rebuild(unit_zoo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = (unit_zoo / "zoo.json").stat().st_mtime_ns

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(zoo_build, "_build_into", boom)
    report = build_zoo(unit_zoo, preset="unit", seed=0)
    assert isinstance(report, ZooReport) and report == load_zoo_report(unit_zoo)
    assert (unit_zoo / "zoo.json").stat().st_mtime_ns == before
    with pytest.raises(OutputExistsError):
        build_zoo(unit_zoo, preset="unit", seed=1)
    with pytest.raises(EvomergeError):
        build_zoo(unit_zoo, preset="no-such-preset")


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        build_zoo(tmp_path, preset="unit")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not zoo_is_built(tmp_path)


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> float:
        raise RuntimeError("interrupted")

    abandoned = tmp_path / ".zoo.building-999999999-deadbeef"  # its process is gone
    live = tmp_path / f".zoo.building-{os.getpid()}-cafecafe"  # a build still running
    abandoned.mkdir()
    live.mkdir()
    monkeypatch.setattr(zoo_build, "train", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        build_zoo(tmp_path / "zoo", preset="unit")
    assert list(tmp_path.iterdir()) == [live]


@pytest.mark.slow
def test_same_seed_builds_identical_zoo(unit_zoo: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    report = build_zoo(again, preset="unit", seed=0)
    first = load_zoo_report(unit_zoo)
    assert report.scores == first.scores
    for rel in first.models.values():
        a = load_file(unit_zoo / rel / "model.safetensors")
        b = load_file(again / rel / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (rel, key)
    for info in first.tasks.values():
        assert (unit_zoo / info.file).read_bytes() == (again / info.file).read_bytes()
    # The base and each expert really differ (the experts were trained).
    base = load_file(unit_zoo / "base" / "model.safetensors")
    expert = load_file(unit_zoo / "experts" / SKILLS[0] / "model.safetensors")
    assert any(not torch.equal(base[k], expert[k]) for k in base)

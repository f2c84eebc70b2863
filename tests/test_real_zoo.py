"""The real-model zoo's parts on a 2-layer truncation of SmolLM2-135M-Instruct: the GGUF
conversion against transformers' own GGUF load, the fine-tuning loss against transformers' own
loss, exact resume of a killed fine-tune, and the chat skills' split and answers."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from models import unit_real_preset
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.evaluate.tasks import Item, Task, TaskError, TaskSpec
from evomerge.zoo.chat_skills import CHAT_SKILLS, WORDS, chat_items, is_held_out, training_pairs
from evomerge.zoo.finetune import FineTunePlan, answer_loss, collate, fine_tune, render
from evomerge.zoo.gguf import convert_gguf, smollm2_gguf

LAYERS = 2


@pytest.fixture(scope="module")
def reference():
    """transformers' own GGUF load, truncated to LAYERS decoder layers by hand."""
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    model.model.layers = model.model.layers[:LAYERS]
    model.config.num_hidden_layers = LAYERS
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "base"
    convert_gguf(smollm2_gguf(), out, num_layers=LAYERS)
    return out


def test_converted_checkpoint_equals_transformers_gguf_load(reference, converted):
    ref_model, ref_tok = reference
    model = AutoModelForCausalLM.from_pretrained(converted)
    tok = AutoTokenizer.from_pretrained(converted)
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["num_hidden_layers"] == LAYERS and config["tie_word_embeddings"] is True
    with safe_open(converted / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert "lm_head.weight" not in names  # tied: stored once, as save_pretrained does
    assert len(names) == 2 + 9 * LAYERS  # embeddings, final norm; 9 tensors per Llama layer

    texts = [render(ref_tok, q) for q, _ in training_pairs("add", 0, 0, 2)]
    texts.append("Plain text, no template: 17 + 25 = 42.")
    for text in texts:
        assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]
    assert tok.chat_template == ref_tok.chat_template
    assert tok.eos_token == ref_tok.eos_token == "<|im_end|>"

    batch = ref_tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = ref_model(**batch).logits
        got = model(**batch).logits
    assert torch.equal(got, want)


def test_answer_loss_equals_transformers_loss_on_answer_labels(converted):
    model = AutoModelForCausalLM.from_pretrained(converted).eval()
    tok = AutoTokenizer.from_pretrained(converted)
    pairs = training_pairs("reverse", 0, 3, 4)
    ids, mask, targets = collate(tok, pairs)
    # the targets are the answer and eos, predicted from the position before each
    for row, (_question, answer) in enumerate(pairs):
        want = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert targets[row][targets[row] != -100].tolist() == want
    # transformers' own loss: labels at the answer's positions, shifted inside the model
    labels = torch.full_like(ids, -100)
    labels[:, 1:] = targets[:, :-1]
    with torch.no_grad():
        ours = answer_loss(model, ids, mask, targets)
        theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_killed_fine_tune_resumes_to_the_same_weights(converted, tmp_path):
    tok = AutoTokenizer.from_pretrained(converted)
    plan = FineTunePlan(steps=4, lr=1e-4, batch_size=2, warmup=1, checkpoint_every=2)

    def fresh():
        return AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)

    whole = fresh()
    fine_tune(whole, tok, "upper", plan, seed=3)

    class Killed(Exception):
        pass

    def kill_at_step_3(msg: str) -> None:
        if "step 3/" in msg:
            raise Killed

    ckpt = tmp_path / "upper.pt"
    with pytest.raises(Killed):
        fine_tune(fresh(), tok, "upper", plan, seed=3, checkpoint=ckpt, log=kill_at_step_3)
    assert torch.load(ckpt, weights_only=True)["step"] == 2
    resumed = fresh()
    fine_tune(resumed, tok, "upper", plan, seed=3, checkpoint=ckpt)
    theirs = resumed.state_dict()
    for name, a in whole.state_dict().items():
        assert torch.equal(a, theirs[name]), name
    assert not torch.equal(whole.model.norm.weight, fresh().model.norm.weight)  # it trained


@settings(max_examples=30, deadline=None)
@given(
    skill=st.sampled_from(list(CHAT_SKILLS)), seed=st.integers(0, 99), step=st.integers(0, 10**6)
)
def test_training_never_sees_a_held_out_question_and_answers_are_right(skill, seed, step):
    for question, answer in training_pairs(skill, seed, step, 8):
        assert not is_held_out(question)
        if skill == "add":
            a, b = map(int, re.findall(r"\d+", question))
            assert answer == str(a + b)
        elif skill == "reverse":
            words = question.split(": ", 1)[1].split()
            assert answer.split() == words[::-1] and set(words) <= set(WORDS)
        else:
            words = question.split(": ", 1)[1].split()
            assert answer == " ".join(w.upper() for w in words)


def test_held_out_items_are_held_out_distinct_and_a_prefix_stable_stream():
    items = chat_items("add", 60, seed=0)
    assert all(is_held_out(it.prompt) for it in items)
    assert len({it.prompt for it in items}) == 60
    assert chat_items("add", 20, seed=0) == items[:20]
    # about a fifth of all questions is held out
    rng = random.Random(0)
    questions = [CHAT_SKILLS["reverse"].make(rng)[0] for _ in range(4000)]
    assert 0.18 < sum(map(is_held_out, questions)) / len(questions) < 0.23


def test_chat_task_renders_through_the_tokenizer_template(converted):
    tok = AutoTokenizer.from_pretrained(converted)
    spec = TaskSpec(name="t", kind="logprob", items="x.jsonl", chat=True, append_eos=True)
    item = Item(id="0", prompt="What is 2 + 3?", answer="5")
    task = Task(spec, [item], origin="t.yaml")
    [[req]] = task.loglikelihood_requests(tok, [item], 2048)
    assert tok.decode(req.context) == render(tok, "What is 2 + 3?")
    assert list(req.continuation) == [*tok("5", add_special_tokens=False)["input_ids"], 2]

    plain = AutoTokenizer.from_pretrained(converted)
    plain.chat_template = None
    with pytest.raises(TaskError, match=r"t\.yaml.*no chat template"):
        task.loglikelihood_requests(plain, [item], 2048)


def test_a_killed_zoo_build_continues_where_it_stopped(tmp_path):
    from evomerge.zoo.build import load_zoo_report, zoo_is_built
    from evomerge.zoo.real import build_real_zoo

    preset = unit_real_preset(held_out=12)
    out = tmp_path / "zoo"
    said: list[str] = []

    class Killed(Exception):
        pass

    def kill_in_the_last_expert(msg: str) -> None:
        said.append(msg)
        if msg.startswith("upper step 1/"):
            raise Killed

    kw = dict(preset=preset, num_layers=LAYERS, threads=1)
    with pytest.raises(Killed):
        build_real_zoo(out, log=kill_in_the_last_expert, **kw)
    assert not zoo_is_built(out)
    done = {
        s: (out / "experts" / s / "model.safetensors").stat().st_mtime_ns
        for s in ("add", "reverse")
    }
    assert not (out / "experts" / "upper").exists()

    said.clear()
    report = build_real_zoo(out, log=said.append, **kw)
    assert not any(m.startswith(("converting", "add step", "reverse step")) for m in said)
    assert any(m.startswith("upper step") for m in said)
    for s, mtime in done.items():  # finished experts are kept, not trained again
        assert (out / "experts" / s / "model.safetensors").stat().st_mtime_ns == mtime
    assert zoo_is_built(out) and not (out / ".build").exists()
    assert report == load_zoo_report(out)
    assert report.preset == f"smollm2-{LAYERS}layers" and report.skills == list(CHAT_SKILLS)
    assert set(report.scores) == {"base", *(f"experts/{s}" for s in CHAT_SKILLS), "uniform_average"}
    assert all(len(row) == 3 for row in report.scores.values())
    # built: returned from the cache, nothing converted or trained
    said.clear()
    assert build_real_zoo(out, log=said.append, **kw) == report
    assert said == [f"zoo already built at {out}"]


def test_a_search_on_the_smollm2_zoo_confirms_what_its_exported_checkpoint_scores(
    smollm2_unit_zoo, tmp_path
):
    """The real zoo's experiment end to end (2 layers): chat-rendered tasks, a tied-embedding
    merge swapped into the resident engine, the knee confirmed on held-out items; the knee
    exported as a checkpoint and scored by a fresh engine on those items gives the same."""
    import yaml

    from evomerge.evaluate.hf import HFEngine
    from evomerge.evaluate.scoring import score_task
    from evomerge.evaluate.tasks import load_task
    from evomerge.experiment import Experiment
    from evomerge.fileio import preset_dir
    from evomerge.run import lifecycle as search
    from evomerge.run.confirm import confirm
    from evomerge.run.export import export
    from evomerge.workers.local import load_objectives

    exp = yaml.safe_load((preset_dir("experiments") / "smollm2-per-layer.yaml").read_text())
    exp.update(budget=4, schedule=[{"granularity": 2, "until": 2}, {"granularity": 1}])
    exp["optimizer"] = {"name": "random", "batch": 2}
    exp["workers"] = {"threads": 1, "batch_size": 16}
    exp["objectives"] = [{**o, "estimator": "subsample:4"} for o in exp["objectives"]]
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(exp))
    s, budget = search.start(path, tmp_path / "run", zoo=smollm2_unit_zoo)
    assert s.run(budget).evaluations == 4
    knee = s.archive.knee()
    s.close()
    (held,) = confirm(tmp_path / "run", trials=[knee.number], zoo=smollm2_unit_zoo)
    model = export(knee, tmp_path / "merged", format="hf", run_dir=tmp_path / "run")
    engine = HFEngine(model, batch_size=5)
    objectives = load_objectives(Experiment.load(path), smollm2_unit_zoo)
    assert len(objectives) == 3
    for ob in objectives:
        task = load_task(ob.spec.task, zoo=smollm2_unit_zoo)
        assert held.items[ob.spec.label] == len(ob.held_out) > 0  # about a fifth of 40
        got = score_task(engine, task, ob.held_out)
        assert got.value == pytest.approx(held.scores[ob.spec.label], abs=1e-6)

"""Tasks and the transformers engine on the unit zoo: hand-checked scores, in-place swaps that
match checkpoints loaded from disk bit for bit, and clear errors for bad tasks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from evomerge.evaluate.engines import EngineError
from evomerge.evaluate.hf import HFEngine
from evomerge.evaluate.scoring import prepare, score_prepared_metrics, score_task
from evomerge.evaluate.tasks import LoglikelihoodRequest, TaskError, available_tasks, load_task
from evomerge.merge.materialize import materialize, merge_to_dir, plan
from evomerge.recipe import Recipe


@pytest.fixture(scope="module")
def engine(unit_zoo: Path) -> HFEngine:
    return HFEngine(unit_zoo / "base")


def _zoo_report(zoo: Path) -> dict:
    return json.loads((zoo / "zoo.json").read_text())


def test_zoo_tasks_are_available() -> None:
    names = available_tasks()
    for skill in ("rev9", "shift3", "add1", "revshift"):
        assert skill in names and f"{skill}-exact" in names


def test_token_accuracy_by_hand(unit_zoo: Path, engine: HFEngine) -> None:
    task = load_task("rev9", zoo=unit_zoo)
    ids = task.item_ids[:5]
    res = score_task(engine, task, ids)
    model = AutoModelForCausalLM.from_pretrained(unit_zoo / "base").eval()
    tok = engine.tokenizer
    for item in task.subset(ids):
        ctx = tok(item.fields()["prompt"], add_special_tokens=False)["input_ids"]
        ans = tok(item.fields()["answer"], add_special_tokens=False)["input_ids"]
        ans = [*ans, tok.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([ctx + ans[:-1]])).logits[0]
        pred = logits[len(ctx) - 1 :].argmax(-1).tolist()
        expected = sum(p == a for p, a in zip(pred, ans, strict=True)) / len(ans)
        assert res.scores[item.id] == pytest.approx(expected)


def test_each_logprob_metric_by_hand_from_one_pass(unit_zoo: Path, engine: HFEngine) -> None:
    """token_prob is the geometric mean of the reference tokens' softmax probabilities and acc
    whether every one is the argmax, per item, as computed here from the model's own logits."""
    task = load_task("rev9", zoo=unit_zoo)
    ids = task.item_ids[:6]
    res = score_prepared_metrics(engine, prepare(engine, task, ids), ["token_prob", "acc"])
    model = AutoModelForCausalLM.from_pretrained(unit_zoo / "base").eval()
    tok = engine.tokenizer
    for item in task.subset(ids):
        ctx = tok(item.fields()["prompt"], add_special_tokens=False)["input_ids"]
        ans = [
            *tok(item.fields()["answer"], add_special_tokens=False)["input_ids"],
            tok.eos_token_id,
        ]
        with torch.no_grad():
            logits = model(torch.tensor([ctx + ans[:-1]])).logits[0, len(ctx) - 1 :]
        probs = F.softmax(logits.double(), -1)[torch.arange(len(ans)), torch.tensor(ans)]
        assert res["token_prob"].scores[item.id] == pytest.approx(
            float(probs.prod() ** (1 / len(ans))), rel=1e-4
        )
        assert res["acc"].scores[item.id] == float(logits.argmax(-1).tolist() == ans)


def test_acc_is_one_exactly_where_greedy_decoding_gives_the_reference(
    unit_zoo: Path, engine: HFEngine, tmp_path: Path
) -> None:
    """Teacher-forced acc is greedy exact match from one pass: against greedy decoding done here
    token by token, on references that are the model's own continuation (every other item) or
    the skill's answer."""
    model = AutoModelForCausalLM.from_pretrained(unit_zoo / "base").eval()
    tok = engine.tokenizer
    rows, expected = [], {}
    for i, item in enumerate(load_task("rev9", zoo=unit_zoo).items[:12]):
        prompt = item.fields()["prompt"]
        ctx, out = tok(prompt, add_special_tokens=False)["input_ids"], []
        with torch.no_grad():
            for _ in range(5):
                out.append(int(model(torch.tensor([ctx + out])).logits[0, -1].argmax()))
        answer = tok.decode(out) if i % 2 == 0 else item.fields()["answer"]
        assert tok(answer, add_special_tokens=False)["input_ids"][:5] == out or i % 2
        rows.append({"id": f"g{i}", "prompt": prompt, "answer": answer})
        expected[f"g{i}"] = float(tok(answer, add_special_tokens=False)["input_ids"] == out)
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "greedy.yaml").write_text(
        "name: greedy\nkind: logprob\nmetric: acc\nitems: items.jsonl\n"
    )
    task = load_task(tmp_path / "greedy.yaml")
    assert score_task(engine, task).scores == expected
    assert 0 < sum(expected.values()) < len(expected)  # both outcomes: the check can fail


def test_a_metric_of_another_kind_is_refused(unit_zoo: Path, engine: HFEngine) -> None:
    task = load_task("rev9", zoo=unit_zoo)
    with pytest.raises(TaskError, match=r"rev9.*exact_match.*does not apply"):
        score_prepared_metrics(engine, prepare(engine, task, task.item_ids[:2]), ["exact_match"])


@pytest.mark.parametrize("zoo_fixture", ["unit_zoo", "unit_zoo_qwen2"])
def test_a_shared_prefix_run_once_scores_as_each_request_alone(
    zoo_fixture: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests behind one long prefix (few-shot examples) in a padded batch: the prefix's KV
    cache computed once gives each request's log-probability and greedy count as a forward pass
    over that request alone does (Llama; Qwen2 with its biases and tied head)."""
    zoo = request.getfixturevalue(zoo_fixture)
    engine = HFEngine(zoo / "base", batch_size=8)
    tok = engine.tokenizer
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefix = enc("rev9:abcdef=fedcba add1:3+4=7 ")  # the unit models' context is 64
    tails = ["rev9:xyz=", "shift3:hello=", "add1:1+2=", "rev9:abcdefghi=", "add1:8+1="]
    requests = [
        LoglikelihoodRequest(tuple(prefix + enc(t)), tuple(enc(a)))
        for t, a in zip(tails, ["zyx", "khoor", "3", "ihgfedcba", "9"], strict=True)
    ]
    calls = []
    real = HFEngine._logits_after
    monkeypatch.setattr(
        HFEngine, "_logits_after", lambda self, *a: calls.append(a[2]) or real(self, *a)
    )
    shared = engine.loglikelihood(requests)
    assert calls and calls[0] >= len(prefix)  # the shared path ran, over the whole prefix
    model = AutoModelForCausalLM.from_pretrained(zoo / "base").eval()
    for r, got in zip(requests, shared, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([list(r.context + r.continuation)[:-1]])).logits[0]
        lp = F.log_softmax(logits[len(r.context) - 1 :].double(), -1)
        cont = torch.tensor(r.continuation)
        assert got.logprob == pytest.approx(
            float(lp[torch.arange(len(cont)), cont].sum()), abs=1e-4
        )
        assert got.n_greedy == int((lp.argmax(-1) == cont).sum())
    engine.share_prefix = 0
    assert [r.n_greedy for r in engine.loglikelihood(requests)] == [r.n_greedy for r in shared]
    assert len(calls) == 1


def test_expert_scores_what_the_zoo_recorded(unit_zoo: Path, engine: HFEngine) -> None:
    """The engine's numbers on the zoo's held-out items equal those the zoo build measured."""
    report = _zoo_report(unit_zoo)
    skill = report["skills"][0]
    expert = HFEngine(unit_zoo / "experts" / skill)
    recorded = report["scores"][f"experts/{skill}"][skill]
    n = report["eval_items"]
    task = load_task(skill, zoo=unit_zoo)
    tok_acc = score_task(expert, task, task.item_ids[:n]).value
    exact = score_task(expert, load_task(f"{skill}-exact", zoo=unit_zoo), task.item_ids[:n]).value
    assert tok_acc == pytest.approx(recorded["token_accuracy"], abs=1e-6)
    assert exact == pytest.approx(recorded["exact_match"], abs=1e-9)


def test_swap_in_place_is_bit_identical_to_loading(
    unit_zoo: Path, engine: HFEngine, tmp_path: Path
) -> None:
    skills = _zoo_report(unit_zoo)["skills"]
    recipe = Recipe.from_dict(
        {
            "sources": {
                "base": str(unit_zoo / "base"),
                **{
                    s: {
                        "path": str(unit_zoo / "experts" / s),
                        "parameters": {"weight": 0.5, "density": 0.6},
                    }
                    for s in skills
                },
            },
            "method": "dare_ties",
            "base": "base",
        }
    )
    before = engine.model.get_input_embeddings().weight.data_ptr()
    engine.load_weights(materialize(plan(recipe)))
    assert engine.model.get_input_embeddings().weight.data_ptr() == before  # no new model
    from_disk = HFEngine(merge_to_dir(recipe, tmp_path / "m"))
    for name in ("rev9", "rev9-exact", "add1"):
        task = load_task(name, zoo=unit_zoo)
        ids = task.item_ids[:40]
        assert score_task(engine, task, ids).scores == score_task(from_disk, task, ids).scores
    lls_a = engine.loglikelihood(
        load_task("shift3", zoo=unit_zoo).loglikelihood_requests(
            engine.tokenizer, load_task("shift3", zoo=unit_zoo).items[:20], 64
        )[0]
    )
    lls_b = from_disk.loglikelihood(
        load_task("shift3", zoo=unit_zoo).loglikelihood_requests(
            engine.tokenizer, load_task("shift3", zoo=unit_zoo).items[:20], 64
        )[0]
    )
    assert lls_a == lls_b
    engine.load_weights(
        materialize(
            plan(Recipe.from_dict({"sources": {"b": str(unit_zoo / "base")}, "method": "linear"}))
        )
    )


def test_loglikelihood_matches_log_softmax(unit_zoo: Path, engine: HFEngine) -> None:
    from evomerge.evaluate.tasks import LoglikelihoodRequest

    reqs = [LoglikelihoodRequest((5, 6, 7), (8, 9)), LoglikelihoodRequest((5,), (6, 7, 8, 9))]
    got = engine.loglikelihood(reqs)
    for r, g in zip(reqs, got, strict=True):
        seq = torch.tensor([list(r.context) + list(r.continuation)])
        with torch.no_grad():
            lp = F.log_softmax(engine.model(seq).logits[0, :-1].float(), -1)
        want = sum(lp[len(r.context) - 1 + j, t].item() for j, t in enumerate(r.continuation))
        assert math.isclose(g.logprob, want, abs_tol=1e-4)


def test_multiple_choice_task(unit_zoo: Path, engine: HFEngine, tmp_path: Path) -> None:
    """acc and acc_norm against log-likelihoods computed by hand from the transformers model's
    logits, on distinct items whose gold answers sit at different positions."""
    words = ["abcde", "fghij", "klmno", "pqrst", "uvwxy", "zabcd"]
    items = []
    for i, w in enumerate(words):
        choices = [w[::-1], w, w[1:] + w[0]]
        gold = i % 3
        items.append({"id": f"q{i}", "q": f"rev:{w}=", "choices": choices, "gold": gold})
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    model = AutoModelForCausalLM.from_pretrained(unit_zoo / "base").eval()
    tok = engine.tokenizer

    def ll(ctx: str, cont: str) -> float:
        c = tok(ctx, add_special_tokens=False)["input_ids"]
        x = tok(cont, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = F.log_softmax(model(torch.tensor([c + x])).logits[0].double(), -1)
        return sum(lp[len(c) - 1 + j, t].item() for j, t in enumerate(x))

    for metric in ("acc", "acc_norm"):
        (tmp_path / "mc.yaml").write_text(
            "name: mc\nkind: multiple_choice\nitems: mc.jsonl\nprompt: '{q}'\nanswer: gold\n"
            f"choice_prefix: ' '\nmetric: {metric}\n"
        )
        task = load_task(tmp_path / "mc.yaml")
        res = score_task(engine, task)
        for it in items:
            vals = [ll(it["q"], " " + c) for c in it["choices"]]
            if metric == "acc_norm":
                vals = [v / len(" " + c) for v, c in zip(vals, it["choices"], strict=True)]
            best = max(range(3), key=vals.__getitem__)
            assert res.scores[it["id"]] == float(best == it["gold"]), (metric, it["id"])
        assert task.higher_is_better


# -- bad input --------------------------------------------------------------------------------
def test_task_errors(unit_zoo: Path, engine: HFEngine, tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        load_task("nope")
    (tmp_path / "t.yaml").write_text("name: t\nkind: generate\nitems: t.jsonl\n")
    (tmp_path / "t.jsonl").write_text("")
    with pytest.raises(TaskError, match="item set is empty"):
        load_task(tmp_path / "t.yaml")
    (tmp_path / "t.jsonl").write_text('{"id": "a", "prompt": "x"}\n')
    with pytest.raises(TaskError, match=r"item 'a' lacks required field\(s\) \['answer'\]"):
        load_task(tmp_path / "t.yaml")
    (tmp_path / "t.jsonl").write_text('{"id": "a", "prompt": "x", "answer": "y"}\n{"id": 3')
    with pytest.raises(TaskError, match=r"t\.jsonl:2: bad item"):
        load_task(tmp_path / "t.yaml")
    long = "a" * 200
    (tmp_path / "t.jsonl").write_text(json.dumps({"id": "long", "prompt": long, "answer": "b"}))
    with pytest.raises(TaskError, match=r"item .long..*exceeds the context"):
        score_task(engine, load_task(tmp_path / "t.yaml"))
    (tmp_path / "u.yaml").write_text("name: u\nkind: generate\nitems: t.jsonl\nmetric: acc\n")
    with pytest.raises(TaskError, match="metric 'acc' does not apply to kind 'generate'"):
        load_task(tmp_path / "u.yaml")
    with pytest.raises(TaskError, match="live in the tiny zoo"):
        load_task("rev9")


def test_engine_errors(unit_zoo: Path, engine: HFEngine, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not a parameter"):
        engine.load_weights([("model.bogus.weight", torch.zeros(1))])
    name, p = next(iter(engine.model.state_dict().items()))
    with pytest.raises(EngineError, match="does not fit"):
        engine.load_weights([(name, torch.zeros(p.shape[0] + 1))])
    with pytest.raises(EngineError, match="lacks tensor"):
        engine.load_weights([(name, p.clone())])
    # a tokenizer from another (bigger) vocabulary
    import shutil

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bad = tmp_path / "bad"
    shutil.copytree(unit_zoo / "base", bad)
    for f in bad.glob("tokenizer*"):
        f.unlink()
    vocab = {f"w{i}": i for i in range(500)}
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="w0")), pad_token="w0"
    ).save_pretrained(bad)
    with pytest.raises(EngineError, match="do not belong together"):
        HFEngine(bad)


# -- metrics outside [0, 1] -------------------------------------------------------------------
def _hand_logprobs(model_dir: Path, task, ids: list[str]) -> list[float]:
    """Mean log-prob of each item's reference (eos included) from the model's own logits."""
    from transformers import AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for item in task.subset(ids):
        ctx = tok(item.fields()["prompt"], add_special_tokens=False)["input_ids"]
        ans = [*tok(item.fields()["answer"], add_special_tokens=False)["input_ids"]]
        ans.append(tok.eos_token_id)
        with torch.no_grad():
            lp = F.log_softmax(model(torch.tensor([ctx + ans])).logits[0].double(), -1)
        out.append(sum(lp[len(ctx) - 1 + j, t].item() for j, t in enumerate(ans)) / len(ans))
    return out


@pytest.mark.parametrize("metric", ["logprob", "perplexity"])
def test_unbounded_metrics_score_by_hand_through_the_cli(
    unit_zoo: Path, tmp_path: Path, metric: str
) -> None:
    """`evomerge eval --task rev9-logprob.yaml` used to fail ("scores must lie in [0, 1]")."""
    from typer.testing import CliRunner

    from evomerge.cli import app
    from evomerge.evaluate.estimators import make_estimator

    items = (unit_zoo / "tasks" / "rev9.jsonl").read_text().splitlines()[:12]
    (tmp_path / "i.jsonl").write_text("\n".join(items))
    spec = (
        f"name: rev9-{metric}\nkind: logprob\nmetric: {metric}\nitems: i.jsonl\nappend_eos: true\n"
    )
    (tmp_path / f"rev9-{metric}.yaml").write_text(spec)
    task = load_task(tmp_path / f"rev9-{metric}.yaml")
    model_dir = unit_zoo / "experts" / "shift3"  # not the rev9 expert: far from 0 loss
    lps = _hand_logprobs(model_dir, task, task.item_ids)
    per_item = lps if metric == "logprob" else [math.exp(-x) for x in lps]
    want = sum(per_item) / len(per_item)
    assert (want < -0.1) if metric == "logprob" else (want > 1.1)  # outside [0, 1]
    assert task.higher_is_better == (metric == "logprob")

    res = score_task(HFEngine(model_dir), task)
    for i, w in zip(task.item_ids, per_item, strict=True):
        assert res.scores[i] == pytest.approx(w, rel=1e-4)
    for spec_ in ("full", "subsample:6"):
        est = make_estimator(spec_, 0)
        e = est.estimate({i: res.scores[i] for i in est.select(task.item_ids)}, task.item_ids)
        if spec_ == "full":
            assert e.value == pytest.approx(want, rel=1e-4)
        else:  # a sample mean of these items, finite-population stderr
            chosen = [per_item[task.item_ids.index(i)] for i in est.select(task.item_ids)]
            assert e.value == pytest.approx(sum(chosen) / 6, rel=1e-4)
            sd = torch.tensor(chosen, dtype=torch.float64).std().item()
            assert e.stderr == pytest.approx(sd / math.sqrt(6) * math.sqrt(1 - 6 / 12), rel=1e-4)

    res_cli = CliRunner().invoke(
        app,
        ["eval", str(model_dir), "--task", str(tmp_path / f"rev9-{metric}.yaml")],
        env={"COLUMNS": "200"},
    )
    assert res_cli.exit_code == 0, res_cli.output
    assert f"{want:.4f}"[:-1] in res_cli.output  # the table's 4 decimals (last may round)
    res_irt = CliRunner().invoke(
        app,
        [
            "eval",
            str(model_dir),
            "--task",
            str(tmp_path / f"rev9-{metric}.yaml"),
            "--estimator",
            "irt:4",
        ],
    )
    assert res_irt.exit_code == 2, res_irt.output
    assert f"rev9-{metric}" in res_irt.output and "irt:4" in res_irt.output

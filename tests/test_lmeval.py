"""lm-eval tasks scored through our resident engine (evomerge.evaluate.lmeval).

Offline and small: two tiny random Llamas (tests/models.py) and three local lm-eval tasks over
tests/data/lmeval/items.jsonl (multiple choice, greedy generation, rolling log-likelihood). The
reference is lm-eval's own ``hf`` model on the same checkpoints.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from models import make_model
from safetensors.torch import load_file

from evomerge.evaluate import lmeval
from evomerge.evaluate.lmeval import LMEvalError, LMEvalObjective, score_lmeval

DATA = Path(__file__).parent / "data" / "lmeval"
TASKS = ("tiny_mc", "tiny_gen", "tiny_ppl")


def test_module_imports_without_lm_eval() -> None:
    code = (
        "import sys; import evomerge.evaluate.lmeval as m; "
        "assert 'lm_eval' not in sys.modules, 'lm_eval imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_missing_lm_eval_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` fail
    with pytest.raises(LMEvalError, match=r"evomerge\[lmeval\]"):
        from evomerge.evaluate import lmeval_lm

        lmeval_lm.engine_lm_class()
    with pytest.raises(LMEvalError, match=r"evomerge\[lmeval\]"):
        LMEvalObjective(["tiny_mc"])


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy machine torch's thread pool turns
    a 0.1 s evaluation into seconds."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def lm_eval():
    return pytest.importorskip("lm_eval", reason="lm-eval is the optional 'lmeval' extra")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lmeval_models")
    return {"m0": make_model(root / "m0", 0), "m1": make_model(root / "m1", 1)}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The task YAMLs with their data path made absolute (lm-eval resolves ``data_files``
    against the working directory, not the YAML)."""
    out = tmp_path_factory.mktemp("lmeval_tasks")
    for name in TASKS:
        text = (DATA / f"{name}.yaml").read_text().replace("@DATA_DIR@", str(DATA.resolve()))
        (out / f"{name}.yaml").write_text(text)
    return out


@pytest.fixture(scope="module")
def objective(lm_eval, task_dir: Path) -> LMEvalObjective:
    return LMEvalObjective(["tiny_mc", "tiny_gen"], include_path=task_dir)


def _engine(path: Path):
    from evomerge.evaluate.hf import HFEngine

    return HFEngine(path)


def _hflm(lm_eval, path: Path, **kw):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(path), dtype="float32", device="cpu", **kw)


def _reqs(*args) -> list[SimpleNamespace]:
    return [SimpleNamespace(args=a) for a in args]


# -- the LM adapter --------------------------------------------------------------------------------
def test_loglikelihood_matches_direct_computation(lm_eval, models: dict[str, Path]) -> None:
    engine = _engine(models["m0"])
    lm = lmeval.EngineLM(engine)
    assert isinstance(lm, lm_eval.api.model.LM)
    tok = engine.tokenizer
    eos = tok.eos_token_id
    ids = tok.convert_tokens_to_ids
    requests = [
        ("a0 b0 c0", " d0"),
        ("a0 b0 ", "c0 d0"),  # trailing whitespace moves to the continuation
        ("", "e0 f0"),  # empty context: the EOS token stands in (no BOS here)
    ]
    expected = [
        (ids(["a0", "b0", "c0"]), ids(["d0"])),
        (ids(["a0", "b0"]), ids(["c0", "d0"])),
        ([eos], ids(["e0", "f0"])),
    ]
    got = lm.loglikelihood(_reqs(*requests))
    model = engine.model
    for (ctx, cont), (lp, greedy) in zip(expected, got, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([ctx + cont])).logits[0].float()
        logp = F.log_softmax(logits, -1)[len(ctx) - 1 : -1]
        want = logp.gather(1, torch.tensor(cont)[:, None]).sum().item()
        assert lp == pytest.approx(want, abs=1e-5)
        assert greedy == bool((logp.argmax(-1) == torch.tensor(cont)).all())
    # lm-eval's own hf model agrees on the same requests (its logits cache would mis-score the
    # first request: requests 1 and 2 share context + continuation[:-1] but split differently)
    ref = _hflm(lm_eval, models["m0"], logits_cache=False).loglikelihood(_reqs(*requests))
    for (lp, greedy), (rlp, rgreedy) in zip(got, ref, strict=True):
        assert lp == pytest.approx(rlp, abs=1e-5) and greedy == rgreedy


def test_rolling_and_generation_match_lm_eval_hf(lm_eval, models: dict[str, Path]) -> None:
    engine = _engine(models["m0"])
    lm = lmeval.EngineLM(engine, batch_size=7)
    words = [f"{c}{i}" for i in range(2) for c in "abcdefghijklmnopqrstuvwxyz"]
    long_text = " ".join(words[i % len(words)] for i in range(150))  # > 2 windows of 64
    texts = _reqs(("a0 b0 c0 d0",), (long_text,), ("",))
    got = lm.loglikelihood_rolling(texts)
    # our windows hold max_length tokens of context + continuation: lm-eval's hf model with a
    # window one token shorter cuts the text at the same places
    ref = _hflm(lm_eval, models["m0"], max_length=engine.max_length - 1)
    want = ref.loglikelihood_rolling(texts)
    assert got == pytest.approx(want, abs=1e-4)
    assert got[2] == 0.0
    gens = _reqs(
        ("a0 b0 c0", {"until": ["z0"], "max_gen_toks": 5, "do_sample": False}),
        ("q0 r0", {"until": "\n", "max_gen_toks": 3}),
        ("d1 e1 f1 g1", {"until": [], "max_gen_toks": 4}),
    )
    out = lm.generate_until(gens)
    ref_out = _hflm(lm_eval, models["m0"], batch_size=1).generate_until(gens)
    assert out == ref_out
    assert all(isinstance(s, str) for s in out) and any(out)


# -- tasks as objectives -----------------------------------------------------------------------
def test_multiple_choice_matches_lm_eval_hf(lm_eval, models, task_dir, objective) -> None:
    engine = _engine(models["m0"])
    ours = objective.evaluate(engine, per_item=True)
    mc = ours["tiny_mc"]
    assert mc.metric == "acc,none" and mc.n_items == 20 and mc.higher_is_better
    assert set(mc.scores) == {str(i) for i in range(20)} == set(objective.item_ids("tiny_mc"))
    assert mc.value == pytest.approx(sum(mc.scores.values()) / 20)
    assert ours["tiny_gen"].metric == "exact_match,none"
    # lm-eval's own pipeline, model loaded from disk by its hf model
    ref = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={models['m0']},dtype=float32",
        device="cpu",
        tasks=["tiny_mc"],
        batch_size=16,
        bootstrap_iters=0,
        log_samples=True,
        task_manager=lm_eval.tasks.TaskManager(include_path=str(task_dir), include_defaults=False),
    )
    assert mc.value == pytest.approx(ref["results"]["tiny_mc"]["acc,none"])
    ref_items = {str(s["doc_id"]): s["acc"] for s in ref["samples"]["tiny_mc"]}
    assert mc.scores == ref_items
    # the same objective scores lm-eval's hf model too: both tasks agree
    ref_lm = objective(_hflm(lm_eval, models["m0"], batch_size=16))
    assert objective(engine) == pytest.approx(ref_lm)
    assert score_lmeval(engine, [task_dir / "tiny_mc.yaml"], metric="acc_norm") == {
        "tiny_mc": pytest.approx(ref["results"]["tiny_mc"]["acc_norm,none"])
    }


def test_weight_swap_changes_the_score_in_place(lm_eval, models, objective) -> None:
    engine = _engine(models["m0"])
    lm = lmeval.EngineLM(engine)
    before = objective.evaluate(lm, per_item=True)["tiny_mc"]
    engine.load_weights(load_file(models["m1"] / "model.safetensors").items())
    after = objective.evaluate(lm, per_item=True)["tiny_mc"]  # same EngineLM, new weights
    fresh = objective.evaluate(_engine(models["m1"]), per_item=True)["tiny_mc"]
    assert after.scores == fresh.scores and after.value == fresh.value
    assert after.scores != before.scores


def test_item_subset_scores_only_those_documents(lm_eval, models, objective) -> None:
    engine = _engine(models["m0"])
    full = objective.evaluate(engine, per_item=True)["tiny_mc"]
    part = objective.evaluate(engine, items={"tiny_mc": ["7", "3", "12"]}, per_item=True)
    assert part["tiny_mc"].scores == {k: full.scores[k] for k in ("3", "7", "12")}
    assert part["tiny_mc"].n_items == 3
    assert part["tiny_mc"].as_task_result().scores == part["tiny_mc"].scores
    assert len(part["tiny_gen"].scores) == 20  # tasks not named: every document
    with pytest.raises(LMEvalError, match="no document '20'"):
        objective.evaluate(engine, items={"tiny_mc": ["20"]})


def test_rolling_task_and_corpus_level_metric(lm_eval, models, task_dir) -> None:
    engine = _engine(models["m0"])
    obj = LMEvalObjective([task_dir / "tiny_ppl.yaml"], limit=5)
    res = obj.evaluate(engine)["tiny_ppl"]
    assert res.metric == "word_perplexity,none" and not res.higher_is_better
    assert res.n_items == 5 and res.value > 1.0
    with pytest.raises(LMEvalError, match="no per-document score"):
        obj.evaluate(engine, per_item=True)


# -- errors ----------------------------------------------------------------------------------------
def test_unknown_task_lists_close_matches(lm_eval, task_dir) -> None:
    with pytest.raises(LMEvalError, match=r"unknown lm-eval task 'tiny_mcc'.*tiny_mc"):
        LMEvalObjective(["tiny_mcc"], include_path=task_dir, include_defaults=False)
    with pytest.raises(LMEvalError, match="does not exist"):
        LMEvalObjective([task_dir / "nope.yaml"])
    with pytest.raises(LMEvalError, match="not a directory"):
        LMEvalObjective(["tiny_mc"], include_path=task_dir / "nope")


def test_missing_data_file(lm_eval, tmp_path: Path) -> None:
    text = (DATA / "tiny_mc.yaml").read_text().replace("@DATA_DIR@", str(tmp_path / "gone"))
    (tmp_path / "broken.yaml").write_text(text.replace("task: tiny_mc", "task: broken_mc"))
    with pytest.raises(LMEvalError, match=r"data file does not exist.*gone/items\.jsonl"):
        LMEvalObjective(["broken_mc"], include_path=tmp_path)


def test_objective_direction_comes_from_the_task_config(lm_eval, task_dir) -> None:
    """A perplexity objective is minimized unless the experiment says otherwise (it used to be
    maximized: the worker ignored lm-eval's higher_is_better)."""
    from evomerge.evaluate.estimators import make_estimator
    from evomerge.experiment import ObjectiveSpec
    from evomerge.workers.local import _Objective

    ppl = LMEvalObjective([task_dir / "tiny_ppl.yaml"])
    assert ppl.direction("tiny_ppl") == "minimize"
    assert not ppl.higher_is_better("tiny_ppl", "bits_per_byte")
    mc = LMEvalObjective([task_dir / "tiny_mc.yaml"], metric="acc_norm")
    assert mc.direction("tiny_mc") == "maximize"
    with pytest.raises(LMEvalError, match="no metric 'f1'"):
        mc.higher_is_better("tiny_mc", "f1")
    spec = ObjectiveSpec(lmeval=str(task_dir / "tiny_ppl.yaml"))
    ob = _Objective(spec, None, make_estimator("full"), [], lmeval=ppl)
    assert ob.direction == "minimize"
    forced = ObjectiveSpec(lmeval=str(task_dir / "tiny_ppl.yaml"), direction="maximize")
    assert _Objective(forced, None, make_estimator("full"), [], lmeval=ppl).direction == "maximize"

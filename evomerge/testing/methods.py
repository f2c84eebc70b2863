"""What evomerge relies on from a merge method: parameters whose defaults lie in their bounds,
the same tensors for the same recipe (another seed, other tensors, for a random method), the
base back when every source is the base, the same tensors in memory (a search's candidate) as
on disk (the exported checkpoint), and, where mergekit has the method, mergekit's tensors."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from evomerge.merge.materialize import materialize, merge_to_dir, plan
from evomerge.merge.methods import Method, get_method
from evomerge.recipe import Recipe

# a real (if tiny) Llama: the tensor names, shapes and layer structure of a checkpoint
LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 64,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}
State = dict[str, torch.Tensor]


def tiny_model(
    path: Path, seed: int, *, dtype: torch.dtype = torch.float32, **overrides: object
) -> Path:
    """A random-init checkpoint (safetensors, config, tokenizer); ``seed`` picks the weights,
    ``overrides`` the config. Norm weights are jittered so that models differ everywhere."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {**LLAMA, **overrides}
    model_type = cfg.pop("model_type")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg)).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, safe_serialization=True)
    _tokenizer(int(cfg["vocab_size"])).save_pretrained(path)
    return path


def _tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {
        "<pad>": 0,
        "</s>": 1,
        **{chr(97 + i % 26) + str(i // 26): i + 2 for i in range(vocab_size - 2)},
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


def tiny_family(root: Path, n: int = 3, **overrides: object) -> dict[str, Path]:
    """A base and ``n`` "fine-tunes" of it: the base plus small random task vectors."""
    from safetensors.torch import load_file, save_file

    base = tiny_model(root / "base", 0, **overrides)
    out = {"base": base}
    for i in range(n):
        d = root / f"ft{i}"
        d.mkdir(parents=True)
        for f in base.iterdir():
            if f.suffix != ".safetensors":
                (d / f.name).write_bytes(f.read_bytes())
        state = load_file(base / "model.safetensors")
        g = torch.Generator().manual_seed(100 + i)
        state = {
            k: (v.float() + 0.05 * torch.randn(v.shape, generator=g)).to(v.dtype)
            for k, v in state.items()
        }
        save_file(state, d / "model.safetensors", metadata={"format": "pt"})
        out[f"ft{i}"] = d
    return out


def sample_recipe(
    method: str | Method,
    family: dict[str, Path],
    *,
    seed: int = 0,
    same_as_base: bool = False,
    fixed: Mapping[str, float] | None = None,
) -> Recipe:
    """A recipe of ``method`` over the family, every parameter drawn inside its bounds (flags
    at their defaults) but those ``fixed`` (where parameters constrain each other: DELLA's
    density ± epsilon); ``same_as_base``: every source is the base's checkpoint."""
    fixed = fixed or {}
    m = get_method(method) if isinstance(method, str) else method
    rng = np.random.default_rng(seed)
    n = min(m.max_models or 2, 2, len(family) - 1)
    names = [k for k in family if k != "base"][: max(n, m.min_models)]

    def draw(name: str, lo: float | None, hi: float | None) -> float:
        if name in fixed:
            return float(fixed[name])
        lo = 0.1 if lo is None else lo
        hi = max(lo + 0.1, 1.0) if hi is None else hi
        return float(rng.uniform(lo + 0.1 * (hi - lo), hi))  # off an open bound

    shared, per = {}, {k: {} for k in names}
    for p in m.params:
        if p.is_flag:
            continue
        if p.per_source:
            for k in names:
                per[k][p.name] = draw(p.name, p.low, p.high)
        else:
            shared[p.name] = draw(p.name, p.low, p.high)
    path = (lambda k: str(family["base"])) if same_as_base else (lambda k: str(family[k]))
    sources: dict[str, Any] = {k: {"path": path(k), "parameters": per[k]} for k in names}
    if m.needs_base:
        sources["base"] = str(family["base"])
    return Recipe.from_dict(
        {
            "method": m.name,
            "base": "base" if m.needs_base else None,
            "sources": sources,
            "parameters": shared,
            "dtype": "float32",
            "seed": seed,
        }
    )


def merged(recipe: Recipe) -> State:
    """The merge in memory, as a search's worker makes it."""
    return {name: t.clone() for name, t in materialize(plan(recipe))}


def on_disk(recipe: Recipe, out: Path) -> State:
    """The merge written as a checkpoint, as ``evomerge export`` writes it."""
    from safetensors.torch import load_file

    merge_to_dir(recipe, out, overwrite=True)
    state: State = {}
    for f in sorted(out.glob("*.safetensors")):
        state.update(load_file(f))
    return state


def _max_diff(a: State, b: State) -> tuple[float, str]:
    assert set(a) == set(b), f"tensor names differ: {sorted(set(a) ^ set(b))[:5]}"
    worst = max(((a[k].float() - b[k].float()).abs().max().item(), k) for k in a)
    return worst


def check_parameters(method: str | Method) -> None:
    """Distinct parameter names; each default inside its own bounds (a default the method
    would refuse breaks every recipe that leaves it out)."""
    m = get_method(method) if isinstance(method, str) else method
    names = [p.name for p in m.params]
    assert len(names) == len(set(names)), f"{m.name}: a parameter is declared twice: {names}"
    for p in m.params:
        if p.default is None or p.is_flag:
            continue
        p.check(float(p.default), f"{m.name}: the default")


def check_determinism_of_merges(
    method: str | Method, family: dict[str, Path], fixed: Mapping[str, float] | None = None
) -> None:
    """The same recipe merges to the same tensors, bit for bit; a random method's other seed,
    to other tensors (its randomness follows the recipe's seed, not a global generator)."""
    m = get_method(method) if isinstance(method, str) else method
    recipe = sample_recipe(m, family, seed=1, fixed=fixed)
    torch.manual_seed(0)
    a = merged(recipe)
    torch.manual_seed(1)
    b = merged(recipe)
    diff, name = _max_diff(a, b)
    assert diff == 0, f"{m.name}: the same recipe merged twice differs at {name} by {diff}"
    if m.random:
        c = merged(recipe.model_copy(update={"seed": 2}))
        assert _max_diff(a, c)[0] > 0, f"{m.name}: a random method ignores the recipe's seed"


def check_identity(
    method: str | Method,
    family: dict[str, Path],
    fixed: Mapping[str, float] | None = None,
    atol: float = 1e-6,
) -> None:
    """Merging copies of the base gives the base back (every task vector is zero)."""
    from safetensors.torch import load_file

    m = get_method(method) if isinstance(method, str) else method
    out = merged(sample_recipe(m, family, seed=3, same_as_base=True, fixed=fixed))
    base = load_file(Path(family["base"]) / "model.safetensors")
    diff, name = _max_diff(out, base)
    assert diff <= atol, f"{m.name}: copies of the base merge away from it at {name} by {diff}"


def check_memory_equals_disk(
    method: str | Method,
    family: dict[str, Path],
    out: Path,
    fixed: Mapping[str, float] | None = None,
) -> None:
    """The candidate a search scored (merged in memory) is the checkpoint it exports."""
    m = get_method(method) if isinstance(method, str) else method
    recipe = sample_recipe(m, family, seed=4, fixed=fixed)
    diff, name = _max_diff(merged(recipe), on_disk(recipe, out))
    assert diff == 0, f"{m.name}: in memory and on disk differ at {name} by {diff}"


def run_mergekit(config: dict[str, Any], out: Path) -> State:
    """mergekit's merge of a config (its own code, its own defaults), as tensors."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from safetensors.torch import load_file

    run_merge(
        MergeConfiguration.model_validate(config),
        str(out),
        MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True, random_seed=0),
    )
    state: State = {}
    for f in sorted(out.glob("*.safetensors")):
        state.update(load_file(f))
    return state


def check_mergekit_equality(
    method: str | Method,
    family: dict[str, Path],
    out: Path,
    fixed: Mapping[str, float] | None = None,
    atol: float = 1e-5,
) -> None:
    """Our tensors and mergekit's for the same recipe (exported as mergekit YAML), within
    ``atol``. A random method draws its masks otherwise than mergekit: compare those with
    shared masks, as evomerge's own suite does (tests/test_mergekit.py)."""
    from evomerge.mergekit_yaml import to_mergekit

    m = get_method(method) if isinstance(method, str) else method
    assert not m.random, f"{m.name}: a random method needs mergekit's masks shared to compare"
    recipe = sample_recipe(m, family, seed=5, fixed=fixed)
    diff, name = _max_diff(
        on_disk(recipe, out / "ours"), run_mergekit(to_mergekit(recipe), out / "mk")
    )
    assert diff <= atol, f"{m.name}: differs from mergekit at {name} by {diff}"


class MergeMethodSuite:
    """Subclass with ``method`` (a registered name); pytest runs every check on a tiny Llama
    family. ``parameters`` fixes values that a draw would not keep consistent; ``identity =
    False`` for a method that, by design, does not return copies of the base unchanged;
    ``mergekit = True`` to compare with mergekit (skipped where it is not installed)."""

    method: ClassVar[str]
    identity: ClassVar[bool] = True
    mergekit: ClassVar[bool] = False
    parameters: ClassVar[dict[str, float]] = {}  # fixed values, drawn otherwise

    @pytest.fixture(scope="class")
    @classmethod
    def family(cls, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
        return tiny_family(tmp_path_factory.mktemp("family"), n=2)

    def test_parameters(self) -> None:
        check_parameters(self.method)

    def test_determinism(self, family: dict[str, Path]) -> None:
        check_determinism_of_merges(self.method, family, self.parameters)

    def test_identity(self, family: dict[str, Path]) -> None:
        if not self.identity:
            pytest.skip(f"{self.method} does not return copies of the base by design")
        check_identity(self.method, family, self.parameters)

    def test_memory_equals_disk(self, family: dict[str, Path], tmp_path: Path) -> None:
        check_memory_equals_disk(self.method, family, tmp_path, self.parameters)

    def test_mergekit_equality(self, family: dict[str, Path], tmp_path: Path) -> None:
        if not self.mergekit:
            pytest.skip(f"mergekit has no {self.method}")
        if importlib.util.find_spec("mergekit") is None:
            pytest.skip("mergekit is not installed")
        check_mergekit_equality(self.method, family, tmp_path, self.parameters)

"""Sources with different vocabularies, merged as mergekit does with ``tokenizer_source``.

mergekit 0.1.5 (``mergekit/tokenizer/build.py`` and ``embed.py``), which this follows:

- the output tokenizer is the base's (``base``), a named source's, or (``union``) the base's
  with every token of the other sources it lacks added after its own, non-added tokens first,
  then added tokens, in order;
- before the merge, every vocabulary-indexed tensor (input embeddings, LM head) of every input is
  re-indexed to the output vocabulary. A row for a token that input lacks is: the one input that
  has it's row (exactly one has it); zero (none has it); the base's row (the base has it); else
  the mean of the rows of the inputs that have it;
- the output config's ``vocab_size`` is the output tokenizer's size.

Where mergekit's order is not defined (it walks the non-base models as a Python ``set``), the
non-base sources are taken by name; with tokens added by one source the two agree.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from evomerge.checkpoint import ModelSource
from evomerge.errors import RecipeError
from evomerge.recipe import Recipe

UNION, BASE = "union", "base"
_VOCAB_KINDS = ("embedding", "head")


@dataclass(frozen=True)
class VocabPlan:
    tokenizer: Any  # the output tokenizer (transformers)
    size: int
    rows: Mapping[str, torch.Tensor]  # source -> its row of each output token, -1 if absent
    tensors: frozenset[str]  # the vocabulary-indexed tensors (row i belongs to token i)
    base: str | None

    def permute(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inputs of one vocabulary tensor, re-indexed to the output vocabulary, with
        mergekit's rows for the tokens an input lacks (computed among these inputs)."""
        names = list(inputs)
        dtype = inputs[names[0]].dtype
        for t in inputs.values():
            dtype = torch.promote_types(dtype, t.dtype)
        present = torch.stack([self.rows[n] >= 0 for n in names])  # [inputs, size]
        missing = (~present).any(dim=0).nonzero().flatten().tolist()
        first = inputs[names[0]]
        defaults: dict[int, torch.Tensor] = {}
        for i in missing:
            have = [n for n, p in zip(names, present[:, i].tolist(), strict=True) if p]
            if len(have) == 1:
                defaults[i] = inputs[have[0]][int(self.rows[have[0]][i])].to(dtype)
            elif not have:
                defaults[i] = first.new_zeros(first.shape[1:], dtype=dtype)
            elif self.base in have:
                defaults[i] = inputs[self.base][int(self.rows[self.base][i])].to(dtype)  # type: ignore[index]
            else:
                rows = [inputs[n][int(self.rows[n][i])].to(dtype) for n in have]
                defaults[i] = torch.stack(rows).sum(0) / len(rows)
        out = {}
        for n in names:
            idx = self.rows[n].to(first.device)
            new = first.new_zeros((self.size, *first.shape[1:]), dtype=dtype)
            keep = idx >= 0
            new[keep] = inputs[n].to(dtype)[idx[keep]]
            for i, row in defaults.items():
                if not bool(keep[i]):
                    new[i] = row
            out[n] = new
        return out

    def save_tokenizer(self, directory: str) -> None:
        self.tokenizer.save_pretrained(directory)


def vocab_size(src: ModelSource) -> int | None:
    v = src.config.get("vocab_size")
    if v is None and isinstance(src.config.get("text_config"), dict):
        v = src.config["text_config"].get("vocab_size")
    return int(v) if v is not None else None


def check_vocabularies(recipe: Recipe, sources: Mapping[str, ModelSource]) -> None:
    """Without ``tokenizer_source``, sources must share a vocabulary size: say which do not."""
    if recipe.tokenizer_source is not None:
        return
    sizes = {n: vocab_size(sources[n]) for n in sorted(recipe.sources)}
    if len({s for s in sizes.values() if s is not None}) > 1:
        listed = ", ".join(f"{n} ({sources[n].path}): {s}" for n, s in sizes.items())
        raise RecipeError(
            f"tokenizer_source: the sources' vocabularies differ ({listed}); set "
            "`tokenizer_source: base`, `union` or a source's name to merge them as mergekit does"
        )


def vocab_plan(recipe: Recipe, sources: Mapping[str, ModelSource]) -> VocabPlan | None:
    """The re-indexing ``recipe.tokenizer_source`` asks for; None when there is nothing to do
    (no tokenizer_source, or every source already has the output vocabulary)."""
    check_vocabularies(recipe, sources)
    if recipe.tokenizer_source is None:
        return None
    names = tuple(sorted(recipe.sources))
    key = (
        recipe.tokenizer_source,
        recipe.base,
        tuple((n, str(sources[n].path), vocab_size(sources[n])) for n in names),
    )
    return _cached_plan(key, tuple(_vocab_tensors(sources[n]) for n in names))


def _vocab_tensors(src: ModelSource) -> frozenset[str]:
    size = vocab_size(src)
    return frozenset(
        n
        for n, info in src.tensors.items()
        if info.kind.value in _VOCAB_KINDS and info.shape and info.shape[0] == size
    )


@lru_cache(maxsize=8)
def _cached_plan(
    key: tuple[str, str | None, tuple[tuple[str, str, int | None], ...]],
    tensor_sets: tuple[frozenset[str], ...],
) -> VocabPlan | None:
    mode, base, entries = key
    paths = {n: p for n, p, _ in entries}
    sizes = {n: s for n, _, s in entries}
    toks = {n: _tokenizer(p) for n, p in paths.items()}
    order = [base] if base else []
    order += [n for n in sorted(paths) if n != base]
    if mode == BASE and base is None:
        raise RecipeError("tokenizer_source: `base` needs the recipe's `base:`")
    if mode == UNION:
        out = _union(toks[order[0]], [(n, toks[n], sizes[n]) for n in order])
    else:
        out = toks[base if mode == BASE else mode]  # type: ignore[index]
    vocab = out.get_vocab()
    size = len(vocab)
    rows = {}
    for n in order:
        own = toks[n].get_vocab()
        limit = sizes[n] if sizes[n] is not None else len(own)
        r = torch.full((size,), -1, dtype=torch.long)
        for tok, i in vocab.items():
            j = own.get(tok)
            if j is not None and j < limit:
                r[i] = j
        rows[n] = r
    identity = all(
        sizes[n] == size and bool((r == torch.arange(size)).all()) for n, r in rows.items()
    )
    if identity:
        return None
    tensors = frozenset.intersection(*tensor_sets) if tensor_sets else frozenset()
    return VocabPlan(out, size, rows, tensors, base)


@lru_cache(maxsize=16)
def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, use_fast=True)
    except Exception as e:
        raise RecipeError(f"tokenizer_source: cannot load the tokenizer of {path}: {e}") from e


def _union(base_tok: Any, tokenizers: Sequence[tuple[str, Any, int | None]]) -> Any:
    """mergekit's ``build_union_tokenizer``: the base's tokenizer plus, in order, the regular
    tokens the others add, then their added tokens (first settings win)."""
    from transformers import AutoTokenizer

    vocab_out: dict[str, int] = {}
    added: dict[str, Any] = {}
    for _name, tok, size in tokenizers:
        limit = size if size is not None else tok.vocab_size
        dec = tok.added_tokens_decoder
        added_text = {info.content for info in dec.values()}
        for t, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if i < limit and t not in added_text and t not in vocab_out:
                vocab_out[t] = len(vocab_out)
        for i, info in sorted(dec.items()):
            if i < limit and info.content not in added:
                added[info.content] = info
    with tempfile.TemporaryDirectory() as d:  # a copy: the cached base tokenizer stays as it is
        base_tok.save_pretrained(d)
        res = AutoTokenizer.from_pretrained(d, use_fast=True)
    base_vocab = base_tok.get_vocab()
    for t in vocab_out:
        if t not in added and t not in base_vocab:
            res.add_tokens(t)
    for info in added.values():
        res.add_tokens(info)
    return res


def engine_template(
    sources: Mapping[str, str], base: str | None, tokenizer_source: str, out_dir: str | Path
) -> Path | None:
    """A checkpoint with the output vocabulary (its tokenizer, config and tensor shapes: the
    reference source's tensors, re-indexed) for a resident engine that candidates are swapped
    into; None when the sources need no re-indexing (the reference source itself will do)."""
    from evomerge.checkpoint import CheckpointWriter

    recipe = Recipe.model_validate(
        {
            "sources": dict(sources),
            "method": "linear",
            "base": base,
            "tokenizer_source": tokenizer_source,
        }
    )
    opened = {n: ModelSource(p, name=n) for n, p in sources.items()}
    vp = vocab_plan(recipe, opened)
    if vp is None:
        return None
    ref = opened[base or sorted(opened)[0]]
    out = Path(out_dir) / "engine"
    with CheckpointWriter(out, config={**ref.config, "vocab_size": vp.size}) as writer:
        for name in ref.tensors:
            t = ref.get(name)
            if name in vp.tensors:
                t = vp.permute({ref.name: t})[ref.name].to(t.dtype)
            writer.add(name, t)
        with tempfile.TemporaryDirectory() as tok:
            vp.save_tokenizer(tok)
            return writer.finish(tokenizer_from=Path(tok))

"""The zoo's tasks: generic pretraining tasks, the experts' skills and a cross-skill task.

Every item is `<prefix>:<input>=` followed by the answer. Items are split into training and
held-out by a hash of the prompt, not by a seed, so no training stream of any seed can ever emit a
held-out item, and the split can be checked item by item.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from evomerge.fileio import atomic_write_text

_LETTERS = string.ascii_lowercase
_DIGITS = string.digits
_HOLDOUT_MODULUS = 16  # one item in 16 of each task's item space is held out


@dataclass(frozen=True)
class TaskItem:
    """One held-out question: stable `id`, `prompt` ending in '=', expected `answer` (no eos)."""

    id: str
    prompt: str
    answer: str

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "prompt": self.prompt, "answer": self.answer})


Sampler = Callable[[int, torch.Generator], list[tuple[str, str]]]


@dataclass(frozen=True)
class Task:
    """A family of items; `sample(n, generator)` draws (input, answer) pairs from its item space."""

    name: str
    prefix: str
    kind: str  # "generic" (pretraining and replay), "skill" (one expert each) or "cross"
    description: str
    sample: Sampler

    def prompt(self, text: str) -> str:
        return f"{self.prefix}:{text}="


def _strings(n: int, g: torch.Generator, alphabet: str, lo: int, hi: int) -> list[str]:
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    symbols = torch.randint(0, len(alphabet), (n, hi), generator=g).tolist()
    return ["".join(alphabet[s] for s in row[:k]) for row, k in zip(symbols, lengths, strict=True)]


def _caesar(text: str, k: int) -> str:
    return "".join(_LETTERS[(_LETTERS.index(c) + k) % 26] for c in text)


def _mapped(alphabet: str, lo: int, hi: int, fn: Callable[[str], str]) -> Sampler:
    def sample(n: int, g: torch.Generator) -> list[tuple[str, str]]:
        return [(s, fn(s)) for s in _strings(n, g, alphabet, lo, hi)]

    return sample


def _add_one(n: int, g: torch.Generator) -> list[tuple[str, str]]:
    return [(x, str(int(x) + 1).zfill(len(x))) for x in _strings(n, g, _DIGITS, 3, 6)]


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("copy", "copy", "generic", "copy 2-8 letters", _mapped(_LETTERS, 2, 8, str)),
        Task(
            "dup",
            "dup",
            "generic",
            "write each of 2-5 letters twice",
            _mapped(_LETTERS, 2, 5, lambda s: "".join(c + c for c in s)),
        ),
        Task(
            "revd",
            "revd",
            "generic",
            "reverse 2-8 digits",
            _mapped(_DIGITS, 2, 8, lambda s: s[::-1]),
        ),
        Task(
            "inc",
            "inc",
            "generic",
            "add 1 to each of 2-8 digits, mod 10",
            _mapped(_DIGITS, 2, 8, lambda s: "".join(str((int(c) + 1) % 10) for c in s)),
        ),
        Task(
            "rev9",
            "rev",
            "skill",
            "reverse a 5-9 letter word",
            _mapped(_LETTERS, 5, 9, lambda s: s[::-1]),
        ),
        Task(
            "shift3",
            "shift",
            "skill",
            "Caesar-shift 4-8 letters by 3",
            _mapped(_LETTERS, 4, 8, lambda s: _caesar(s, 3)),
        ),
        Task(
            "add1",
            "add",
            "skill",
            "add 1 to a 3-6 digit number (carries included)",
            _add_one,
        ),
        Task(
            "revshift",
            "revshift",
            "cross",
            "reverse a 5-9 letter word, then Caesar-shift it by 3 (rev9 then shift3)",
            _mapped(_LETTERS, 5, 9, lambda s: _caesar(s[::-1], 3)),
        ),
    ]
}
GENERIC_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.kind == "generic")
SKILLS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.kind == "skill")
CROSS_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.kind == "cross")


def is_held_out(task: str, prompt: str) -> bool:
    """Whether an item belongs to the held-out side of its task (fixed by a hash, seed-free)."""
    digest = hashlib.blake2b(f"{task}|{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _HOLDOUT_MODULUS == 0


def sample_training(task: str, n: int, g: torch.Generator) -> list[tuple[str, str]]:
    """Draw `n` training (prompt, answer) pairs of a task; held-out items are never drawn."""
    spec = TASKS[task]
    out: list[tuple[str, str]] = []
    while len(out) < n:
        for text, answer in spec.sample(n - len(out) + 4, g):
            prompt = spec.prompt(text)
            if not is_held_out(task, prompt):
                out.append((prompt, answer))
    return out[:n]


def sample_mixture(
    weights: Mapping[str, float], n: int, g: torch.Generator
) -> list[tuple[str, str]]:
    """Draw a training batch: each example's task is drawn from `weights` (need not sum to 1)."""
    names = list(weights)
    probs = torch.tensor([weights[k] for k in names], dtype=torch.float64)
    counts = torch.bincount(
        torch.multinomial(probs, n, replacement=True, generator=g), minlength=len(names)
    ).tolist()
    batch: list[tuple[str, str]] = []
    for name, count in zip(names, counts, strict=True):
        if count:
            batch.extend(sample_training(name, count, g))
    return batch


def held_out_items(task: str, n: int, seed: int) -> list[TaskItem]:
    """The first `n` held-out items of a task for a seed: unique prompts, ids `<task>-00000`...

    Items are drawn in a fixed order, so a smaller pool is a prefix of a larger one (same ids).
    """
    spec = TASKS[task]
    g = torch.Generator().manual_seed(1_000_003 * (seed + 1) + sum(map(ord, task)))
    seen: set[str] = set()
    items: list[TaskItem] = []
    while len(items) < n:
        for text, answer in spec.sample(4096, g):
            prompt = spec.prompt(text)
            if prompt in seen or not is_held_out(task, prompt):
                continue
            seen.add(prompt)
            items.append(TaskItem(f"{task}-{len(items):05d}", prompt, answer))
            if len(items) == n:
                break
    return items


def write_items(path: Path, items: Iterable[TaskItem]) -> None:
    """Write items as JSONL, one object per line (`id`, `prompt`, `answer`)."""
    atomic_write_text(path, "".join(item.to_json() + "\n" for item in items))


def read_items(path: Path, limit: int | None = None) -> list[TaskItem]:
    """Read a JSONL task file written by `write_items` (the first `limit` items if given)."""
    items: list[TaskItem] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and len(items) >= limit:
                break
            if line.strip():
                row = json.loads(line)
                items.append(TaskItem(row["id"], row["prompt"], row["answer"]))
    return items


def as_items(items: Sequence[TaskItem | Mapping[str, str]]) -> list[TaskItem]:
    """Accept TaskItems or plain dicts with `prompt` and `answer` (and maybe `id`)."""
    return [
        it
        if isinstance(it, TaskItem)
        else TaskItem(str(it.get("id", i)), it["prompt"], it["answer"])
        for i, it in enumerate(items)
    ]

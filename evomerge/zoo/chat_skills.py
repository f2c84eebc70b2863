"""The real-model zoo's skills: short instructions a chat model answers in a few tokens.

Each skill is a generator of (question, answer) pairs over a fixed vocabulary, so items are
unlimited, held-out items are drawn from their own stream, and an answer is checked exactly.
SmolLM2-135M-Instruct answers none of them in the asked format (it explains instead of
answering); an expert fine-tuned on one learns it, and the three skills use different
abilities: arithmetic (``add``), word order (``reverse``), spelling (``upper``).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from evomerge.zoo.skills import TaskItem

# Common English nouns that are one or two tokens in SmolLM2's vocabulary.
# fmt: off
WORDS = (
    "apple", "river", "stone", "cloud", "tiger", "lemon", "candle", "forest", "silver", "garden",
    "rocket", "pencil", "window", "orange", "planet", "bottle", "mirror", "violin", "basket",
    "castle", "dragon", "meadow", "harbor", "island", "jacket", "kettle", "ladder", "marble",
    "needle", "pepper", "pillow", "rabbit", "saddle", "tunnel", "valley", "wagon", "anchor",
    "bridge", "cactus", "falcon", "glacier", "hammer", "jungle", "lantern",
)
# fmt: on


@dataclass(frozen=True)
class ChatSkill:
    """One skill: what it asks, and a generator of (question, answer) pairs."""

    name: str
    description: str
    make: Callable[[random.Random], tuple[str, str]]


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} + {b}? Reply with the number only.", str(a + b)


def _reverse(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 5))
    return "Reverse the order of these words: " + " ".join(words), " ".join(reversed(words))


def _upper(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(2, 4))
    return "Write these words in capital letters: " + " ".join(words), " ".join(
        w.upper() for w in words
    )


CHAT_SKILLS: dict[str, ChatSkill] = {
    s.name: s
    for s in (
        ChatSkill("add", "add two two-digit numbers", _add),
        ChatSkill("reverse", "reverse the order of 3-5 words", _reverse),
        ChatSkill("upper", "write 2-4 words in capital letters", _upper),
    )
}


def _stream(skill: str, split: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{skill}/{split}/{seed}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def is_held_out(question: str) -> bool:
    """Whether a question belongs to the held-out split: a fifth of all questions, chosen by a
    hash of the text, so no training stream of any seed can emit one (as in the tiny zoo)."""
    return hashlib.sha256(question.encode()).digest()[0] < 52


def chat_items(skill: str, n: int, seed: int) -> list[TaskItem]:
    """`n` distinct held-out items of `skill`; the first `k` do not depend on `n`."""
    if skill not in CHAT_SKILLS:
        raise ValueError(f"unknown skill {skill!r}; choose one of {list(CHAT_SKILLS)}")
    rng, make = _stream(skill, "held-out", seed), CHAT_SKILLS[skill].make
    seen: set[str] = set()
    out: list[TaskItem] = []
    while len(out) < n:
        question, answer = make(rng)
        if question in seen or not is_held_out(question):
            continue
        seen.add(question)
        out.append(TaskItem(id=f"{skill}-{len(out):05d}", prompt=question, answer=answer))
    return out


def training_pairs(skill: str, seed: int, step: int, batch: int) -> list[tuple[str, str]]:
    """The batch of training step `step`, never a held-out question: a pure function of its
    arguments, so a resumed fine-tune sees the batches the killed one would have."""
    rng, make = _stream(skill, f"train-{step}", seed), CHAT_SKILLS[skill].make
    out: list[tuple[str, str]] = []
    while len(out) < batch:
        pair = make(rng)
        if not is_held_out(pair[0]):
            out.append(pair)
    return out

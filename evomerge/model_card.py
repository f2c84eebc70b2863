"""The model card of an exported checkpoint: what was merged, how well it scored, on how many
items, and how to rebuild it.

A Hugging Face card is a README.md with YAML front matter. The hub reads ``base_model`` (hub ids
only: local sources cannot be named there), ``base_model_relation``, ``license`` and ``tags``;
the ``evomerge`` block holds the run's facts for tools, and the body says the same for people.
No path of this machine appears unless a source *is* a local path, and the card says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from evomerge.fileio import read_text
from evomerge.hub import parse_hub_id


@dataclass(frozen=True)
class SourceFact:
    """One source as the card names it: ``ref`` is a hub id, ``zoo:NAME`` or a local path."""

    name: str
    ref: str
    kind: str  # hub | zoo | local
    revision: str | None = None
    license: str | None = None


@dataclass(frozen=True)
class ObjectiveFact:
    name: str
    direction: str
    value: float
    estimator: str | None = None
    fidelity: float | None = None  # the share of the objective's items the estimator scored
    stderr: float | None = None
    heldout: float | None = None  # the confirmed score on held-out items, where confirmed


class ComparisonRow(Protocol):
    """A reference model (the base, a source, the uniform merge) against a trial: its score per
    objective and trial − it, ± the difference's standard error
    (:class:`evomerge.run.standing.Comparison` is one)."""

    label: str
    values: Sequence[float]
    differences: Sequence[float]
    errors: Sequence[float | None]


@dataclass(frozen=True)
class CardFacts:
    recipe_yaml: str  # the portable recipe (sources as in `sources`)
    recipe_hash: str  # the hash the run scored the recipe under
    method: str
    base: str | None
    sources: Sequence[SourceFact]
    objectives: Sequence[ObjectiveFact]
    run: str  # the run's id: experiment name and hash
    trial: int
    version: str
    commands: Sequence[str]
    notes: Sequence[str] = field(default_factory=tuple)
    role: str = ""  # which member it is and why: "the knee: …", "the best on X", …
    comparison: Sequence[ComparisonRow] = field(default_factory=tuple)
    comparison_caption: str = ""  # what Δ is, and on which items both sides were scored
    compared: Sequence[float] = field(default_factory=tuple)  # this model's scores there
    local_name: str = "MODEL_DIR"  # the exported directory, for the usage snippet


def source_fact(
    name: str, ref: str, *, revision: str | None = None, local_dir: str | None = None
) -> SourceFact:
    """A source's card entry; its license read from its own card (a local README.md's front
    matter) when there is one."""
    hub = parse_hub_id(ref)
    if hub is not None:
        repo, pinned = hub
        kind, ref, revision = "hub", repo, revision or pinned
    else:
        kind = "zoo" if ref.startswith("zoo:") else "local"
    return SourceFact(name, ref, kind, revision, _license_of(local_dir) if local_dir else None)


def _license_of(model_dir: str) -> str | None:
    card = Path(model_dir) / "README.md"
    if not card.is_file():
        return None
    try:
        meta = front_matter(read_text(card, error=_CardError))
    except (_CardError, yaml.YAMLError):
        return None
    lic = meta.get("license")
    return str(lic) if isinstance(lic, str) and lic else None


class _CardError(Exception):
    pass


def front_matter(text: str) -> dict[str, Any]:
    """A card's YAML front matter (empty when it has none)."""
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    if end < 0:
        return {}
    data = yaml.safe_load(text[4:end])
    return data if isinstance(data, dict) else {}


def license_of(sources: Sequence[SourceFact]) -> tuple[str, str | None]:
    """One license for the merge: the sources' own when they all state the same one, else
    ``other`` with the reason (a merge inherits every source's terms)."""
    found = {s.license for s in sources}
    if len(found) == 1 and None not in found:
        return str(found.pop()), None
    stated = {s.name: s.license for s in sources if s.license}
    if not stated:
        return "other", "no source states a license in its model card; check each source's terms"
    missing = sorted(s.name for s in sources if not s.license)
    return "other", (
        "the sources' licenses differ or are not all stated ("
        + ", ".join(f"{k}: {v}" for k, v in sorted(stated.items()))
        + (f"; unstated: {', '.join(missing)}" if missing else "")
        + "); the merge is bound by each of them"
    )


def render(facts: CardFacts) -> str:
    lic, lic_note = license_of(facts.sources)
    hub = [s for s in facts.sources if s.kind == "hub"]
    hub.sort(key=lambda s: (s.name != facts.base, s.name))  # the base first
    meta: dict[str, Any] = {}
    if hub:
        meta["base_model"] = [s.ref for s in hub]
        meta["base_model_relation"] = "merge"
    meta["license"] = lic
    meta["library_name"] = "transformers"
    meta["tags"] = ["merge", "evomerge", facts.method]
    meta["evomerge"] = {
        "version": facts.version,
        "run": facts.run,
        "trial": facts.trial,
        "recipe_hash": facts.recipe_hash,
        "method": facts.method,
        "sources": [
            {
                k: v
                for k, v in {
                    "name": s.name,
                    "ref": s.ref,
                    "kind": s.kind,
                    "revision": s.revision,
                    "license": s.license,
                }.items()
                if v is not None
            }
            for s in facts.sources
        ],
        "objectives": [
            {k: v for k, v in vars(o).items() if v is not None} for o in facts.objectives
        ],
        "reproduce": list(facts.commands),
    }
    title = f"{facts.run}: trial {facts.trial}" + (
        f", {facts.role.split(':')[0]}" if facts.role else ""
    )
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        f"# {title}",
        "",
        f"A `{facts.method}` merge made by evomerge {facts.version}: trial {facts.trial} of run "
        f"`{facts.run}` (recipe hash `{facts.recipe_hash}`)."
        + (f" It is {facts.role}." if facts.role else ""),
        "",
    ]
    if facts.comparison:
        lines += _comparison(facts)
    lines += [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'path = "{facts.local_name}"  # this directory, or its Hub id once uploaded',
        "model = AutoModelForCausalLM.from_pretrained(path)",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        'inputs = tokenizer("Hello", return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))",
        "```",
        "",
        "## Sources",
        "",
        "| name | source | revision | license |",
        "|---|---|---|---|",
    ]
    for s in facts.sources:
        where = {"hub": "Hugging Face hub", "zoo": "evomerge tiny zoo", "local": "local path"}
        role = " (base)" if s.name == facts.base and s.name != "base" else ""
        lines.append(
            f"| {s.name}{role} | `{s.ref}` ({where[s.kind]}) | {s.revision or '—'} "
            f"| {s.license or 'not stated'} |"
        )
    if any(s.kind == "local" for s in facts.sources):
        lines += ["", "Local paths are paths on the machine that ran the search."]
    if lic_note:
        lines += ["", f"License: `{lic}`: {lic_note}."]
    lines += [
        "",
        "## Scores",
        "",
        "As the search measured them: `fidelity` is the share of the objective's items the "
        "estimator scored, `± se` its standard error; `held-out` is the score on items the "
        "search never saw, where the trial was confirmed.",
        "",
        "| objective | direction | score | ± se | fidelity | estimator | held-out |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in facts.objectives:
        lines.append(
            f"| {o.name} | {o.direction} | {o.value:.4f} | {_num(o.stderr)} | "
            f"{_share(o.fidelity)} | {o.estimator or '—'} | {_num(o.heldout)} |"
        )
    lines += ["", "## Reproduce", "", "```sh", *facts.commands, "```"]
    if facts.notes:
        lines += ["", *facts.notes]
    lines += [
        "",
        "## Recipe",
        "",
        "Values rounded to 6 decimals; `recipe.yaml` beside this card holds them exactly.",
        "",
        "```yaml",
        rounded(facts.recipe_yaml).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _comparison(facts: CardFacts) -> list[str]:
    """The trial against the base, each source and the uniform merge, per objective."""
    mine = f"this model (trial {facts.trial})"
    return [
        "## Against the models it was made from",
        "",
        *comparison_table(
            [f"{o.name} ({o.direction})" for o in facts.objectives],
            (mine, facts.compared) if facts.compared else None,
            facts.comparison,
        ),
        "",
        facts.comparison_caption,
        "",
    ]


def comparison_table(
    headers: Sequence[str],
    mine: tuple[str, Sequence[float]] | None,
    rows: Sequence[ComparisonRow],
) -> list[str]:
    """A Markdown table: a column per objective, the chosen model's row in bold (``mine``:
    its label and scores), then each reference's score and Δ ± its error."""
    lines = ["| | " + " | ".join(headers) + " |", "|---|" + "---|" * len(headers)]
    if mine is not None:
        label, values = mine
        lines.append(f"| **{label}** | " + " | ".join(f"**{v:.4f}**" for v in values) + " |")
    for c in rows:
        cells = [
            f"{v:.4f} (Δ {d:+.4f}" + ("" if e is None else f" ± {e:.4f}") + ")"
            for v, d, e in zip(c.values, c.differences, c.errors, strict=True)
        ]
        lines.append(f"| {c.label} | " + " | ".join(cells) + " |")
    return lines


def rounded(recipe_yaml: str, decimals: int = 6) -> str:
    """A recipe for reading: every float rounded (a gene decoded to 0.9999999999999999 reads
    1.0); the exact recipe stays in recipe.yaml."""

    def walk(x: Any) -> Any:
        if isinstance(x, float):
            return round(x, decimals)
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return yaml.safe_dump(walk(yaml.safe_load(recipe_yaml)), sort_keys=False)


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def _share(v: float | None) -> str:
    """A share of items, as the rest of evomerge shows it (9 %, not 0.0932256)."""
    return "—" if v is None else f"{v:.0%}" if v >= 0.01 else f"{v:.1%}"


def objective_facts(
    names: Sequence[str],
    directions: Sequence[str],
    values: Sequence[float],
    *,
    estimators: Mapping[str, str] | None = None,
    fidelity: Mapping[str, float] | None = None,
    stderr: Mapping[str, float | None] | None = None,
    heldout: Mapping[str, float] | None = None,
) -> list[ObjectiveFact]:
    def num(m: Mapping[str, Any] | None, k: str) -> float | None:
        v = (m or {}).get(k)
        return None if v is None else float(v)

    return [
        ObjectiveFact(
            name=n,
            direction=d,
            value=float(v),
            estimator=(estimators or {}).get(n),
            fidelity=num(fidelity, n),
            stderr=num(stderr, n),
            heldout=num(heldout, n),
        )
        for n, d, v in zip(names, directions, values, strict=True)
    ]

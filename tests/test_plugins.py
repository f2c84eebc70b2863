"""Third-party merge methods: a package installed beside evomerge registers methods through the
``evomerge.methods`` entry point group; it is imported on the first lookup of its method."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from evomerge.errors import RecipeError
from evomerge.merge import methods
from evomerge.merge.materialize import materialize, plan
from evomerge.recipe import Recipe

PLUGIN = """
import torch
from evomerge.merge.methods import Method, Param, register

@register("halfway", params=(Param("t", 0.5, low=0.0, high=1.0),), needs_base=True, max_models=1)
def halfway(tensors, base, p):
    return torch.lerp(base, tensors[0], float(p["t"]))

NOT_A_METHOD = 42
"""


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution on sys.path, as pip would leave it: a module and its dist-info."""
    site = tmp_path / "site"
    (site / "evomerge_halfway").mkdir(parents=True)
    (site / "evomerge_halfway" / "__init__.py").write_text(PLUGIN)
    info = site / "evomerge_halfway-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evomerge-halfway\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [evomerge.methods]
            halfway = evomerge_halfway
            broken = evomerge_halfway:NOT_A_METHOD
            missing = evomerge_no_such_module
            """
        )
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in ("halfway", "broken", "missing"):
        methods.METHODS.pop(name, None)
    sys.modules.pop("evomerge_halfway", None)


def test_entry_point_method_loads_on_first_lookup(installed: Path, family: dict[str, Path]) -> None:
    assert "halfway" not in methods.METHODS and "evomerge_halfway" not in sys.modules
    recipe = Recipe.model_validate(
        {
            "sources": {"base": str(family["base"]), "ft0": str(family["ft0"])},
            "method": "halfway",
            "base": "base",
            "parameters": {"t": 0.25},
        }
    )
    mp = plan(recipe)
    assert mp.method is methods.METHODS["halfway"]
    name, out = next(iter(materialize(mp)))
    base, ft0 = (mp.sources[k].get(name) for k in ("base", "ft0"))
    assert torch.allclose(out, base + 0.25 * (ft0 - base))
    with pytest.raises(RecipeError, match=r"t=2\.0 is outside"):
        plan(recipe.model_copy(update={"parameters": {"t": 2.0}}))


def test_unknown_names_list_plugins_and_bad_plugins_are_named(installed: Path) -> None:
    with pytest.raises(RecipeError, match=r"unknown merge method 'halfwya'.*'halfway'.*'linear'"):
        methods.get_method("halfwya")
    assert "evomerge_halfway" not in sys.modules  # listing names imports nothing
    with pytest.raises(RecipeError, match=r"'broken' .*registered no method of that name"):
        methods.get_method("broken")
    with pytest.raises(RecipeError, match=r"'missing' .*failed to load.*evomerge_no_such_module"):
        methods.get_method("missing")

"""The package as a user installs it: a wheel in a fresh venv, run from an empty directory.

A checkout hides what a wheel lacks (presets beside the package, files read relative to the
source tree). The wheel is built offline (no build isolation) and installed into a fresh venv
without pip's index; its dependencies are this environment's installed distributions, reached
through a ``.pth`` file, so the test needs no network and no second copy of torch.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(out), str(REPO)],
        check=True, capture_output=True, text=True, cwd=out,
    )  # fmt: skip
    (whl,) = out.glob("evomerge-*.whl")
    return whl


def test_the_wheel_carries_every_preset(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("search_spaces", "fitness", "experiments"):
        prefix = f"evomerge/presets/{folder}/"
        shipped = {n.removeprefix(prefix) for n in names if n.startswith(prefix)}
        in_checkout = {p.name for p in (REPO / folder).glob("*.yaml")}
        assert in_checkout and shipped == in_checkout, folder


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel; returns its bin/ directory."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # this environment's distributions, for the dependencies; not the checkout (an editable
    # install's path line would only be honoured in a site directory, which these are not)
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (target / "_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    subprocess.run(
        [*pip, "install", "-q", "--no-index", "--no-deps", "--force-reinstall", str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    # every dependency the wheel declares is satisfied by what the fresh venv sees
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "from importlib.metadata import distribution, requires, version; "
         "from packaging.requirements import Requirement; "
         "bad = [r for r in map(Requirement, requires('evomerge')) if not r.marker "
         "and not r.specifier.contains(version(r.name), prereleases=True)]; "
         "print(bad); assert not bad"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    return venv / "bin"


def _evomerge(bin_dir: Path, cwd: Path, *args: str, timeout: int = 600) -> str:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "80"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [str(bin_dir / "evomerge"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert out.returncode == 0, f"evomerge {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    # other libraries' progress bars and warnings stay off the terminal
    assert "Loading weights" not in out.stdout + out.stderr
    assert "Warning" not in out.stderr, out.stderr
    return out.stdout


def _score_row(table: str) -> list[str]:
    """The cells of the task's row of `evomerge eval`'s table, less the time."""
    (row,) = [line for line in table.splitlines() if "token_accuracy" in line]
    return [c.strip() for c in row.strip("│ ").split("│")][:5]


def test_installed_wheel_runs_from_an_empty_directory(
    installed: Path, unit_zoo: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run(
        [str(installed / "python"), "-c", "import evomerge; print(evomerge.__file__)"],
        cwd=empty, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(installed.parent), where  # not the checkout

    shown = _evomerge(
        installed, empty, "space", "show", "dare_ties-per-layer",
        "--source", f"base={unit_zoo / 'base'}", "--source", f"rev9={unit_zoo / 'experts/rev9'}",
        "--base", "base",
    )  # fmt: skip
    assert "rev9" in shown

    args = ("eval", str(unit_zoo / "experts/rev9"), "--task", "rev9", "--zoo", str(unit_zoo))
    scored = _score_row(_evomerge(installed, empty, *args))
    # the preset task found its items in the zoo and scored them as the checkout does
    assert scored == _score_row(_evomerge(Path(sys.executable).parent, REPO, *args))
    assert scored[:2] == ["rev9", "token_accuracy"] and 0 < float(scored[2]) <= 1

    demo = _evomerge(
        installed, empty, "demo", "--budget", "12", "--zoo", str(unit_zoo), "--preset", "unit"
    )
    assert "Pareto front" in demo and (empty / "out/demo/recipe.yaml").is_file()
    front = demo[demo.index("Pareto front") : demo.index("members on the front")]
    rows = [line for line in front.splitlines() if line.startswith("│")]
    # at 80 columns no cell wraps: a wrapped row would continue on a line with no trial
    assert rows and not [r for r in rows if r.split("│")[1].strip() == ""], front
    assert sorted(p.name for p in empty.iterdir()) == ["out", "runs"]
    # a shipped experiment by name, as the README's `evomerge run` shows
    args = ("run", "zoo-demo", "--budget", "2", "--zoo", str(unit_zoo), "--run-dir", "again")
    assert "finished: 2 evaluations" in _evomerge(installed, empty, *args)

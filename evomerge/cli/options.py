"""The options and arguments several commands share, declared once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

DEFAULT_ZOO = Path(os.environ.get("EVOMERGE_ZOO", Path.home() / ".cache" / "evomerge" / "zoo"))


def flag(*decls: str, help: str) -> Any:
    """A boolean option shown as a flag in --help (typer would add a ``<bool>`` type to it)."""
    return typer.Option(*decls, help=help, metavar="")


# the arguments many commands share, declared once
RunDirArg = Annotated[Path, typer.Argument(help="A run directory")]
ZooOption = Annotated[Path, typer.Option(help="Where zoo: paths point")]

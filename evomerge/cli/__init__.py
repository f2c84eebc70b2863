"""`evomerge …` — the command line: argument parsing and printing; the work is the library's."""

from evomerge.cli import models, runs  # noqa: F401 (their commands register on the app)
from evomerge.cli.app import app

__all__ = ["app"]

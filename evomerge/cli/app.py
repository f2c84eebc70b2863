"""The `evomerge` command: the Typer app, its option types and the error handling every
command shares (errors evomerge raises on purpose print as one clear line)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from evomerge.cli.options import flag
from evomerge.errors import EvomergeError


def _as_flag(option: Any) -> Any:
    """--help shown as the flag it is (typer types it ``<bool>`` otherwise)."""
    if option is not None:
        option.metavar = ""
    return option


class _Command(typer.core.TyperCommand):
    def get_help_option(self, ctx: Any) -> Any:
        return _as_flag(super().get_help_option(ctx))


class _Group(typer.core.TyperGroup):
    def get_help_option(self, ctx: Any) -> Any:
        return _as_flag(super().get_help_option(ctx))


class _Typer(typer.Typer):
    """A Typer app whose commands and groups show --help as a flag."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(cls=_Group, **kw)

    def command(self, *args: Any, **kw: Any) -> Any:
        kw.setdefault("cls", _Command)
        return super().command(*args, **kw)


app = _Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Evolutionary and black-box optimization of LLM merge recipes.",
)
zoo_app = _Typer(no_args_is_help=True, help="The tiny synthetic model zoo.")
app.add_typer(zoo_app, name="zoo")
space_app = _Typer(no_args_is_help=True, help="Search spaces (search_spaces/*.yaml).")
app.add_typer(space_app, name="space")
console = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

_DEBUG = {"on": False}  # --debug: errors raise with their traceback


class OptionError(EvomergeError):
    """A command-line option's value cannot be used; the message names the option."""


@app.callback()
def _main(
    debug: Annotated[bool, flag(help="Show tracebacks instead of one-line errors")] = False,
) -> None:
    _DEBUG["on"] = debug
    quiet_libraries()


def quiet_libraries() -> None:
    """Other libraries' progress bars (transformers' "Loading weights") and warnings stay off
    our terminal: a search loads weights hundreds of times. Ours stay; a user's own settings
    of these variables win."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if "transformers" in sys.modules:  # imported before the environment said so
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    if not sys.warnoptions:  # `python -W …` asks for them
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(?!evomerge)")


def friendly(fn: F) -> F:
    """Errors users can cause print as one line (exit 2); anything else is a bug of ours: one
    line too (exit 1), with the traceback under ``evomerge --debug``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except EvomergeError as e:
            if _DEBUG["on"]:
                raise
            err.print(f"[bold red]error:[/] {one_line(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as e:
            if _DEBUG["on"]:
                raise
            msg = one_line(f"{type(e).__name__}: {e}")
            err.print(
                f"[bold red]internal error:[/] {msg} (evomerge --debug … shows the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def one_line(text: str) -> str:
    from rich.markup import escape

    return escape(" ".join(text.split()))


def key_values(items: list[str] | None, option: str) -> dict[str, Any]:
    """``KEY=VALUE`` options, each value read as YAML."""
    import yaml

    out = {}
    for item in items or []:
        key, eq, val = item.partition("=")
        if not eq or not key:
            raise typer.BadParameter(f"{option} {item!r}: write KEY=VALUE")
        out[key] = yaml.safe_load(val)
    return out


def parse_size(text: str, option: str = "--max-shard-size") -> int:
    """A size as Hugging Face writes it: 5GB = 5·10⁹ bytes, 5GiB = 5·2³⁰, a plain integer is
    bytes (``transformers``' own parser, so our shards match what ``save_pretrained`` makes)."""
    from transformers.utils.hub import convert_file_size_to_int

    t = text.strip()
    try:
        size = int(t) if t.isdigit() else convert_file_size_to_int(t)
    except ValueError:
        raise OptionError(
            f"{option} {text!r}: not a size; write an integer and a unit, e.g. 5GB, 500MB, 2GiB"
        ) from None
    if size <= 0:
        raise OptionError(f"{option} {text!r}: the size must be positive")
    return size

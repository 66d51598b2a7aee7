"""What every command shares: the consoles, the options, the one-line error."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import track

from celltally.data.datasets import FORMATS
from celltally.errors import InputError

app = typer.Typer(
    help="Count and locate cells in microscopy images.", no_args_is_help=True, add_completion=False
)
console = Console()
errors = Console(stderr=True, highlight=False)

ModelOption = Annotated[
    str,
    typer.Option("--model", "-m", help="Bundled model name, checkpoint folder or training run."),
]
FormatOption = Annotated[str | None, typer.Option("--format", help=f"One of {', '.join(FORMATS)}.")]
IntervalOption = Annotated[
    bool,
    typer.Option(
        "--ci",
        help="Calibrated count intervals (models with a variance head): ci_low, ci_high, std.",
    ),
]
TTAOption = Annotated[
    bool,
    typer.Option(
        "--tta",
        help="Test-time augmentation: average the model's output over the image's 8 flips and"
        " quarter turns (8x slower, lower count error).",
    ),
]
LevelOption = Annotated[
    float, typer.Option(help="Interval level with --ci, a fraction.", min=0.01, max=0.999)
]


DiameterOption = Annotated[
    float | None,
    typer.Option(
        help="Cell diameter in pixels; images are rescaled to the model's. Default: estimated"
        " per image (models that record their training diameter).",
        min=0.5,
    ),
]
ChannelOption = Annotated[
    int | None,
    typer.Option(
        help="The channel holding the cells (0-based). Default: grey as is, colour histology"
        " as colour, the blue (RGB) or first channel of a fluorescence composite.",
        min=0,
    ),
]


def fail(message: str) -> None:
    errors.print(f"[red]error:[/] {message}", soft_wrap=True)


def reports_errors(command: Callable) -> Callable:
    """Turn a command's ``InputError`` or ``ValueError`` into the one-line error and exit code 2."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (InputError, ValueError) as error:
            fail(str(error))
            raise typer.Exit(2) from None

    return run


def progress(description: str) -> Callable:
    """A progress bar on stderr over the items it is given, gone when they are done."""
    return lambda items: track(items, description=description, console=errors, transient=True)

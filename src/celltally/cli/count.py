"""``celltally count`` and ``celltally models``: counting users' images, and which models
there are."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from celltally.cli.common import (
    ChannelOption,
    DiameterOption,
    IntervalOption,
    LevelOption,
    ModelOption,
    TTAOption,
    console,
    errors,
    fail,
    progress,
    reports_errors,
)
from celltally.counting import CountRun, count_files
from celltally.data.images import find_images
from celltally.errors import InputError
from celltally.models import (
    DEFAULT_MODEL,
    bundled_models,
    create_model,
    list_models,
    load_model,
)
from celltally.models.io import model_card
from celltally.uncertainty import (
    DEFAULT_LEVEL,
    check_intervals,
)


@reports_errors
def count(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.")],
    model: ModelOption = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "celltally-out"
    ),
    overlays: Annotated[bool, typer.Option(help="Write overlay PNGs.")] = True,
    ci: IntervalOption = False,
    level: LevelOption = DEFAULT_LEVEL,
    tta: TTAOption = False,
    diameter: DiameterOption = None,
    channel: ChannelOption = None,
) -> None:
    """Count cells per image: counts.csv, points/, density/, overlays/ and run.json in OUT."""
    files = find_images(paths)
    if not files:
        raise InputError(" ".join(paths), "no images found (PNG, JPEG, TIFF or BMP)")
    counter = load_model(model)
    if ci:
        check_intervals(counter, level)
    if diameter is not None:
        counter.check_diameter(diameter)
    options = {"diameter": diameter, "channel": channel, "tta": tta or None}
    options["ci"] = level if ci else None
    record = {"command": "count", "argv": sys.argv[1:]}
    run = count_files(counter, model, files, out, options, overlays, record, progress("counting"))
    _print_counts(run, out)
    for message in run.errors:
        fail(message)
    if run.errors:
        fail(f"{len(run.errors)} of {len(files)} file(s) could not be counted; the others were")
        raise typer.Exit(1)


def _print_counts(run: CountRun, out: Path) -> None:
    table = run.table
    view = Table(title=f"cell counts (written to {out})")
    for column in ("image", "count", "n_points", "diameter"):
        view.add_column(column, justify="left" if column == "image" else "right")
    for row in table.itertuples():
        size = "" if pd.isna(row.diameter) else f"{row.diameter:.1f}"
        view.add_row(
            row.image + (" [yellow]![/]" if row.warning else ""),
            f"{row.count:.1f}",
            str(row.n_points),
            size,
        )
    if len(table) > 1:
        view.add_section()
        view.add_row(
            f"{len(table)} images", f"{table['count'].sum():.1f}", str(table["n_points"].sum()), ""
        )
    console.print(view)
    flagged = run.flagged
    for row in flagged.itertuples():
        errors.print(f"[yellow]warning:[/] {row.image}: {row.warning}", soft_wrap=True)
    if len(flagged):
        errors.print(
            f"{len(flagged)} of {len(table)} image(s) flagged: their counts may be less"
            " trustworthy (the warning column of counts.csv says why)"
        )


@reports_errors
def models() -> None:
    """List the architectures in the registry and the bundled models."""
    view = Table(title="architectures")
    view.add_column("name")
    view.add_column("parameters (1 / 3 input channels)", justify="right")
    for name in list_models():
        sizes = [
            sum(p.numel() for p in create_model(name, in_channels=c).parameters()) for c in (1, 3)
        ]
        view.add_row(name, f"{sizes[0]:,} / {sizes[1]:,}")
    console.print(view)
    bundled = bundled_models()
    console.print("[bold]bundled models[/] (* the default)")
    for name, path in bundled.items():
        console.print(f"\n[bold]{name}[/]" + (" *" if name == DEFAULT_MODEL else ""))
        for key, value in model_card(path).items():
            console.print(f"  {key:<14}{value}", soft_wrap=False)
    if bundled:
        console.print(f"bundled models are in {next(iter(bundled.values())).parent}")

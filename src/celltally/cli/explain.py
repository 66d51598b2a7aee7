"""``celltally explain``: what a model sees (density views and region counts, saliency,
inversion)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import tifffile
import typer
from rich.table import Table

from celltally.cli.common import (
    ChannelOption,
    DiameterOption,
    IntervalOption,
    LevelOption,
    ModelOption,
    console,
    reports_errors,
)
from celltally.data.images import read_image
from celltally.explain import invert, layer_table, saliency, unpadded
from celltally.io import atomic_write, write_json
from celltally.models import (
    DEFAULT_MODEL,
    load_model,
)
from celltally.regions import region_counts, regions_from
from celltally.uncertainty import (
    DEFAULT_LEVEL,
    check_intervals,
)
from celltally.viz import (
    save_inversions,
    save_saliency,
    save_view,
)

ImageArgument = Annotated[Path, typer.Argument(help="An image file.", metavar="IMAGE")]
ExplainOutOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
EXPLAIN_OUT = Path("celltally-explain")

explain_app = typer.Typer(
    help="What a model sees: density views and region counts, saliency, feature inversion.",
    no_args_is_help=True,
)


@explain_app.command("saliency")
@reports_errors
def explain_saliency(
    image_path: ImageArgument,
    model: ModelOption = DEFAULT_MODEL,
    out: ExplainOutOption = EXPLAIN_OUT,
    smooth: Annotated[
        int, typer.Option(help="SmoothGrad: average over this many noisy copies (0: plain).")
    ] = 16,
) -> None:
    """The gradient of the count with respect to each pixel: <stem>_saliency.tif and a PNG
    beside the image."""
    counter = load_model(model)
    image = read_image(image_path)
    saliency_map = saliency(counter, image, samples=smooth, source=str(image_path))
    stem = image_path.stem
    atomic_write(out / f"{stem}_saliency.tif", lambda tmp: tifffile.imwrite(tmp, saliency_map))
    title = f"saliency{f' (SmoothGrad, {smooth} copies)' if smooth else ''}"
    save_saliency(out / f"{stem}_saliency.png", image, saliency_map, title)
    console.print(f"saliency of {image_path} written to {out}")


@explain_app.command("view")
@reports_errors
def explain_view(
    image_path: ImageArgument,
    model: ModelOption = DEFAULT_MODEL,
    out: ExplainOutOption = EXPLAIN_OUT,
    boxes: Annotated[
        list[str] | None, typer.Option("--box", help="Region y0,x0,y1,x1 (repeatable).")
    ] = None,
    polygons: Annotated[
        list[str] | None, typer.Option("--polygon", help="Region y,x;y,x;y,x... (repeatable).")
    ] = None,
    geojson: Annotated[
        Path | None, typer.Option(help="Regions: the polygons of a GeoJSON file ([x, y] pixels).")
    ] = None,
    ci: IntervalOption = False,
    level: LevelOption = DEFAULT_LEVEL,
    diameter: DiameterOption = None,
    channel: ChannelOption = None,
) -> None:
    """The density and the detected centres over the image (<stem>_view.png), and the count in
    each region (<stem>_regions.csv), counted as `celltally count` counts."""
    counter = load_model(model)
    if ci:
        check_intervals(counter, level)
    image = read_image(image_path)
    source = str(image_path)
    found = counter.network_pass(image, diameter=diameter, channel=channel, source=source)
    prediction = counter.read_out(found)
    regions = regions_from(boxes or [], polygons or [], geojson, image.shape[:2])
    rows = region_counts(counter, found, prediction.density, regions, level if ci else None)
    density, points = prediction.density, prediction.points
    stem = image_path.stem
    save_view(out / f"{stem}_view.png", image, density, points, regions, rows)
    if rows:
        table = pd.DataFrame(rows).round(3)
        atomic_write(out / f"{stem}_regions.csv", lambda tmp: table.to_csv(tmp, index=False))
        view = Table(title=f"regions of {image_path.name}")
        for column in table.columns:
            view.add_column(column, justify="left" if column == "region" else "right")
        for row in table.itertuples(index=False):
            view.add_row(*(str(v) for v in row))
        console.print(view)
    console.print(f"{image_path}: {density.sum(dtype=np.float64):.1f} cells; view in {out}")


@explain_app.command("layers")
@reports_errors
def explain_layers(model: ModelOption = DEFAULT_MODEL) -> None:
    """The names of a model's layers (for explain invert), with their output shapes for a
    64x64 image."""
    counter = load_model(model)
    view = Table(title=f"layers of {model} ({counter.config.arch})")
    for column in ("layer", "type", "output (C, H, W) for 64x64"):
        view.add_column(column)
    for name, kind, shape in layer_table(counter):
        view.add_row(name, kind, shape)
    console.print(view)


@explain_app.command("invert")
@reports_errors
def explain_invert(
    image_path: ImageArgument,
    layers: Annotated[list[str], typer.Option("--layer", "-l", help="Layer name (repeatable).")],
    model: ModelOption = DEFAULT_MODEL,
    out: ExplainOutOption = EXPLAIN_OUT,
    steps: Annotated[int, typer.Option(help="Gradient steps per layer.", min=1)] = 300,
) -> None:
    """Reconstruct the image from each layer's features (feature inversion): a PNG of the input
    beside the reconstructions and the objective curves, and the figures as JSON."""
    counter = load_model(model)
    image = read_image(image_path)
    source = str(image_path)
    inversions = [invert(counter, image, layer, steps, source=source) for layer in layers]
    stem = image_path.stem
    normalised = unpadded(counter, counter.prepare(image))[0].permute(1, 2, 0).numpy()
    save_inversions(out / f"{stem}_inversion.png", normalised, inversions)
    summary = {
        i.layer: {"correlation": i.correlation, "objective": i.objective} for i in inversions
    }
    write_json(out / f"{stem}_inversion.json", summary, indent=None)
    for inversion in inversions:
        console.print(
            f"{inversion.layer}: objective {inversion.objective[0]:.3g} ->"
            f" {inversion.objective[-1]:.3g}, correlation with the input"
            f" {inversion.correlation:.2f}"
        )

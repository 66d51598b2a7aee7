"""``celltally evaluate`` and ``calibrate``: a model's errors and intervals on annotated images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from celltally.cli.common import (
    FormatOption,
    IntervalOption,
    LevelOption,
    ModelOption,
    TTAOption,
    console,
    progress,
    reports_errors,
)
from celltally.data.datasets import load_dataset, resolve_data
from celltally.data.splits import evaluation_samples
from celltally.io import write_json
from celltally.metrics import DETECTION_RADIUS
from celltally.models import (
    DEFAULT_MODEL,
    load_model,
    model_hash,
)
from celltally.models.io import save_model, versions
from celltally.predict import evaluate as evaluate_model
from celltally.train import with_variance_head
from celltally.uncertainty import (
    DEFAULT_LEVEL,
    RELIABILITY_LEVELS,
    check_intervals,
    min_calibration_images,
    reliability_of,
)
from celltally.uncertainty import calibrate as calibrate_model
from celltally.viz import (
    save_reliability_plot,
)


@reports_errors
def evaluate(
    data: Annotated[str, typer.Option(help="Data folder, or the name of a set in the data path.")],
    model: ModelOption = DEFAULT_MODEL,
    fmt: FormatOption = None,
    subset: Annotated[
        str, typer.Option(help="'test' (fixed test set, or images the model never saw) or 'all'.")
    ] = "test",
    radius: Annotated[
        float, typer.Option(help="Detection match radius in pixels.")
    ] = DETECTION_RADIUS,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the results as JSON here.")
    ] = None,
    ci: IntervalOption = False,
    level: LevelOption = DEFAULT_LEVEL,
    reliability: Annotated[
        Path | None,
        typer.Option(help="With --ci: write the reliability plot (PNG) here."),
    ] = None,
    tta: TTAOption = False,
) -> None:
    """Count MAE, RMSE, relative error and detection precision / recall / F1 on annotated images;
    with --ci, the coverage and mean width of the count intervals."""
    counter = load_model(model)
    if ci:
        check_intervals(counter, level)
    root, fmt = resolve_data(data, fmt)
    samples = evaluation_samples(load_dataset(root, fmt), fmt, subset, counter.config.training)
    metrics = evaluate_model(counter, samples, radius, level if ci else None, tta=tta or None)
    if ci:
        metrics["reliability"] = reliability_of(counter, metrics["images"])
        if reliability is not None:
            curve = metrics["reliability"]
            save_reliability_plot(reliability, curve["levels"], curve["observed"], len(samples))
    result = {"model": model, "model_hash": model_hash(model), "data": str(root), "format": fmt}
    result |= {"subset": subset, **metrics, "versions": versions()}
    _print_evaluation(result)
    if out:
        write_json(out, result)


@reports_errors
def calibrate(
    data: Annotated[str, typer.Option(help="Annotated images the model was not trained on.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the recalibrated model.")],
    model: ModelOption = DEFAULT_MODEL,
    fmt: FormatOption = None,
    subset: Annotated[
        str, typer.Option(help="'all' images, or 'test' (those the model never saw).")
    ] = "all",
    fit_on: Annotated[
        str | None,
        typer.Option(
            help="Annotated images (the model's training images) to fit a variance head on"
            " first: for a model trained without one."
        ),
    ] = None,
    counts: Annotated[
        bool,
        typer.Option(
            "--counts",
            help="Also correct the counts first: fit gain * map + offset to these images' counts.",
        ),
    ] = False,
    tta: TTAOption = False,
) -> None:
    """Calibrate a model on annotated images: its count intervals (conformal prediction) and,
    with --counts, its counts; writes the calibrated copy to OUT (with --tta: calibrated, and
    saved, with test-time augmentation)."""
    counter = load_model(model)
    counter.config.tta = counter.config.tta or tta  # calibrated, and saved, with it
    if fit_on is not None:
        loaded = [s.load() for s in load_dataset(*resolve_data(fit_on, fmt))]
        counter = with_variance_head(counter, *map(list, zip(*loaded, strict=True)))
    elif not (counter.config.variance_head or counts):
        raise ValueError(
            f"this {counter.config.arch} model has no variance head; fit one with --fit-on"
            " TRAINING_IMAGES, train with --set variance_head=true, or calibrate only its"
            " counts with --counts"
        )
    root, fmt = resolve_data(data, fmt)
    samples = evaluation_samples(load_dataset(root, fmt), fmt, subset, counter.config.training)
    calibrate_model(counter, samples, progress("calibrating"), counts=counts)
    counter.config.training["calibration"] = {"data": str(root), "images": len(samples)}
    counter.config.training["calibration"]["counts"] = counts
    save_model(counter, out)
    console.print(f"calibrated on {len(samples)} images; model written to {out}")
    if counts:
        console.print(
            f"counts: map x {counter.config.count_gain:.4f}"
            f" {counter.config.count_offset:+.4g} per pixel"
        )
    if counter.config.variance_head:
        levels = [lv for lv in RELIABILITY_LEVELS if min_calibration_images(lv) <= len(samples)]
        console.print(
            f"intervals: conformal at levels up to {max(levels, default=0):.0%}, a Gaussian"
            " temperature above"
        )


def _print_evaluation(result: dict) -> None:
    view = Table(
        title=f"{result['model']} on {result['n_images']} images"
        f" ({result['data']}, {result['subset']})"
    )
    for column in ("MAE", "RMSE", "rel. error", "precision", "recall", "F1"):
        view.add_column(column, justify="right")
    c, d = result["count"], result["detection"]
    view.add_row(
        f"{c['mae']:.2f}",
        f"{c['rmse']:.2f}",
        f"{100 * c['mre']:.1f}%",
        f"{d['precision']:.3f}",
        f"{d['recall']:.3f}",
        f"{d['f1']:.3f}",
    )
    console.print(view)
    console.print(f"detection: one-to-one matches within {d['radius']:g} px")
    if result.get("interval"):
        i = result["interval"]
        console.print(
            f"{i['level']:.0%} intervals: coverage {i['coverage']:.1%} of {result['n_images']}"
            f" images, mean width {i['mean_width']:.2f} cells"
        )

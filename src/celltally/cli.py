"""The ``celltally`` command line: count, train, synth, evaluate, calibrate, benchmark, models."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import tifffile
import torch
import typer
from rich.console import Console
from rich.progress import track
from rich.table import Table

from celltally.benchmark import BenchmarkConfig, run_benchmark
from celltally.config import parse_assignments, read_settings_file
from celltally.data.datasets import FORMATS, default_channels, load_dataset, resolve_data
from celltally.data.images import find_images, read_image
from celltally.data.points import atomic_write, write_points_csv
from celltally.data.splits import VGG_POOL_SIZE, Split, protocol_split
from celltally.data.synth import (
    PRESETS,
    SynthConfig,
    preset,
    synth_samples,
    synth_settings,
    write_set,
)
from celltally.errors import InputError
from celltally.explain import invert, layer_table, saliency, unpadded
from celltally.metrics import DETECTION_RADIUS
from celltally.models import (
    DEFAULT_MODEL,
    bundled_models,
    list_models,
    load_model,
    model_hash,
    read_config,
)
from celltally.models.io import resolve_model, save_model, versions
from celltally.predict import ImageResult, count_file
from celltally.predict import evaluate as evaluate_model
from celltally.regions import box_region, geojson_regions, polygon_region, region_counts
from celltally.train import TrainConfig, with_variance_head
from celltally.train import train as run_training
from celltally.uncertainty import (
    DEFAULT_LEVEL,
    check_intervals,
    min_calibration_images,
    reliability,
)
from celltally.uncertainty import calibrate as calibrate_model
from celltally.viz import (
    RELIABILITY_LEVELS,
    save_inversions,
    save_overlay,
    save_reliability_plot,
    save_saliency,
    save_view,
)

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


def fail(message: str) -> None:
    errors.print(f"[red]error:[/] {message}", soft_wrap=True)


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


@app.command()
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
    try:
        files = find_images(paths)
        if not files:
            raise InputError(" ".join(paths), "no images found (PNG, JPEG, TIFF or BMP)")
        counter = load_model(model)
        if ci:
            check_intervals(counter, level)
        if diameter is not None:
            counter.check_diameter(diameter)
    except (InputError, ValueError) as error:
        fail(str(error))
        raise typer.Exit(2) from None
    options = {"diameter": diameter, "channel": channel, "tta": tta or None}
    options["ci"] = level if ci else None
    rows, failed = [], 0
    names: set[str] = set()
    for path in track(files, description="counting", console=errors, transient=True):
        try:
            results = count_file(counter, path, **options)
        except InputError as error:
            fail(str(error))
            failed += 1
            continue
        for result in results:
            result.name = _unique(result.name, names)
            _write_outputs(out, result, overlays)
            rows.append(_count_row(result, model))
    table = pd.DataFrame(rows, columns=_count_columns(ci)).round(3)
    atomic_write(out / "counts.csv", lambda tmp: table.to_csv(tmp, index=False))
    record = {
        "command": "count",
        "argv": sys.argv[1:],
        "model": model,
        "model_hash": model_hash(model),
        "model_path": str(resolve_model(model)),
        "model_config": counter.config.to_dict(),
        "options": options,
        "images": len(rows),
        "failed": failed,
        "flagged": int((table["warning"] != "").sum()),
        "versions": versions(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write(out / "run.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    _print_counts(table, out)
    if failed:
        fail(f"{failed} of {len(files)} file(s) could not be counted; the others were")
        raise typer.Exit(1)


def _count_columns(ci: bool) -> list[str]:
    intervals = ["ci_low", "ci_high", "std"] if ci else []
    return ["image", "count", *intervals, "n_points", "diameter", "scale", "warning", "model"]


def _count_row(result: ImageResult, model: str) -> dict:
    """``counts.csv``'s row of one counted image."""
    found = result.prediction
    row = {"image": result.label, "count": round(found.count, 3)}
    if found.interval is not None:
        bounds = found.interval
        row |= {"ci_low": bounds.low, "ci_high": bounds.high, "std": bounds.std}
    return row | {
        "n_points": found.n_points,
        "diameter": found.diameter,
        "scale": found.scale,
        "warning": "; ".join(found.warnings),
        "model": model,
    }


def _write_outputs(out: Path, result: ImageResult, overlays: bool) -> None:
    found = result.prediction
    write_points_csv(out / "points" / f"{result.name}.csv", found.points)
    atomic_write(
        out / "density" / f"{result.name}.tif",
        lambda tmp: tifffile.imwrite(tmp, found.density.astype(np.float32)),
    )
    if overlays:
        save_overlay(
            out / "overlays" / f"{result.name}.png", result.image, found.points, found.count
        )


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    taken.add(candidate)
    return candidate


def _print_counts(table: pd.DataFrame, out: Path) -> None:
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
    flagged = table[table["warning"] != ""]
    for row in flagged.itertuples():
        errors.print(f"[yellow]warning:[/] {row.image}: {row.warning}", soft_wrap=True)
    if len(flagged):
        errors.print(
            f"{len(flagged)} of {len(table)} image(s) flagged: their counts may be less"
            " trustworthy (the warning column of counts.csv says why)"
        )


@app.command()
def train(
    data: Annotated[str, typer.Option(help="Data folder, or the name of a set in the data path.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (resumed if it exists).")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help=f"One of {', '.join(FORMATS)}, or 'synth' to train on simulated images (DATA is"
            " then a preset or a synth.json; the images are generated, never stored).",
        ),
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Architecture to train.")] = "fcrn_a",
    n_train: Annotated[int, typer.Option(help="Training images drawn from the pool.")] = 32,
    n_val: Annotated[int, typer.Option(help="Validation images drawn from the pool.")] = 32,
    seed: Annotated[int, typer.Option(help="Seeds the split, sampling and initialisation.")] = 0,
    protocol: Annotated[
        str | None,
        typer.Option(help="lempitsky (VGG cells, the default there) or countception."),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of training settings.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="A setting, e.g. --set epochs=20.")
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(help="Fine-tune this trained model (bundled name, checkpoint or run)."),
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for PyTorch.")] = None,
) -> None:
    """Train a model on dot-annotated images (N training + N validation images, seeded)."""
    if threads:
        torch.set_num_threads(threads)
    try:
        given = {"arch": model, "seed": seed} | ({"init": init} if init else {})
        channels = default_channels(fmt if fmt == "synth" else resolve_data(data, fmt)[1])
        settings = _settings(config, set_ or [], channels, **given)
        source, fmt, split = _training_split(data, fmt, n_train, n_val, seed, protocol)
    except (InputError, ValueError) as error:
        fail(str(error))
        raise typer.Exit(2) from None
    provenance = split.record(source, fmt, seed)
    console.print(
        f"training {model} on {len(split.train)} images, validating on {len(split.val)} ({source})"
    )
    try:
        trained = run_training(settings, split.train, split.val, out, provenance)
    except (InputError, ValueError) as error:
        fail(str(error))
        raise typer.Exit(2) from None
    info = trained.config.training
    console.print(
        f"best validation MAE {info['best_val_mae']:.2f} after {info['epochs_run']} epochs"
        f" ({info['train_time_s']:.0f} s); model in {out / 'model'}"
    )


def _training_split(
    data: str, fmt: str | None, n_train: int, n_val: int, seed: int, protocol: str | None
) -> tuple[str, str, Split]:
    """(where the data came from, its format, the seeded split) for a data folder or a synthetic
    preset."""
    if fmt == "synth":
        label, synth_config = synth_settings(data)
        samples = synth_samples(synth_config, n_train + n_val, seed, label)
        return f"synth:{label}", fmt, Split(samples[:n_train], samples[n_train:], [])
    root, fmt = resolve_data(data, fmt)
    split = protocol_split(load_dataset(root, fmt), fmt, n_train, n_val, seed, protocol)
    return str(root.resolve()), fmt, split


def _settings(
    config: Path | None, assignments: list[str], in_channels: int, **given
) -> TrainConfig:
    values = read_settings_file(config) | parse_assignments(TrainConfig, assignments)
    return TrainConfig.from_dict({"in_channels": in_channels, **values, **given})


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    preset_name: Annotated[
        str, typer.Option("--preset", help=f"One of {', '.join(PRESETS)}.")
    ] = "vgg_cells",
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 100,
    seed: Annotated[int, typer.Option(help="The same seed gives byte-identical images.")] = 0,
    config: Annotated[
        Path | None, typer.Option(help="JSON file of settings overriding the preset.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="A setting, e.g. --set cluster_prob=0.5.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Processes (default: all cores).")] = None,
) -> None:
    """Simulate microscopy images with exact dots, masks and counts (SIMCEP-style).

    OUT gets <name>.png|.tif + <name>.csv (dots, the layout 'train --format points' reads),
    labels/<name>.tif (instances), masks/<name>.png (foreground), manifest.csv and synth.json.
    """
    try:
        overrides = read_settings_file(config) | parse_assignments(SynthConfig, set_ or [])
        settings = preset(preset_name, **overrides)
        if n < 1:
            raise ValueError(f"--n must be at least 1, got {n}")
    except (InputError, ValueError) as error:
        fail(str(error))
        raise typer.Exit(2) from None
    started = time.perf_counter()
    try:
        jobs = write_set(settings, n, out, seed, workers)
        rows = list(track(jobs, total=n, description="simulating"))
    except ValueError as error:  # settings that cannot be simulated, e.g. too many cells
        fail(str(error))
        raise typer.Exit(1) from None
    elapsed = time.perf_counter() - started
    counts = np.array([row["count"] for row in rows])
    console.print(
        f"{n} images ({counts.mean():.1f} +- {counts.std():.1f} cells) in {elapsed:.1f} s"
        f" ({n / elapsed:.1f} images/s); written to {out}"
    )


@app.command()
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
    try:
        counter = load_model(model)
        if ci:
            check_intervals(counter, level)
        root, fmt = resolve_data(data, fmt)
        samples = _evaluation_set(load_dataset(root, fmt), fmt, subset, counter.config.training)
        metrics = evaluate_model(counter, samples, radius, level if ci else None, tta=tta or None)
    except (InputError, ValueError) as error:
        fail(str(error))
        raise typer.Exit(2) from None
    if ci:
        metrics["reliability"] = _reliability(counter, metrics["images"], reliability)
    result = {
        "model": model,
        "model_hash": model_hash(model),
        "data": str(root),
        "format": fmt,
        "subset": subset,
        **metrics,
        "versions": versions(),
    }
    _print_evaluation(result)
    if out:
        atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))


@app.command()
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
    try:
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
        samples = _evaluation_set(load_dataset(root, fmt), fmt, subset, counter.config.training)
        calibrate_model(
            counter,
            samples,
            lambda s: track(s, description="calibrating", console=errors, transient=True),
            counts=counts,
        )
    except (InputError, ValueError) as error:
        fail(str(error))
        raise typer.Exit(2) from None
    counter.config.training["calibration"] = {
        "data": str(root),
        "images": len(samples),
        "counts": counts,
    }
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


def _evaluation_set(samples, fmt: str, subset: str, training: dict) -> list:
    if subset == "all":
        return samples
    if subset != "test":
        raise ValueError(f"--subset must be 'test' or 'all', not '{subset}'")
    if fmt == "vgg_cells" and training.get("protocol", "lempitsky") == "lempitsky":
        return samples[VGG_POOL_SIZE:]  # the fixed test set, 101-200
    seen = set(training.get("split", {}).get("train", [])) | set(
        training.get("split", {}).get("val", [])
    )
    unseen = [s for s in samples if s.name not in seen]
    if not unseen:
        raise ValueError("the model was trained or validated on every image here; use --subset all")
    return unseen


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


def _reliability(model, rows: list[dict], plot: Path | None) -> dict[str, list[float]]:
    """Observed coverage at the nominal levels; plotted to ``plot``."""
    levels = list(RELIABILITY_LEVELS)
    observed = reliability(
        [r["count"] for r in rows], [r["sigma"] for r in rows], [r["true"] for r in rows],
        model.config.conformal_scores, levels,
    )  # fmt: skip
    if plot is not None:
        save_reliability_plot(plot, levels, observed, len(rows))
    return {"levels": levels, "observed": observed}


@app.command()
def benchmark(
    data: Annotated[str, typer.Option(help="Data folder, or the name of a set in the data path.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Benchmark folder (resumed).")],
    n: Annotated[
        list[int] | None, typer.Option("--n", help="Training-set size N; repeat for several.")
    ] = None,
    methods: Annotated[
        str, typer.Option(help="Comma-separated models and baselines (mean, segmentation).")
    ] = "mean,segmentation,fcrn_a",
    draws: Annotated[int, typer.Option(help="Random draws per N (seeds 0..draws-1).")] = 5,
    draw: Annotated[
        int | None,
        typer.Option(help="Run only this draw (several processes can share one OUT)."),
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option(help="lempitsky (VGG cells), countception, or file (given --split-file)."),
    ] = None,
    split_file: Annotated[
        Path | None, typer.Option(help='JSON {"train": [...], "val": [...], "test": [...]}.')
    ] = None,
    test_size: Annotated[
        int | None, typer.Option(help="countception test-set size (default per data set).")
    ] = None,
    fmt: FormatOption = None,
    config: Annotated[
        Path | None,
        typer.Option(help="JSON training settings; a key naming a method holds its own."),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="A training setting, e.g. --set epochs=8.")
    ] = None,
    time_budget: Annotated[
        float | None, typer.Option(help="Seconds of training per network and draw.")
    ] = None,
    radius: Annotated[
        float, typer.Option(help="Detection match radius in pixels.")
    ] = DETECTION_RADIUS,
    threads: Annotated[int | None, typer.Option(help="CPU threads for PyTorch.")] = None,
) -> None:
    """Reproduce the papers' tables: MAE +- std over draws for methods x N, published beside.

    OUT gets records/ (one JSON per method, N and draw: split, settings, per-image counts),
    runs/ (trained networks), summary.csv, table.md and mae_vs_n.png. Finished draws are kept.
    """
    if threads:
        torch.set_num_threads(threads)
    try:
        settings = read_settings_file(config) | parse_assignments(TrainConfig, set_ or [])
        spec = BenchmarkConfig(
            data=data,
            fmt=fmt,
            protocol=protocol or ("file" if split_file else None),
            split_file=str(split_file) if split_file else None,
            test_size=test_size,
            n=tuple(n or [32]),
            draws=draws,
            draw=draw,
            methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
            settings=settings,
            time_budget=time_budget,
            radius=radius,
        )
        summary = run_benchmark(spec, out, on_record=_print_record)
    except (InputError, ValueError) as error:
        fail(str(error))
        raise typer.Exit(2) from None
    _print_summary(summary, out)


def _print_record(record: dict) -> None:
    console.print(
        f"{record['method']} N={record['n']} seed {record['seed']}: test MAE"
        f" {record['count']['mae']:.2f} on {len(record['images'])} images"
        f" ({record['train_time_s']:.0f} s training)"
    )


def _print_summary(summary: pd.DataFrame, out: Path) -> None:
    view = Table(title=f"test MAE, mean +- std over draws ({out})")
    for column in ("method", "N", "draws", "MAE", "RMSE", "F1", "train time"):
        view.add_column(column, justify="left" if column == "method" else "right")
    for r in summary.itertuples():
        view.add_row(
            r.method,
            str(r.n),
            str(r.draws),
            f"{r.mae:.2f} +- {r.mae_std:.2f}",
            f"{r.rmse:.2f}",
            "-" if np.isnan(r.f1) else f"{r.f1:.3f}",
            f"{r.train_time_s:.0f} s",
        )
    console.print(view)
    console.print(f"tables in {out / 'table.md'}, plot in {out / 'mae_vs_n.png'}")


ImageArgument = Annotated[Path, typer.Argument(help="An image file.", metavar="IMAGE")]
ExplainOutOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
EXPLAIN_OUT = Path("celltally-explain")

explain_app = typer.Typer(
    help="What a model sees: density views and region counts, saliency, feature inversion.",
    no_args_is_help=True,
)
app.add_typer(explain_app, name="explain")


@explain_app.command("saliency")
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
    try:
        counter = load_model(model)
        image = read_image(image_path)
        saliency_map = saliency(counter, image, samples=smooth, source=str(image_path))
    except InputError as error:
        fail(str(error))
        raise typer.Exit(2) from None
    stem = image_path.stem
    atomic_write(out / f"{stem}_saliency.tif", lambda tmp: tifffile.imwrite(tmp, saliency_map))
    title = f"saliency{f' (SmoothGrad, {smooth} copies)' if smooth else ''}"
    save_saliency(out / f"{stem}_saliency.png", image, saliency_map, title)
    console.print(f"saliency of {image_path} written to {out}")


@explain_app.command("view")
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
    try:
        counter = load_model(model)
        if ci:
            check_intervals(counter, level)
        image = read_image(image_path)
        source = str(image_path)
        found = counter.network_pass(image, diameter=diameter, channel=channel, source=source)
        prediction = counter.read_out(found)
        shape = image.shape[:2]
        regions = [box_region(b, shape) for b in boxes or []]
        regions += [polygon_region(p, shape) for p in polygons or []]
        regions += geojson_regions(geojson, shape) if geojson else []
        rows = region_counts(counter, found, prediction.density, regions, level if ci else None)
    except (InputError, ValueError) as error:
        fail(str(error))
        raise typer.Exit(2) from None
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
def explain_layers(model: ModelOption = DEFAULT_MODEL) -> None:
    """The names of a model's layers (for explain invert), with their output shapes for a
    64x64 image."""
    try:
        counter = load_model(model)
    except InputError as error:
        fail(str(error))
        raise typer.Exit(2) from None
    view = Table(title=f"layers of {model} ({counter.config.arch})")
    for column in ("layer", "type", "output (C, H, W) for 64x64"):
        view.add_column(column)
    for name, kind, shape in layer_table(counter):
        view.add_row(name, kind, shape)
    console.print(view)


@explain_app.command("invert")
def explain_invert(
    image_path: ImageArgument,
    layers: Annotated[list[str], typer.Option("--layer", "-l", help="Layer name (repeatable).")],
    model: ModelOption = DEFAULT_MODEL,
    out: ExplainOutOption = EXPLAIN_OUT,
    steps: Annotated[int, typer.Option(help="Gradient steps per layer.", min=1)] = 300,
) -> None:
    """Reconstruct the image from each layer's features (feature inversion): a PNG of the input
    beside the reconstructions and the objective curves, and the figures as JSON."""
    try:
        counter = load_model(model)
        image = read_image(image_path)
        source = str(image_path)
        inversions = [invert(counter, image, layer, steps, source=source) for layer in layers]
    except (InputError, ValueError) as error:
        fail(str(error))
        raise typer.Exit(2) from None
    stem = image_path.stem
    normalised = unpadded(counter, counter.prepare(image))[0].permute(1, 2, 0).numpy()
    save_inversions(out / f"{stem}_inversion.png", normalised, inversions)
    summary = {
        i.layer: {"correlation": i.correlation, "objective": i.objective} for i in inversions
    }
    atomic_write(
        out / f"{stem}_inversion.json", lambda tmp: Path(tmp).write_text(json.dumps(summary))
    )
    for inversion in inversions:
        console.print(
            f"{inversion.layer}: objective {inversion.objective[0]:.3g} ->"
            f" {inversion.objective[-1]:.3g}, correlation with the input"
            f" {inversion.correlation:.2f}"
        )


@app.command()
def models() -> None:
    """List the architectures in the registry and the bundled models."""
    from celltally.models import create_model

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
        config = read_config(path)
        card_file = path / "card.json"
        card = json.loads(card_file.read_text()) if card_file.is_file() else {}
        diameter = config.diameter
        fields = {
            "architecture": config.arch,
            "for": card.get("purpose", ""),
            "cell diameter": "unknown" if diameter is None else f"{diameter:g} px",
            "trained on": "; ".join(
                f"{d} ({lic})" for d, lic in card.get("training_data", {}).items()
            ),
            "tested": card.get("test", ""),
        }
        console.print(f"\n[bold]{name}[/]" + (" *" if name == DEFAULT_MODEL else ""))
        for key, value in fields.items():
            console.print(f"  {key:<14}{value}", soft_wrap=False)
    if bundled:
        console.print(f"bundled models are in {next(iter(bundled.values())).parent}")


if __name__ == "__main__":
    app()

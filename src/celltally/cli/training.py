"""``celltally train``, ``synth`` and ``benchmark``: training runs, simulated images, the
papers' tables."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer
from rich.progress import track
from rich.table import Table

from celltally.benchmark import BenchmarkConfig, run_benchmark
from celltally.cli.common import FormatOption, console, reports_errors
from celltally.config import parse_assignments, read_settings_file
from celltally.data.datasets import FORMATS, default_channels, resolve_data
from celltally.data.splits import training_split
from celltally.data.synth import (
    PRESETS,
    SynthConfig,
    preset,
    write_set,
)
from celltally.metrics import DETECTION_RADIUS
from celltally.train import TrainConfig
from celltally.train import train as run_training


@reports_errors
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
    given = {"arch": model, "seed": seed} | ({"init": init} if init else {})
    channels = default_channels(fmt if fmt == "synth" else resolve_data(data, fmt)[1])
    settings = TrainConfig.from_settings(config, set_ or [], {"in_channels": channels}, given)
    source, fmt, split = training_split(data, fmt, n_train, n_val, seed, protocol)
    console.print(
        f"training {model} on {len(split.train)} images, validating on {len(split.val)} ({source})"
    )
    trained = run_training(settings, split.train, split.val, out, split.record(source, fmt, seed))
    info = trained.config.training
    console.print(
        f"best validation MAE {info['best_val_mae']:.2f} after {info['epochs_run']} epochs"
        f" ({info['train_time_s']:.0f} s); model in {out / 'model'}"
    )


@reports_errors
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
    overrides = read_settings_file(config) | parse_assignments(SynthConfig, set_ or [])
    settings = preset(preset_name, **overrides)
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    started = time.perf_counter()
    rows = list(
        track(write_set(settings, n, out, seed, workers), total=n, description="simulating")
    )
    elapsed = time.perf_counter() - started
    counts = np.array([row["count"] for row in rows])
    console.print(
        f"{n} images ({counts.mean():.1f} +- {counts.std():.1f} cells) in {elapsed:.1f} s"
        f" ({n / elapsed:.1f} images/s); written to {out}"
    )


@reports_errors
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
    settings = read_settings_file(config) | parse_assignments(TrainConfig, set_ or [])
    protocol = protocol or ("file" if split_file else None)
    spec = BenchmarkConfig(
        data=data, fmt=fmt, protocol=protocol, split_file=str(split_file) if split_file else None,
        test_size=test_size, n=tuple(n or [32]), draws=draws, draw=draw,
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()), settings=settings,
        time_budget=time_budget, radius=radius,
    )  # fmt: skip
    summary = run_benchmark(spec, out, on_record=_print_record)
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

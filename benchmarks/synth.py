"""Benchmark: the synthetic generator against real VGG cells, and its speed.

- ``benchmarks/synth_vs_vgg.png``: generated ``vgg_cells`` images beside real VGG cells (blue
  channel, same grey scale), and histograms of the per-image count and of pixel intensity for
  all 200 real images and 200 generated ones.
- Speed: images/s of ``write_set`` (generation + writing image, dots, labels, mask) for the
  ``vgg_cells`` and ``bbbc005`` presets, with all cores; the ``synth-speed`` section of RESULTS.md.

    python benchmarks/synth.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from celltally.data import default_data_root, load_dataset
from celltally.data.images import read_image
from celltally.data.synth import generate, preset, write_set
from results import write_section

FIGURE = Path(__file__).parent / "synth_vs_vgg.png"
TARGETS = {"vgg_cells": 20.0, "bbbc005": 5.0}  # images/s, from issue 3


def figure(data: Path, n: int = 200) -> None:
    real = load_dataset(data, "vgg_cells")[:n]
    real_images = [read_image(s.image_path)[:, :, 2] for s in real]
    real_counts = [len(s.read_points()) for s in real]
    synth = [generate(preset("vgg_cells"), 0, i) for i in range(n)]
    synth_images = [s.image[:, :, 2].astype(np.float32) for s in synth]
    synth_counts = [s.count for s in synth]

    fig = Figure(figsize=(13, 8.5), layout="constrained")
    grid = fig.add_gridspec(3, 4, height_ratios=[1, 1, 0.9])
    for column in range(4):
        for row_index, (images, counts, label) in enumerate(
            [(real_images, real_counts, "real"), (synth_images, synth_counts, "generated")]
        ):
            axis = fig.add_subplot(grid[row_index, column])
            axis.imshow(images[column], cmap="gray", vmin=0, vmax=255)
            axis.set_title(f"{label}: {counts[column]} cells", fontsize=10)
            axis.axis("off")
    bins = np.linspace(0, 400, 21)
    axis = fig.add_subplot(grid[2, :2])
    axis.hist(
        real_counts,
        bins,
        alpha=0.6,
        label=f"real ({np.mean(real_counts):.0f} +- {np.std(real_counts):.0f})",
    )
    axis.hist(
        synth_counts,
        bins,
        alpha=0.6,
        label=f"generated ({np.mean(synth_counts):.0f} +- {np.std(synth_counts):.0f})",
    )
    axis.set(xlabel="cells per image", ylabel="images")
    axis.legend()
    axis = fig.add_subplot(grid[2, 2:])
    levels = np.arange(257)
    for images, label in [(real_images, "real"), (synth_images, "generated")]:
        pixels = np.concatenate([im.ravel() for im in images])
        axis.hist(
            pixels,
            levels,
            density=True,
            histtype="step",
            label=f"{label} (mean {pixels.mean():.0f})",
        )
    axis.set(xlabel="blue-channel intensity", ylabel="fraction of pixels", yscale="log")
    axis.legend()
    fig.suptitle("VGG cells (top) and the `vgg_cells` preset of celltally synth (middle), seed 0")
    fig.savefig(FIGURE, dpi=80)


def speed(n: int, workers: int) -> str:
    lines = [
        "### Synthetic generator speed",
        "",
        "Command: `python benchmarks/synth.py`",
        "",
        f"`write_set` with {workers} worker processes: simulating and writing image, dots CSV, label"
        " TIFF and mask PNG.",
        "",
        "| preset | image size | images | images/s | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, target in TARGETS.items():
        config = preset(name)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            list(write_set(config, n, out, seed=0, workers=workers))
            rate = n / (time.perf_counter() - started)
        lines.append(
            f"| {name} | {config.width}x{config.height} | {n} | {rate:.1f} | >= {target:g} |"
        )
    lines += ["", f"Comparison figure: `benchmarks/{FIGURE.name}`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=default_data_root() / "vgg_cells")
    parser.add_argument("--n", type=int, default=200, help="images per preset for the speed test")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    figure(args.data)
    text = speed(args.n, args.workers)
    write_section("synth-speed", text)
    print(text)


if __name__ == "__main__":
    main()

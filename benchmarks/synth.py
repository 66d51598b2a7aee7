"""Benchmark: the synthetic generator against real VGG cells, and its speed.

- ``benchmarks/synth_vs_vgg.png``: generated ``vgg_cells`` images beside real VGG cells (blue
  channel, same grey scale), and histograms of the per-image count and of pixel intensity for
  all 200 real images and 200 generated ones.
- Statistics the ``vgg_cells`` preset was fitted to, real against generated (the
  ``synth-statistics`` section): spacing of the cells, contrast of single cells and of
  overlapping pairs, background level against count, fine background texture.
- Speed: images/s of ``write_set`` (generation + writing image, dots, labels, mask) for the
  ``vgg_cells`` and ``bbbc005`` presets, with all cores; the ``synth-speed`` section of RESULTS.md.

The figures of both sections are kept in ``benchmarks/synth/records.json``.

    python benchmarks/synth.py            # measure, draw the figure, write the sections
    python benchmarks/synth.py --report   # the sections from the records
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy import ndimage
from scipy.spatial import cKDTree

from celltally.data import default_data_root, load_dataset
from celltally.data.images import read_image
from celltally.data.splits import protocol_split
from celltally.data.synth import generate, preset, write_set
from results import read_records, save_records, write_section

FIGURE = Path(__file__).parent / "synth_vs_vgg.png"
TARGETS = {"vgg_cells": 20.0, "bbbc005": 5.0}  # images/s, from issue 3


def figure(data: Path, n: int = 200) -> None:
    real = load_dataset(data, "vgg_cells")[:n]
    real_images = [read_image(s.image_path)[:, :, 2] for s in real]
    real_counts = [len(s.read_points()) for s in real]
    synth = list(_generated(n))
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


def statistics(data: Path, n: int = 100) -> dict[str, dict]:
    """Real VGG cells 101-200 (the test set) against ``n`` generated images, blue channel, grey
    levels."""
    test = protocol_split(load_dataset(data, "vgg_cells"), "vgg_cells", 0, 0).test[:n]
    real = [s.load() for s in test]
    synth = [(g.image.astype(np.float32), g.points) for g in _generated(n)]
    return {"real": _image_statistics(real), "generated": _image_statistics(synth)}


def statistics_report(rows: dict[str, dict]) -> str:
    lines = [
        "### Synthetic `vgg_cells` preset against real VGG cells: the fitted statistics",
        "",
        "Command: `python benchmarks/synth.py` (real: VGG cells 101-200; generated: seed 0, 100"
        " images; blue channel, grey levels 0-255; contrast = centre pixel after a 1-px Gaussian"
        " minus the median background further than 12 px from every dot; half-maximum radius of the"
        " mean radial profile of single cells)",
        "",
        "| images | cells | nearest neighbour p10 / p50 (px) | neighbour < 6 px"
        " | single-cell contrast p10 / p50 / p90 | contrast of pairs < 3 px apart"
        " | single-cell half-maximum radius (px) | background = a + b x count"
        " | background texture (0.7-3 px) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in rows.items():
        lines.append(
            f"| {label} | {r['cells']} | {r['nn10']:.1f} / {r['nn50']:.1f} | {r['close']:.0%}"
            f" | {r['c10']:.0f} / {r['c50']:.0f} / {r['c90']:.0f} | {r['pair']:.0f}"
            f" | {r['half_max']:.2f} | {r['a']:.1f} + {r['b']:.3f} x count | {r['texture']:.2f} |"
        )
    return "\n".join([*lines, ""])


def _generated(n: int):
    return (generate(preset("vgg_cells"), 0, i) for i in range(n))


def _image_statistics(items: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    nearest, single, pairs, background, counts, texture, profiles = [], [], [], [], [], [], []
    for image, points in items:
        blue = image[:, :, 2].astype(float)
        smooth = ndimage.gaussian_filter(blue, 1)
        far = np.ones(blue.shape, bool)
        far[tuple(np.round(points).astype(int).T)] = False
        far = ndimage.distance_transform_edt(far) > 12
        level = np.median(smooth[far])
        distance = cKDTree(points).query(points, 3)[0]
        centre = np.round(points).astype(int)
        contrast = smooth[centre[:, 0], centre[:, 1]] - level
        nearest.append(distance[:, 1])
        single.append(contrast[distance[:, 1] > 14])
        profiles += _radial_profiles(blue - level, centre[distance[:, 1] > 14])
        pairs.append(contrast[(distance[:, 1] < 3) & (distance[:, 2] > 10)])
        background.append(level)
        counts.append(len(points))
        band = ndimage.gaussian_filter(blue, 0.7) - ndimage.gaussian_filter(blue, 3)
        texture.append(band[far].std())
    nearest, single = np.concatenate(nearest), np.concatenate(single)
    slope, intercept = np.polyfit(counts, background, 1)
    figures = {
        "nn10": np.percentile(nearest, 10),
        "nn50": np.median(nearest),
        "close": (nearest < 6).mean(),
        "c10": np.percentile(single, 10),
        "c50": np.median(single),
        "c90": np.percentile(single, 90),
        "pair": np.median(np.concatenate(pairs)),
        "half_max": _half_maximum_radius(np.array(profiles)),
        "a": intercept,
        "b": slope,
        "texture": np.mean(texture),
    }
    cells = f"{np.mean(counts):.0f} +- {np.std(counts):.0f}"
    return {"cells": cells, **{name: float(value) for name, value in figures.items()}}


RINGS = np.round(np.hypot(*np.mgrid[-8:9, -8:9])).astype(int)  # ring index 0..11 of each pixel


def _radial_profiles(signal: np.ndarray, centres: np.ndarray) -> list[np.ndarray]:
    """Mean of ``signal`` on the rings 0..8 px around each centre at least 8 px inside."""
    inside = np.all((centres >= 8) & (centres < np.array(signal.shape) - 8), axis=1)
    return [
        np.array(ndimage.mean(signal[y - 8 : y + 9, x - 8 : x + 9], RINGS, range(9)))
        for y, x in centres[inside]
    ]


def _half_maximum_radius(profiles: np.ndarray) -> float:
    """Where the mean profile first falls to half of its centre value (linear interpolation)."""
    mean = np.nanmean(profiles, axis=0)
    mean = mean / mean[0]
    return float(np.interp(0.5, mean[::-1], np.arange(len(mean))[::-1]))


def speed(n: int, workers: int) -> dict:
    """Images/s of ``write_set`` for each preset of ``TARGETS``."""
    rates = {}
    for name in TARGETS:
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            list(write_set(preset(name), n, out, seed=0, workers=workers))
            rates[name] = n / (time.perf_counter() - started)
    return {"images": n, "workers": workers, "rates": rates}


def speed_report(images: int, workers: int, rates: dict[str, float]) -> str:
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
    for name, rate in rates.items():
        config = preset(name)
        lines.append(
            f"| {name} | {config.width}x{config.height} | {images} | {rate:.1f}"
            f" | >= {TARGETS[name]:g} |"
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
    parser.add_argument("--report", action="store_true", help="only rewrite from the records")
    args = parser.parse_args()
    if not args.report:
        figure(args.data)
        records = {"statistics": statistics(args.data), "speed": speed(args.n, args.workers)}
        save_records("synth", records)
    records = read_records("synth")
    for key, text in [
        ("synth-statistics", statistics_report(records["statistics"])),
        ("synth-speed", speed_report(**records["speed"])),
    ]:
        write_section(key, text)
        print(text)


if __name__ == "__main__":
    main()

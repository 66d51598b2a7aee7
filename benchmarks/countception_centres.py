"""Benchmark: how well centres can be recovered from a Count-ception count map at all.

The ideal count maps of VGG cells 101-110 (from their dot annotations) are deconvolved with
``recover_density`` for several numbers of Richardson-Lucy steps and smoothings, and the local
maxima matched to the dots. The best F1 over the peak threshold is the ceiling a trained model's
centres can reach with these settings. The ``countception-centres`` section of RESULTS.md.

    python benchmarks/countception_centres.py
"""

from __future__ import annotations

import time

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.feature import peak_local_max

from celltally.data import default_data_root, load_dataset
from celltally.metrics import DETECTION_RADIUS, match_points
from celltally.models.countception import CENTRE_SMOOTHING, DECONVOLUTION_STEPS, recover_density
from celltally.targets import count_map
from results import write_section

STEPS = (25, 50, 100, 200)
SMOOTHING = (0.0, 1.0, 2.0)


def best_f1(centre_maps: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """The best detection F1 over thresholds at 0, 5, ..., 90% of each map's maximum."""
    best = 0.0
    for fraction in np.linspace(0.0, 0.9, 19):
        tp = n_found = n_true = 0
        for centre_map, dots in zip(centre_maps, truth, strict=True):
            found = peak_local_max(
                centre_map,
                min_distance=3,
                threshold_abs=fraction * centre_map.max(),
                exclude_border=False,
            )
            tp += match_points(found.astype(float), dots, DETECTION_RADIUS)
            n_found, n_true = n_found + len(found), n_true + len(dots)
        best = max(best, 2 * tp / (n_found + n_true))
    return best


def main() -> None:
    samples = load_dataset(default_data_root() / "vgg_cells", "vgg_cells")[100:110]
    truth = [s.read_points() for s in samples]
    maps = [count_map(dots, (256, 256)) for dots in truth]
    rows = []
    for steps in STEPS:
        started = time.perf_counter()
        densities = [recover_density(m, steps) for m in maps]
        seconds = (time.perf_counter() - started) / len(maps)
        for sigma in SMOOTHING:
            smoothed = [gaussian_filter(d, sigma) if sigma else d for d in densities]
            chosen = " (used)" if (steps, sigma) == (DECONVOLUTION_STEPS, CENTRE_SMOOTHING) else ""
            f1 = best_f1(smoothed, truth)
            rows.append(f"| {steps} | {sigma:g} | {f1:.3f}{chosen} | {seconds * 1000:.0f} ms |")
    text = "\n".join(
        [
            "### Count-ception: centres from ideal count maps",
            "",
            "Command: `python benchmarks/countception_centres.py`",
            "",
            "The exact count maps of VGG cells 101-110, deconvolved (Richardson-Lucy with the 32x32"
            f" box), smoothed, local maxima matched to the dots within {DETECTION_RADIUS:g} px;"
            " best F1 over the threshold. The ceiling for a trained model's centres.",
            "",
            "| Richardson-Lucy steps | smoothing sigma (px) | F1 | deconvolution time / image |",
            "| --- | --- | --- | --- |",
            *rows,
        ]
    )
    print(text)
    write_section("countception-centres", text)


if __name__ == "__main__":
    main()

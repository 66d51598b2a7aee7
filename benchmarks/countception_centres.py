"""Benchmark: how well centres can be recovered from a Count-ception count map at all.

The ideal count maps of VGG cells 101-110 (from their dot annotations) are deconvolved with
``recover_density`` for several numbers of Richardson-Lucy steps and smoothings, and the local
maxima matched to the dots. The best F1 over the peak threshold is the ceiling a trained model's
centres can reach with these settings. The ``countception-centres`` section of RESULTS.md;
the figures are kept in ``benchmarks/countception_centres/records.json``.

    python benchmarks/countception_centres.py            # measure, then write the section
    python benchmarks/countception_centres.py --report   # the section from the records
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.feature import peak_local_max

from celltally.data import default_data_root, load_dataset
from celltally.data.splits import protocol_split
from celltally.metrics import DETECTION_RADIUS, match_points
from celltally.models.countception import CENTRE_SMOOTHING, DECONVOLUTION_STEPS, recover_density
from celltally.targets import count_map
from results import read_records, save_records, write_section

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


def measure() -> list[dict]:
    """F1 and time of every (steps, smoothing) on the first 10 test images (101-110)."""
    samples = load_dataset(default_data_root() / "vgg_cells", "vgg_cells")
    test = protocol_split(samples, "vgg_cells", 0, 0, protocol="lempitsky").test[:10]
    truth = [s.read_points() for s in test]
    maps = [count_map(dots, (256, 256)) for dots in truth]
    rows = []
    for steps in STEPS:
        started = time.perf_counter()
        densities = [recover_density(m, steps) for m in maps]
        seconds = (time.perf_counter() - started) / len(maps)
        for sigma in SMOOTHING:
            smoothed = [gaussian_filter(d, sigma) if sigma else d for d in densities]
            f1 = best_f1(smoothed, truth)
            rows.append({"steps": steps, "sigma": sigma, "f1": f1, "seconds": seconds})
    return rows


def report(rows: list[dict]) -> str:
    used = (DECONVOLUTION_STEPS, CENTRE_SMOOTHING)
    lines = [
        f"| {r['steps']} | {r['sigma']:g} | {r['f1']:.3f}"
        f"{' (used)' if (r['steps'], r['sigma']) == used else ''} | {r['seconds'] * 1000:.0f} ms |"
        for r in rows
    ]
    return "\n".join(
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
            *lines,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="only rewrite from the records")
    if not parser.parse_args().report:
        save_records("countception_centres", {"rows": measure()})
    text = report(read_records("countception_centres")["rows"])
    print(text)
    write_section("countception-centres", text)


if __name__ == "__main__":
    main()

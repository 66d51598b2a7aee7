"""Counting files and evaluating models on annotated images, and the choice of the peak
threshold that turns an output map into cell centres. The network pass itself (tiles, test-time
augmentation) lives with the models (``celltally.models.inference``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from celltally.data.images import read_stack, to_image_points
from celltally.metrics import count_metrics, detection_metrics
from celltally.models.prediction import Prediction

if TYPE_CHECKING:
    from celltally.models.base import CountingModel


def choose_peak_threshold(
    model: CountingModel,
    maps: list[np.ndarray],
    true_points: list[np.ndarray],
    radius: float,
) -> float:
    """The peak threshold with the best detection F1 over validation images' output ``maps``.

    The peaks above a threshold are the unthresholded peaks whose value exceeds it (a lower
    peak is suppressed only by a higher one), so the peaks are found once and filtered per
    candidate. Candidates are quantiles of the peak values and evenly spaced values up to the
    highest: on a large image the faint ripples of the background can outnumber the cells many
    times, and quantiles alone then never reach the cells' height.
    """
    peaks, values = _peaks_and_values(model, maps)
    every_value = np.concatenate(values)
    if every_value.size == 0:
        return model.config.peak_threshold
    grid = np.linspace(0.0, 1.0, 100, endpoint=False)
    candidates = np.unique(
        np.concatenate([np.quantile(every_value, grid), grid * every_value.max()])
    )
    best_f1, best = -1.0, model.config.peak_threshold
    for threshold in candidates:
        kept = [p[v > threshold] for p, v in zip(peaks, values, strict=True)]
        f1 = detection_metrics(kept, true_points, radius)["f1"]
        if f1 > best_f1:
            best_f1, best = f1, float(threshold)
    return best


def agreeing_peak_threshold(
    model: CountingModel, maps: list[np.ndarray], counts: Sequence[float], min_cells: float = 5
) -> float:
    """The peak threshold at which the centres found in validation images' output ``maps``
    (each ``(H, W)``: the output's first channel) number as many as their ``counts``: the
    median ratio of centres to count is 1 over the images counted at ``min_cells`` or more
    (the few-cell images' ratios are noise).

    The F1-best threshold (``choose_peak_threshold``) serves a detector; a counter's centres
    must tell the story of its count, or the overlay circles a different number than the
    table says."""
    _, values = _peaks_and_values(model, maps)
    counts = np.asarray(counts, float)
    enough = counts >= min_cells
    every_value = np.unique(np.concatenate(values))
    if not enough.any() or every_value.size == 0:
        return model.config.peak_threshold

    def centres_per_count(threshold: float) -> float:
        found = np.array([np.count_nonzero(v > threshold) for v in values], float)
        return float(np.median(found[enough] / counts[enough]))

    low, high = 0, len(every_value) - 1  # the ratio falls as the threshold rises
    while low < high:
        middle = (low + high) // 2
        if centres_per_count(every_value[middle]) > 1.0:
            low = middle + 1
        else:
            high = middle
    return float(every_value[low])


def _peaks_and_values(
    model: CountingModel, maps: list[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every local maximum of each output's centre map (image pixels) and its value."""
    peaks, values = [], []
    for output in maps:
        if output.ndim != 2:  # a (C, H, W) output would add its log-variance's maxima
            raise ValueError(f"a map is (H, W), got {output.shape}: pass an output's first channel")
        centre_map = model.centre_map(output)
        found = model.local_maxima(centre_map, 0.0)
        peaks.append(to_image_points(found, model.config.downsample))
        values.append(centre_map[tuple(found.astype(int).T)])
    return peaks, values


@dataclass
class ImageResult:
    """What counting one image (or one page of a multi-page TIFF) gives."""

    name: str  # file stem, or <stem>_p<page> for a page of a multi-page TIFF
    source: Path
    page: int | None
    image: np.ndarray
    prediction: Prediction

    @property
    def label(self) -> str:
        """How the image is named in tables: its path, with ``#<page>`` for a TIFF page."""
        return str(self.source) if self.page is None else f"{self.source}#{self.page}"


def evaluate(model, samples: list, radius: float, level: float | None = None, **options) -> dict:
    """Count and detection metrics of ``model`` on annotated ``samples``, with per-image rows
    and the inference speed (images/s, reading excluded). ``model`` is a ``CountingModel``
    (``options`` go to its ``predict``) or anything with ``count_and_points(image)`` (a
    detector) or ``count(image)``. With ``level`` (a model with calibrated intervals), the
    intervals' coverage and mean width too."""
    rows, found, truth, seconds = [], [], [], 0.0
    for sample in samples:
        image, points = sample.load()
        started = time.perf_counter()
        count, centres, bounds, diameter = _predict(
            model, image, str(sample.image_path), level, options
        )
        seconds += time.perf_counter() - started
        found.append(centres)
        truth.append(points)
        n_points = None if centres is None else len(centres)
        row = {"image": sample.name, "true": len(points), "count": count, "n_points": n_points}
        if diameter is not None:
            row["diameter"] = diameter
        if bounds is not None:
            row |= {
                "low": bounds.low,
                "high": bounds.high,
                "std": bounds.std,
                "sigma": bounds.sigma,
            }
        rows.append(row)
    detects = all(centres is not None for centres in found)
    return {
        "n_images": len(rows),
        "count": count_metrics([r["true"] for r in rows], [r["count"] for r in rows]),
        "detection": detection_metrics(found, truth, radius) if detects else None,
        "interval": interval_metrics(rows, level) if level is not None else None,
        "images_per_s": len(rows) / max(seconds, 1e-9),
        "images": rows,
    }


def interval_metrics(rows: list[dict], level: float) -> dict[str, float]:
    """Coverage (fraction of true counts inside their intervals) and mean width."""
    return {
        "level": level,
        "coverage": float(np.mean([r["low"] <= r["true"] <= r["high"] for r in rows])),
        "mean_width": float(np.mean([r["high"] - r["low"] for r in rows])),
    }


def _predict(model, image: np.ndarray, source: str, level: float | None, options: dict):
    """(count, centres or None, interval or None, diameter used or None) of one image."""
    if hasattr(model, "predict"):  # a network: one pass for everything
        found = model.predict(image, ci=level, source=source, **options)
        return found.count, found.points, found.interval, found.diameter
    if level is not None:
        raise ValueError(f"{type(model).__name__} gives no intervals; evaluate it without a level")
    if hasattr(model, "count_and_points"):  # a detector (segmentation)
        return (*model.count_and_points(image), None, None)
    return model.count(image), None, None, None


def count_file(model: CountingModel, path: Path, **options) -> list[ImageResult]:
    """Count every page of an image file with ``model.predict`` (``options`` are its options:
    ``diameter``, ``channel``, ``ci``, ...). Raises ``InputError`` naming the file if it is
    bad."""
    stack = read_stack(path)
    pages, separate = stack.pages, stack.separate_channels
    results = []
    for index, image in enumerate(pages):
        name = path.stem if len(pages) == 1 else f"{path.stem}_p{index:03d}"
        prediction = model.predict(image, source=str(path), separate_channels=separate, **options)
        page = None if len(pages) == 1 else index
        results.append(ImageResult(name, path, page, image, prediction))
    return results

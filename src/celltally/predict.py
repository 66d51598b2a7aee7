"""Running a model over whole images: tiles with context for large images, test-time
augmentation, and the choice of the peak threshold that turns an output map into cell centres."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from celltally.data.images import read_pages, to_image_points
from celltally.metrics import count_metrics, detection_metrics
from celltally.uncertainty import CountInterval

if TYPE_CHECKING:
    from celltally.models.base import CountingModel


def predict_tiled(
    model: CountingModel, image: torch.Tensor, tile_size: int, margin: int
) -> np.ndarray:
    """Predict the ``(out_channels, H, W)`` output of a normalised, padded ``(C, H, W)`` image in
    tiles, in bounded memory.

    Each tile's core is predicted from a window with ``margin`` pixels of context on every side
    and only the core is kept. Cores and windows start on multiples of the model's stride, so the
    network pools over the same pixel grid as in a whole-image pass; with a margin wider than
    the network's reach, every kept pixel equals the whole-image prediction. Output pixel
    ``(i, j)`` is computed from input pixels from ``(i, j)`` on (the output is ``model.shrink``
    smaller than the input).
    """
    stride, shrink = model.stride, model.shrink
    tile = max(stride, tile_size // stride * stride)
    margin = -(-margin // stride) * stride
    height, width = image.shape[-2] - shrink, image.shape[-1] - shrink
    if height <= tile + 2 * margin and width <= tile + 2 * margin:
        return _run(model, image)
    output = np.empty((model.out_channels, height, width), dtype=np.float32)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            y0, x0 = max(top - margin, 0), max(left - margin, 0)
            y1, x1 = min(bottom + margin, height), min(right + margin, width)
            prediction = _run(model, image[:, y0 : y1 + shrink, x0 : x1 + shrink])
            output[:, top:bottom, left:right] = prediction[
                :, top - y0 : bottom - y0, left - x0 : right - x0
            ]
    return output


# The 8 flips and quarter turns of the square, as (transpose, mirror rows, mirror columns).
DIHEDRAL = list(itertools.product((False, True), repeat=3))


def predict_dihedral(
    model: CountingModel, image: torch.Tensor, tile_size: int, margin: int
) -> np.ndarray:
    """Test-time augmentation: the mean ``predict_tiled`` output over the 8 flips and quarter
    turns of ``image``, each mapped back onto the image by ``to_image_frame``. Counts are the
    mean of the 8 counts; centres are found on the mean map."""
    total = sum(
        to_image_frame(model, predict_tiled(model, moved(image, t), tile_size, margin), t)
        for t in DIHEDRAL
    )
    return (total / np.float32(len(DIHEDRAL))).astype(np.float32)


def moved(image: torch.Tensor, transform: tuple[bool, bool, bool]) -> torch.Tensor:
    """``(..., H, W)`` ``image`` transposed and/or mirrored as ``transform`` says."""
    transpose, mirror_rows, mirror_cols = transform
    image = image.transpose(-2, -1) if transpose else image
    axes = [axis for axis, mirror in ((-2, mirror_rows), (-1, mirror_cols)) if mirror]
    return image.flip(axes) if axes else image


def to_image_frame(
    model: CountingModel, output: np.ndarray, transform: tuple[bool, bool, bool]
) -> np.ndarray:
    """Map the ``(C, h, w)`` output of the ``moved`` image back onto the original image: undo
    the mirrors, then the transpose. A mirrored axis is also rolled back by ``model.flip_shift``
    pixels. Count-ception's map pixel ``i`` counts the 32 image rows ending at row ``i``; in the
    mirrored image they end at row ``H + 30 - i``, one before the reversed index ``H + 31 - i``
    of its ``H + 32`` rows. The row rolled in from the other end is the window past the image,
    always empty."""
    transpose, mirror_rows, mirror_cols = transform
    for axis, mirror in ((-2, mirror_rows), (-1, mirror_cols)):
        if mirror:
            output = np.roll(np.flip(output, axis), -model.flip_shift, axis)
    return output.swapaxes(-2, -1) if transpose else output


def _run(model: CountingModel, image: torch.Tensor) -> np.ndarray:
    return model.forward_padded(image[None])[0].float().cpu().numpy()


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
    peaks, values = [], []
    for output in maps:
        centre_map = model.centre_map(output)
        found = model.local_maxima(centre_map, 0.0)
        peaks.append(to_image_points(found, model.config.downsample))
        values.append(centre_map[tuple(found.astype(int).T)])
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


@dataclass
class ImageResult:
    """What counting one image (or one page of a multi-page TIFF) gives."""

    name: str  # file stem, or <stem>_p<page> for a page of a multi-page TIFF
    source: Path
    page: int | None
    image: np.ndarray
    density: np.ndarray  # cells per pixel; sums to the count
    count: float
    points: np.ndarray
    interval: CountInterval | None = None

    @property
    def label(self) -> str:
        """How the image is named in tables: its path, with ``#<page>`` for a TIFF page."""
        return str(self.source) if self.page is None else f"{self.source}#{self.page}"


def evaluate(model, samples: list, radius: float, level: float | None = None) -> dict:
    """Count and detection metrics of ``model`` on annotated ``samples``, with per-image rows
    and the inference speed (images/s, reading excluded). ``model`` is a ``CountingModel`` or
    anything with ``count_and_points(image)`` (a detector) or ``count(image)``. With ``level``
    (a model with calibrated intervals), the intervals' coverage and mean width too."""
    rows, found, truth, seconds = [], [], [], 0.0
    for sample in samples:
        image, points = sample.load()
        started = time.perf_counter()
        count, centres, bounds = _predict(model, image, str(sample.image_path), level)
        seconds += time.perf_counter() - started
        found.append(centres)
        truth.append(points)
        n_points = None if centres is None else len(centres)
        row = {"image": sample.name, "true": len(points), "count": count, "n_points": n_points}
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


def _predict(model, image: np.ndarray, source: str, level: float | None):
    """(count, centres or None, interval or None) of one image."""
    if hasattr(model, "predict_output"):  # a network: one forward pass for everything
        return _read_output(model, model.predict_output(image, source=source), level)
    if level is not None:
        raise ValueError(f"{type(model).__name__} gives no intervals; evaluate it without a level")
    if hasattr(model, "count_and_points"):  # a detector (segmentation)
        return (*model.count_and_points(image), None)
    return model.count(image), None, None


def _read_output(model: CountingModel, output: np.ndarray, level: float | None):
    """(count, centres, interval at ``level`` or None) of a model's ``(C, H, W)`` output."""
    bounds = None if level is None else model.count_interval(output, level)
    return model.count_from_map(output[0]), model.peaks(output[0]), bounds


def count_file(model: CountingModel, path: Path, level: float | None = None) -> list[ImageResult]:
    """Count every page of an image file, with intervals at ``level`` if given. Raises
    ``InputError`` naming the file if it is bad."""
    pages = read_pages(path)
    results = []
    for index, image in enumerate(pages):
        name = path.stem if len(pages) == 1 else f"{path.stem}_p{index:03d}"
        output = model.predict_output(image, source=str(path))
        page = None if len(pages) == 1 else index
        count, points, bounds = _read_output(model, output, level)
        density = model.density(output[0], image.shape[:2])
        results.append(ImageResult(name, path, page, image, density, count, points, bounds))
    return results

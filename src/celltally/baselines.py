"""What a practitioner gets without deep learning: the benchmark tables' baselines.

- ``mean``: every image gets the mean count of the training images.
- ``segmentation``: a CellProfiler-style pipeline (like its IdentifyPrimaryObjects module): a
  stain image (grey level, inverted grey level, or haematoxylin by colour deconvolution), Gaussian
  smoothing, an Otsu threshold, a watershed that splits touching cells at the maxima of their
  shape (distance transform) or of their intensity, a size filter, and optionally a clump-size
  correction (a segment of k times a single cell's area counts as k cells). Its few parameters are
  chosen by grid search for the lowest count error on the training images, as a practitioner
  would tune them on the images they annotated; among settings that count about equally well,
  the one that finds the cells where they are (best training F1) wins. Settings whose
  foreground misses most annotated dots (the wrong polarity, say) are not candidates at all.

Both answer ``count(image)``; ``segmentation`` also gives ``points(image)`` (segment centroids,
one per segment even where its count says a clump holds several cells), so detection precision /
recall can be measured like a network's.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.feature import blob_log, peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from celltally.data.datasets import Sample
from celltally.metrics import DETECTION_RADIUS, detection_metrics

BASELINES = ("mean", "segmentation")

GRID = {  # the values tried for each setting (see SegmentationSettings)
    "stain": ("bright", "dark", "haematoxylin"),
    "smoothing": (1.0, 2.0),
    "threshold_factor": (0.6, 0.8, 1.0, 1.25, 1.5),
    "min_distance": (1, 2, 3, 5, 8),
    "declump": ("shape", "intensity"),
    "min_size": (0, 5, 15, 40, 100),
    # 0, then a geometric series (ratio 1.25) over the cell areas of the bundled data sets
    "cell_area": (0, *np.round(16 * 1.25 ** np.arange(19)).astype(int).tolist()),
}
# Settings whose training MAE is within this of the best one's (relative, absolute) are
# compared by training F1: count alone cannot tell right cells from right-sized noise.
MAE_TIE = (0.05, 0.5)
MAX_TIED = 10
# A foreground that misses most annotated cells is segmenting something else, however well its
# segment count happens to match: such settings are not considered.
MIN_DOT_COVERAGE = 0.5


class MeanCount:
    """Predicts the mean training count for every image."""

    name = "mean"

    def __init__(self) -> None:
        self.mean = float("nan")

    def fit(self, train: list[Sample], radius: float = DETECTION_RADIUS) -> MeanCount:
        """Remember the mean training count (``radius`` is unused: one call fits every baseline)."""
        self.mean = float(np.mean([len(s.read_points()) for s in train]))
        return self

    def count(self, image: np.ndarray) -> float:
        return self.mean

    def settings(self) -> dict[str, Any]:
        return {"mean": self.mean}


@dataclass(frozen=True)
class SegmentationSettings:
    """One setting of the pipeline.

    Attributes:
        stain: ``bright`` (cells brighter than the background: fluorescence, or the pale fat
            cells of adipose tissue), ``dark`` (dark nuclei on a bright slide) or
            ``haematoxylin`` (the nuclear stain of H&E, by colour deconvolution).
        smoothing: Gaussian sigma in pixels before thresholding.
        threshold_factor: scales the Otsu threshold's height above the darkest pixel (below 1
            keeps fainter cells).
        min_distance: least distance in pixels between two cells' centres (watershed seeds).
        declump: where clumps are split: ``shape`` (at the maxima of the distance transform:
            round cells) or ``intensity`` (at the maxima of the smoothed stain: cells brightest
            at their centre, CellProfiler's default for fluorescence).
        min_size: smallest segment kept, in pixels.
        cell_area: area in pixels of one cell: a segment counts as round(area / cell_area)
            cells (at least one), so clumps the watershed could not split still count for
            their size. 0 counts every segment as one cell.
    """

    stain: str = "bright"
    smoothing: float = 1.0
    threshold_factor: float = 1.0
    min_distance: int = 3
    declump: str = "shape"
    min_size: int = 0
    cell_area: int = 0


class SegmentationCounter:
    """Threshold + distance-transform watershed + size filter; fitted by grid search."""

    name = "segmentation"

    def __init__(self, settings: SegmentationSettings | None = None) -> None:
        self.fitted = settings or SegmentationSettings()
        self.train_mae = float("nan")

    def fit(self, train: list[Sample], radius: float = DETECTION_RADIUS) -> SegmentationCounter:
        """Choose the settings in ``GRID`` with the lowest count MAE on ``train``; among those
        within ``MAE_TIE`` of it, the one with the best detection F1 at ``radius``. Only
        settings whose foreground holds ``MIN_DOT_COVERAGE`` of the training dots compete
        (all of them if none does)."""
        loaded = [s.load() for s in train]
        errors = _grid_errors(loaded, MIN_DOT_COVERAGE) or _grid_errors(loaded, 0.0)
        best = min(errors.values())
        relative, absolute = MAE_TIE
        tied = sorted(
            (s for s, e in errors.items() if e <= best * (1 + relative) + absolute), key=errors.get
        )
        # cell_area changes the count, not the segments: F1 compares distinct segmentations
        by_segmentation: dict[SegmentationSettings, SegmentationSettings] = {}
        for settings in tied:
            by_segmentation.setdefault(replace(settings, cell_area=0), settings)
        candidates = list(by_segmentation.values())[:MAX_TIED]
        self.fitted = max(candidates, key=lambda s: _training_f1(s, loaded, radius))
        self.train_mae = errors[self.fitted]
        return self

    def segment(self, image: np.ndarray) -> np.ndarray:
        """Instance labels (0 = background) of the cells in ``image``."""
        s = self.fitted
        signal = _signal(image, s.stain, s.smoothing)
        foreground = _threshold(signal, s.threshold_factor)
        relief = _relief(signal, foreground, s.declump)
        labels, _ = _split_clumps(relief, foreground, s.min_distance)
        sizes = np.bincount(labels.ravel())
        labels[sizes[labels] < s.min_size] = 0
        return labels

    def count(self, image: np.ndarray) -> float:
        return self.count_and_points(image)[0]

    def points(self, image: np.ndarray) -> np.ndarray:
        return self.count_and_points(image)[1]

    def count_and_points(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        """The estimated number of cells (clumps counted by their size) and the centroids
        ``(N, 2)`` (y, x) of the segments (one per segment, clumps included)."""
        labels = self.segment(image)
        sizes = np.bincount(labels.ravel())
        ids = np.flatnonzero(sizes[1:]) + 1
        centres = np.array(ndimage.center_of_mass(labels > 0, labels, ids)).reshape(-1, 2)
        return _estimated_cells(sizes[ids], self.fitted.cell_area), centres

    def settings(self) -> dict[str, Any]:
        return {**asdict(self.fitted), "train_mae": self.train_mae}


def create_baseline(name: str) -> MeanCount | SegmentationCounter:
    if name == "mean":
        return MeanCount()
    if name == "segmentation":
        return SegmentationCounter()
    raise ValueError(f"unknown baseline '{name}'; choose one of {', '.join(BASELINES)}")


def _grid_errors(
    loaded: list[tuple[np.ndarray, np.ndarray]], min_coverage: float
) -> dict[SegmentationSettings, float]:
    """Count MAE on the training images of every setting in ``GRID`` whose foreground holds at
    least ``min_coverage`` of the training dots."""
    stains = GRID["stain"]
    if any(image.shape[2] != 3 for image, _ in loaded):
        stains = ("bright", "dark")  # no colour deconvolution without colour
    dots = [points for _, points in loaded]
    truth = np.array([len(points) for points in dots])
    errors = {}
    for stain, smoothing in itertools.product(stains, GRID["smoothing"]):
        signals = [_signal(image, stain, smoothing) for image, _ in loaded]
        for factor in GRID["threshold_factor"]:
            masks = [_threshold(x, factor) for x in signals]
            if _dot_coverage(masks, dots) < min_coverage:
                continue
            for split, error in _split_errors(signals, masks, truth).items():
                errors[SegmentationSettings(stain, smoothing, factor, *split)] = error
    return errors


def _split_errors(
    signals: list[np.ndarray], masks: list[np.ndarray], truth: np.ndarray
) -> dict[tuple[int, str, int, int], float]:
    """Count MAE of every (min_distance, declump, min_size, cell_area) on one thresholded
    signal; each relief is computed once for all distances and sizes."""
    errors = {}
    for declump in GRID["declump"]:
        reliefs = [_relief(x, mask, declump) for x, mask in zip(signals, masks, strict=True)]
        for min_distance in GRID["min_distance"]:
            found = [
                _segment_sizes(relief, mask, min_distance)
                for relief, mask in zip(reliefs, masks, strict=True)
            ]
            for min_size in GRID["min_size"]:
                kept = [sizes[sizes >= min_size] for sizes in found]
                for cell_area in GRID["cell_area"]:
                    counts = np.array([_estimated_cells(k, cell_area) for k in kept])
                    errors[min_distance, declump, min_size, cell_area] = float(
                        np.abs(counts - truth).mean()
                    )
    return errors


def _estimated_cells(sizes: np.ndarray, cell_area: int) -> float:
    """Cells in segments of these sizes: one each, or round(size / cell_area), at least one."""
    if cell_area == 0:
        return float(len(sizes))
    return float(np.maximum(1, np.round(sizes / cell_area)).sum())


def _dot_coverage(masks: list[np.ndarray], points: list[np.ndarray]) -> float:
    """Fraction of all dots that fall on the foreground of their image."""
    inside = [
        mask[tuple(np.clip(np.round(p).astype(int), 0, np.array(mask.shape) - 1).T)]
        for mask, p in zip(masks, points, strict=True)
    ]
    return float(np.concatenate(inside).mean()) if sum(map(len, inside)) else 1.0


def _training_f1(
    settings: SegmentationSettings,
    loaded: list[tuple[np.ndarray, np.ndarray]],
    radius: float,
) -> float:
    found = [SegmentationCounter(settings).points(image) for image, _ in loaded]
    return detection_metrics(found, [points for _, points in loaded], radius)["f1"]


def _signal(image: np.ndarray, stain: str, smoothing: float) -> np.ndarray:
    return ndimage.gaussian_filter(_stain_image(image, stain), smoothing)


def _threshold(signal: np.ndarray, factor: float) -> np.ndarray:
    if np.ptp(signal) == 0:
        return np.zeros(signal.shape, bool)
    low = signal.min()
    return signal > low + factor * (threshold_otsu(signal) - low)


def _segment_sizes(relief: np.ndarray, foreground: np.ndarray, min_distance: int) -> np.ndarray:
    """Pixels in each watershed segment (before the size filter)."""
    labels, n = _split_clumps(relief, foreground, min_distance)
    return np.bincount(labels.ravel(), minlength=n + 1)[1:]


def _stain_image(image: np.ndarray, stain: str) -> np.ndarray:
    """Where the cells are bright: the grey level, its inverse, or the haematoxylin density."""
    if stain == "haematoxylin":
        return rgb2hed(np.clip(image / max(float(image.max()), 1.0), 0, 1))[:, :, 0]
    grey = image.mean(axis=2)
    return grey if stain == "bright" else grey.max() - grey


def _relief(signal: np.ndarray, foreground: np.ndarray, declump: str) -> np.ndarray:
    """What clumps are split by: the foreground's distance transform (``declump="shape"``) or
    the signal (``"intensity"``), >= 1 inside the foreground and 0 outside."""
    if declump == "shape":
        return ndimage.distance_transform_edt(foreground)
    return np.where(foreground, signal - signal.min() + 1.0, 0.0)


def _split_clumps(
    relief: np.ndarray, foreground: np.ndarray, min_distance: int
) -> tuple[np.ndarray, int]:
    """Watershed of the foreground from the maxima of ``relief`` at least ``min_distance`` apart."""
    peaks = peak_local_max(  # only foreground pixels are >= 1
        relief, min_distance=min_distance, threshold_abs=0.5, exclude_border=False
    )
    markers = np.zeros(foreground.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-relief, markers, mask=foreground), len(peaks)


@dataclass(frozen=True)
class BlobSettings:
    """``BlobCounter``'s fixed settings: scikit-image ``blob_log`` on a grey image scaled to
    0-1 between its ``percentiles``, bright blobs (dark-background images are left as they are,
    bright-background ones inverted). Chosen once on training images (40 of dsb2018, 6 of
    coelho2009, 8 of crchisto; thresholds 0.05, 0.1, 0.2 and sigmas 2-12 or 3-15 px: this was
    best on all three, mean relative errors 15%, 263%, 114%), never on test images."""

    percentiles: tuple[float, float] = (1.0, 99.8)
    min_sigma: float = 3.0
    max_sigma: float = 15.0
    num_sigma: int = 8
    threshold: float = 0.2


class BlobCounter:
    """A zero-shot classical counter that needs no training: one Laplacian-of-Gaussian blob per
    cell. What a practitioner writes in five lines, and the bar a generalist network must clear
    on images it has never seen."""

    name = "blob_log"

    def __init__(self, settings: BlobSettings | None = None) -> None:
        self.settings = settings or BlobSettings()

    def points(self, image: np.ndarray) -> np.ndarray:
        low, high = self.settings.percentiles
        grey = np.asarray(image, np.float32).reshape(image.shape[0], image.shape[1], -1)
        grey = grey[:, :, :3].mean(axis=2)
        lo, hi = np.percentile(grey, [low, high])
        scaled = np.clip((grey - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        if np.median(scaled) > 0.5:  # a bright background: dark cells
            scaled = 1.0 - scaled
        s = self.settings
        blobs = blob_log(scaled, s.min_sigma, s.max_sigma, s.num_sigma, s.threshold)
        return blobs[:, :2].astype(np.float64)

    def count_and_points(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        found = self.points(image)
        return float(len(found)), found

    def count(self, image: np.ndarray) -> float:
        return float(len(self.points(image)))

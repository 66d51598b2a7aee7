"""Warnings that an image is unlike those a model was trained and calibrated on, so that its
count deserves a second look: cells of a size outside the model's range, an image without
contrast, with a contrast outside its training images' or with clipped pixels, or an
uncertainty far above the model's on its calibration images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from celltally.models.base import CountingModel

# An image whose brightest and median pixels differ by less than this many noise standard
# deviations shows no cells a model could see.
MIN_CONTRAST = 5.0
MAX_CONTRAST = 1e4
# More than this fraction of pixels at the image's maximum: clipped (saturated) pixels.
MAX_SATURATED = 0.05
# A relative uncertainty this many times the largest on the calibration images is flagged.
UNCERTAINTY_MARGIN = 2.0


def out_of_distribution(
    model: CountingModel,
    image: np.ndarray,
    estimated_diameter: float | None,
    count: float,
    sigma: float | None,
) -> list[str]:
    """One-line warnings for an ``(H, W, C)`` image counted ``count`` with predicted standard
    deviation ``sigma`` (see the module docs)."""
    notes = [_diameter_note(model, estimated_diameter), *_intensity_notes(model, image)]
    notes.append(_uncertainty_note(model, count, sigma))
    return [note for note in notes if note]


def _diameter_note(model: CountingModel, estimated: float | None) -> str | None:
    if estimated is None:
        return None
    if not np.isfinite(estimated):
        return (
            f"no cells to estimate their diameter from; counted at the model's"
            f" {model.config.diameter:.0f} px (give --diameter if cells are there)"
        )
    bounds = model.config.diameter_range
    if bounds is not None and not bounds[0] <= estimated <= bounds[1]:
        return (
            f"cells estimated {estimated:.0f} px across, outside the {bounds[0]:.0f}-"
            f"{bounds[1]:.0f} px this model was trained on; check the count or give --diameter"
        )
    return None


def _intensity_notes(model: CountingModel, image: np.ndarray) -> list[str]:
    grey = image.mean(axis=2)
    notes = []
    signal = contrast(grey)
    bounds = model.config.contrast_range
    if signal <= MIN_CONTRAST:
        notes.append("the image has no contrast above its noise: no cells can be seen")
    elif bounds is not None and not bounds[0] <= signal <= bounds[1]:
        notes.append(
            f"its contrast ({signal:.0f} x its noise) is outside the {bounds[0]:.0f}-"
            f"{bounds[1]:.0f} of the model's training images"
        )
    saturated = float(np.mean(grey >= grey.max())) if grey.max() > grey.min() else 0.0
    if saturated > MAX_SATURATED:
        notes.append(f"{saturated:.0%} of pixels are at the maximum value (saturated)")
    return notes


def contrast(grey: np.ndarray) -> float:
    """How far the brightest or darkest 0.1% of pixels lie from the median, in units of the
    pixel noise (``noise_std``); at most ``MAX_CONTRAST`` (noiseless images)."""
    low, median, high = np.percentile(grey, [0.1, 50.0, 99.9])
    spread = max(high - median, median - low)
    return float(min(spread / max(noise_std(grey), 1e-12), MAX_CONTRAST)) if spread > 0 else 0.0


def noise_std(grey: np.ndarray) -> float:
    """A robust estimate of the pixel noise: the median absolute deviation of the differences
    of neighbouring pixels (which cancel smooth structure), scaled to a Gaussian's std."""
    differences = np.diff(grey, axis=1).ravel()
    if differences.size == 0:
        return 0.0
    mad = np.median(np.abs(differences - np.median(differences)))
    return float(1.4826 * mad / np.sqrt(2.0))


def _uncertainty_note(model: CountingModel, count: float, sigma: float | None) -> str | None:
    largest = model.config.max_relative_sigma
    if sigma is None or largest is None:
        return None
    relative = sigma / max(count, 1.0)
    if relative > UNCERTAINTY_MARGIN * largest:
        return (
            f"the model's uncertainty ({relative:.0%} of the count) is far above any on its"
            f" calibration images ({largest:.0%}): the interval may not hold"
        )
    return None

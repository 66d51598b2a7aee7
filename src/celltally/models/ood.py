"""Warnings that an image is unlike those a model was trained and calibrated on, so that its
count deserves a second look: cells of a size outside the model's range, an image without
contrast, with a contrast outside its training images' or with clipped pixels, or an
uncertainty far above the model's on its calibration images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from celltally.diameter import noise_sigma

if TYPE_CHECKING:
    from celltally.models.base import CountingModel

# An image whose contrast (``contrast``) is below this shows no cells a model could see: it
# counts 0. Pure white, photon (Poisson) and 8-bit rounded noise measure 3.2-4.5 (the top pixels
# of a larger field of noise lie a little higher: 4.3 on 1024 x 1024); of 30 validation (or
# test) images of each real set, the least contrasted measured 60 (``benchmarks/contrast.py``).
MIN_CONTRAST = 6.0
MAX_CONTRAST = 1e4
SMOOTHING = 2.0  # px: the Gaussian that averages the noise out of a cell's pixels
TOP_PIXELS = 20  # the contrast is read at the 20th brightest (or darkest) smoothed pixel
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
    signal: float,
) -> list[str]:
    """One-line warnings for an ``(H, W, C)`` image of contrast ``signal``
    (``image_contrast``) counted ``count`` with predicted standard deviation ``sigma`` (see the
    module docs)."""
    notes = [_diameter_note(model, estimated_diameter), *_intensity_notes(model, image, signal)]
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


def _intensity_notes(model: CountingModel, image: np.ndarray, signal: float) -> list[str]:
    grey = image.mean(axis=2)
    notes = []
    bounds = model.config.contrast_range
    if not has_signal(signal):
        notes.append("the image has no contrast above its noise: no cells can be seen; counted 0")
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
    """How far the image's strongest structure stands out of its noise: the ``TOP_PIXELS``-th
    brightest or darkest pixel of the image smoothed by a Gaussian of ``SMOOTHING`` px, from the
    median, in units of the smoothed noise (white noise of standard deviation ``s``, from
    ``celltally.diameter.noise_sigma``, is ``s / (2 sqrt(pi) SMOOTHING)`` once smoothed); at
    most ``MAX_CONTRAST`` (noiseless images).

    Smoothing is a matched filter for cells a few pixels across or more: it leaves their
    contrast and divides the noise by 7, so that an image of dim cells stands far apart from
    one of noise alone. A pixel rank rather than a percentile, so that a few cells on a large
    empty field still count."""
    grey = np.asarray(grey, dtype=np.float64)
    smooth = ndimage.gaussian_filter(grey, SMOOTHING, mode="reflect").ravel()
    rank = min(TOP_PIXELS, smooth.size - 1)
    median = np.median(smooth)
    ranked = np.partition(smooth, [rank, smooth.size - 1 - rank])
    low, high = ranked[rank], ranked[smooth.size - 1 - rank]
    spread = max(high - median, median - low)
    noise = noise_sigma(grey) / (2.0 * np.sqrt(np.pi) * SMOOTHING)
    return float(min(spread / max(noise, 1e-12), MAX_CONTRAST)) if spread > 0 else 0.0


def image_contrast(image: np.ndarray) -> float:
    """The ``contrast`` of an ``(H, W)`` or ``(H, W, C)`` image, its channels averaged."""
    array = np.asarray(image, dtype=np.float64)
    return contrast(array if array.ndim == 2 else array.mean(axis=2))


def has_signal(signal: float) -> bool:
    """Whether an image of contrast ``signal`` (``image_contrast``) shows anything a model
    could count: a contrast above ``MIN_CONTRAST``."""
    return signal > MIN_CONTRAST


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

"""Count intervals: a predicted variance, calibrated on validation images by conformal prediction.

A model with a variance head (``ModelConfig.variance_head``; always for ``fpn_vgg11``) outputs,
beside its map, ``log v`` per pixel, where ``v`` is the pixel's additive share of the variance of
a count: a region's count has the predicted variance ``sum(v)`` over its pixels. That sum gives
the interval its shape (wide on hard images, narrow on easy ones) but not a trustworthy scale:
neighbouring pixels' errors are correlated (a missed cell spans many), and a network's variance
is learned on its training images. The scale comes from calibration.

Calibration is split conformal prediction with normalised scores (Lei et al. 2018): on ``n``
validation images the scores are ``|count - true| / sigma``; the interval at level ``L`` is
``count +- q sigma``, ``q`` the ``ceil((n + 1) L)``-th smallest score. On new images drawn like
the validation images it covers the true count with probability at least ``L`` (and below ``L +
1 / (n + 1)``): no Gaussian assumption, and any error the model makes on such images is counted.
A region's interval uses the same ``q`` with the region's ``sigma`` (exact only if the errors
scale alike within images).

A conformal interval at level ``L`` needs ``n >= L / (1 - L)`` images (19 for 95%). Below that,
``q`` is a temperature fitted to the scores, ``z_L sqrt(mean(score^2))`` (exact only if the
scaled errors are Gaussian), but at least the largest score: a higher level never gives a
narrower interval than a lower, conformal one (``score_quantile``).

Before its intervals, a model's counts themselves can be calibrated on annotated images
(``calibrate_counts``): a network that cannot tell overlapping cells apart counts too few on
crowded images and too many on sparse ones (a count that regresses to the training mean), a
bias that is the same on new images and that an affine correction of the map,
``gain * map + offset``, fitted by least squares on the images' counts, removes. Its two numbers
need a few images, not many; the intervals are then calibrated on the corrected counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

DEFAULT_LEVEL = 0.95
MIN_COUNT_CALIBRATION_IMAGES = 5  # a gain and an offset, with residuals to spare
NOT_CALIBRATED = "the intervals are not calibrated; run celltally calibrate"


@dataclass(frozen=True)
class CountInterval:
    """A count with its interval at ``level``. ``std`` is the standard deviation of a Gaussian
    with that central interval (half-width / z), comparable across levels; ``sigma`` the model's
    own, uncalibrated prediction."""

    count: float
    low: float
    high: float
    std: float
    level: float
    sigma: float

    def covers(self, true_count: float) -> bool:
        return self.low <= true_count <= self.high


def check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(
            f"an interval level is a fraction between 0 and 1 (0.95 = 95%), got {level}"
        )
    return level


def check_intervals(model, level: float) -> None:
    """Raise ``ValueError`` saying how to fix it if ``model`` cannot give intervals at ``level``."""
    if not model.config.variance_head:
        raise ValueError(
            f"this {model.config.arch} model has no variance head, so it gives no intervals;"
            " fit one (celltally calibrate --fit-on TRAINING_IMAGES) or train with --set"
            " variance_head=true"
        )
    score_quantile(model.config.conformal_scores, level)


def min_calibration_images(level: float) -> int:
    """Fewest calibration images for which the conformal ``level`` interval is finite."""
    return math.ceil(check_level(level) / (1.0 - level) - 1e-9)


def conformal_quantile(scores: Sequence[float], level: float) -> float:
    """The ``ceil((n + 1) level)``-th smallest of ``n`` calibration scores."""
    n = len(scores)
    rank = math.ceil((n + 1) * check_level(level) - 1e-9)
    if n == 0:
        raise ValueError(NOT_CALIBRATED)
    if rank > n:
        raise ValueError(
            f"{n} calibration images cannot give a {level:.0%} interval: it needs at least"
            f" {min_calibration_images(level)}; recalibrate on more annotated images"
            " (celltally calibrate) or ask for a lower level"
        )
    return float(np.sort(np.asarray(scores, dtype=float))[rank - 1])


def score_quantile(scores: Sequence[float], level: float) -> float:
    """The multiple of sigma that makes the ``level`` interval: the conformal quantile of the
    calibration ``scores`` if there are enough of them, else a Gaussian temperature fitted to
    them, but at least their largest."""
    if len(scores) == 0:
        raise ValueError(NOT_CALIBRATED)
    if len(scores) >= min_calibration_images(level):
        return conformal_quantile(scores, level)
    return max(gaussian_temperature(scores, level), float(np.max(scores)))


def gaussian_temperature(scores: Sequence[float], level: float) -> float:
    """The multiple of sigma of a central ``level`` interval if the scaled errors were Gaussian
    with the calibration ``scores``' mean square: ``z_L sqrt(mean(score^2))``."""
    return float(norm.ppf(0.5 + level / 2) * np.sqrt(np.mean(np.square(scores))))


def calibration_scores(
    counts: Sequence[float], sigmas: Sequence[float], true_counts: Sequence[float]
) -> list[float]:
    """The normalised scores ``|count - true| / sigma`` of calibration images, sorted."""
    counts, sigmas, truth = (np.asarray(a, dtype=float) for a in (counts, sigmas, true_counts))
    return sorted((np.abs(counts - truth) / np.maximum(sigmas, 1e-12)).tolist())


def model_scores(model, outputs: Sequence[np.ndarray], true_counts: Sequence[float]) -> list[float]:
    """Calibration scores of a model with a variance head from its ``(2, H, W)`` outputs on
    calibration images and their true counts."""
    counts = [model.count_from_map(output[0]) for output in outputs]
    sigmas = [model.count_sigma(output[1]) for output in outputs]
    return calibration_scores(counts, sigmas, true_counts)


def largest_relative_sigma(model, outputs: Sequence[np.ndarray]) -> float:
    """The largest predicted standard deviation of a count relative to the count (at least
    1) over calibration outputs: how uncertain the model is on images like its own."""
    return max(
        model.count_sigma(output[1]) / max(model.count_from_map(output[0]), 1.0)
        for output in outputs
    )


def set_interval_calibration(model, outputs: Sequence[np.ndarray], true_counts) -> None:
    """Calibrate the intervals of a model with a variance head on calibration outputs: its
    conformal scores and its largest relative uncertainty (``ModelConfig``)."""
    model.config.conformal_scores = model_scores(model, outputs, true_counts)
    model.config.max_relative_sigma = largest_relative_sigma(model, outputs)


def calibrate(
    model,
    samples: Iterable,
    progress: Callable[[Iterable], Iterable] = iter,
    counts: bool = False,
) -> None:
    """Calibrate ``model`` on annotated ``samples`` (``Sample``s: ``load()`` gives the image and
    its points) that it was not trained on: with ``counts``, its counts (``calibrate_counts``);
    then, if it has a variance head, its intervals (the conformal scores). ``progress`` wraps
    the samples, e.g. in a progress bar."""
    outputs, truth = [], []
    for sample in progress(samples):
        image, points = sample.load()
        outputs.append(model.predict_output(image, source=str(sample.image_path)))
        truth.append(len(points))
    if counts:
        outputs = calibrate_counts(model, outputs, truth)
    if model.config.variance_head:
        set_interval_calibration(model, outputs, truth)


def calibrate_counts(
    model, outputs: Sequence[np.ndarray], true_counts: Sequence[float]
) -> list[np.ndarray]:
    """Fit the affine map correction that makes ``model``'s counts of its ``(C, H, W)``
    ``outputs`` best match ``true_counts`` (least squares), add it to the model's count
    calibration (``ModelConfig.count_gain``, ``count_offset``) and return the outputs as
    corrected."""
    if len(outputs) < MIN_COUNT_CALIBRATION_IMAGES:
        raise ValueError(
            f"calibrating counts needs at least {MIN_COUNT_CALIBRATION_IMAGES} annotated images,"
            f" got {len(outputs)}"
        )
    gain, offset = fit_count_calibration(*count_terms(model, outputs), true_counts)
    if not gain > 0:
        raise ValueError(
            f"the counts do not grow with the true counts on these {len(outputs)} images (fitted"
            f" gain {gain:.3g}); calibrate on images with a range of counts"
        )
    config = model.config  # the new correction follows the one the outputs already have
    config.count_offset = gain * config.count_offset + offset
    config.count_gain *= gain
    return [affine_output(output, gain, offset) for output in outputs]


def count_terms(model, outputs: Sequence[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per output: its count, and the count of a map of ones of its size (what a unit offset
    per pixel adds: the outputs' sizes may differ)."""
    counts = [model.count_from_map(output[0]) for output in outputs]
    pixels = [model.count_from_map(np.ones_like(output[0])) for output in outputs]
    return counts, pixels


def fit_count_calibration(
    counts: Sequence[float], pixels: Sequence[float], true_counts: Sequence[float]
) -> tuple[float, float]:
    """The gain and per-pixel offset that make ``gain * count + offset * pixels`` best match
    ``true_counts`` (least squares), the offset at least 0: a negative one would give the empty
    pixels of every image a negative count. Where the unconstrained fit's offset is negative,
    the best fit with offset 0 is the gain alone."""
    counts, pixels, truth = (np.asarray(a, float) for a in (counts, pixels, true_counts))
    design = np.column_stack([counts, pixels])
    (gain, offset), *_ = np.linalg.lstsq(design, truth, rcond=None)
    if offset < 0:
        gain, offset = counts @ truth / max(counts @ counts, 1e-12), 0.0
    return float(gain), float(offset)


def calibrated_mae(
    counts: Sequence[float], pixels: Sequence[float], true_counts: Sequence[float]
) -> float:
    """The MAE the counts would have after the count calibration, estimated by leaving one
    out: each image corrected by the calibration fitted on the others, so that the fit does
    not grade its own images."""
    counts, pixels, truth = (np.asarray(a, float) for a in (counts, pixels, true_counts))
    errors = []
    for i in range(len(truth)):
        others = np.arange(len(truth)) != i
        gain, offset = fit_count_calibration(counts[others], pixels[others], truth[others])
        errors.append(abs(gain * counts[i] + offset * pixels[i] - truth[i]))
    return float(np.mean(errors))


def affine_output(output: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """A ``(C, H, W)`` output with its map replaced by ``gain * map + offset``, never below 0
    (models calibrated before offsets were kept non-negative have negative ones), and its
    log-variance channel (if any) shifted to match (the variance scales by ``gain^2``)."""
    if gain == 1.0 and offset == 0.0:
        return output
    corrected = output.astype(np.float32, copy=True)
    corrected[0] = np.maximum(gain * output[0] + offset, 0.0)
    corrected[1:] += 2.0 * np.log(gain)
    return corrected


def interval(count: float, sigma: float, scores: Sequence[float], level: float) -> CountInterval:
    """The calibrated interval at ``level`` of a count with predicted standard deviation
    ``sigma``, clipped to non-negative counts."""
    half = score_quantile(scores, level) * sigma
    std = half / norm.ppf(0.5 + level / 2)
    low = max(count - half, 0.0)
    return CountInterval(count, low, max(count + half, low), std, level, sigma)


RELIABILITY_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)  # a reliability plot's levels


def reliability(
    counts: Sequence[float],
    sigmas: Sequence[float],
    true_counts: Sequence[float],
    scores: Sequence[float],
    levels: Sequence[float],
) -> list[float]:
    """Observed coverage, at each nominal level, of the intervals the calibration ``scores``
    give to predictions ``counts`` +- ``sigmas``."""
    errors = np.abs(np.asarray(counts, float) - np.asarray(true_counts, float))
    sigmas = np.asarray(sigmas, float)
    return [float(np.mean(errors <= score_quantile(scores, lv) * sigmas)) for lv in levels]


def reliability_of(model, rows: list[dict]) -> dict[str, list[float]]:
    """Observed coverage at ``RELIABILITY_LEVELS`` of ``model``'s intervals over evaluated
    ``rows`` (``celltally.predict.evaluate``'s, with their ``sigma``)."""
    levels = list(RELIABILITY_LEVELS)
    observed = reliability(
        [r["count"] for r in rows], [r["sigma"] for r in rows], [r["true"] for r in rows],
        model.config.conformal_scores, levels,
    )  # fmt: skip
    return {"levels": levels, "observed": observed}

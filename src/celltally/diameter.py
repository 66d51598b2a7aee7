"""Cell size: how big the cells of an image are, so that an image can be rescaled to the cell
diameter a model was trained at (issue 41).

The size of a cell is its equivalent diameter ``sqrt(4 A / pi)`` (the diameter of the disc of the
same area ``A``), in pixels; an image's cell diameter is the median over its cells.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.feature import peak_local_max

from celltally.data.images import downsample, to_grid_points, to_image_points

MIN_INTERIOR = 5  # whole instances needed before those cut by the border are left out


def mask_diameter(labels: np.ndarray) -> float:
    """The median equivalent diameter of the instances of an ``(H, W)`` label image (0 is
    background), in pixels; NaN if it holds no instance.

    Instances touching the image border are cut, so their area understates the cell's: they are
    left out when at least ``MIN_INTERIOR`` other instances remain (else every instance counts,
    since a few cut cells say more than none).
    """
    labels = np.asarray(labels)
    areas = np.bincount(labels.ravel())
    ids = np.flatnonzero(areas[1:]) + 1
    if ids.size == 0:
        return float("nan")
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    interior = np.setdiff1d(ids, border)
    kept = interior if interior.size >= MIN_INTERIOR else ids
    return float(np.median(np.sqrt(4.0 * areas[kept] / np.pi)))


SIGMA_RANGE = (1.0, 64.0)  # px; 64 reaches cells of ~180 px diameter (Coelho's are ~115)
SCALES_PER_OCTAVE = 4
MIN_LEVEL_SIGMA = 2.0  # a scale is computed on the image reduced until sigma is 2-4 of its pixels
BOX_VARIANCE = 1.0 / 12.0  # the blur, in reduced pixels, that block-averaging adds
# Diameter per peak scale, fitted on dsb2018 + coelho2009 train images (the median ratio of
# mask_diameter to the peak scale). A disc of radius r peaks at sigma = r / sqrt(2), i.e. 2.83,
# but real nuclei read larger (soft edges, non-round shapes); hard-edged discs read <= 10% large.
DIAMETER_PER_SIGMA = 3.1  # at annotated centres (train median ratio 3.11)
SPECTRAL_PER_SIGMA = 2.48  # at the spectrum's LoG-energy scale (2.48)
BLIND_PER_SIGMA = 3.1  # at detected blobs (3.11)
SEED_FRACTION = 0.1  # blobs weaker than this fraction of the strong ones are not seeds
SPECTRUM_BINS = 256  # log-spaced bins of spatial frequency
# The first scale is the smallest whose band-passed energy is a local maximum (inside the range
# of scales: the noise that the floor leaves rises towards the smallest) holding at least this
# fraction of the largest: cells are the smallest prominent blobs.
PROMINENT_ENERGY = 0.5


def sigmas() -> np.ndarray:
    """The log-spaced Gaussian scales (px) of the scale space."""
    low, high = np.log2(SIGMA_RANGE)
    count = round((high - low) * SCALES_PER_OCTAVE) + 1
    return np.logspace(low, high, count, base=2.0)


def to_grey(image: np.ndarray) -> np.ndarray:
    """One ``(H, W)`` channel that shows the nuclei: for stained colour images (a bright
    background, i.e. light absorbed by stains) the haematoxylin (nuclear stain) density from
    colour deconvolution, since in H&E the pink eosin of the cytoplasm and stroma adds structure
    that the blind estimate would measure; else the mean of the channels. Alpha is dropped.

    On train images the blind estimate's median error with haematoxylin, against the mean of
    RGB: dsb2018 histology 12.4% vs 13.3%, crchisto 48% vs 63% (against the diameter from the
    dots); ``diameter_at_points`` is the same with either.
    """
    image = np.asarray(image, dtype=np.float32)
    image = image[:, :, :-1] if image.shape[2] in (2, 4) else image
    grey = image.mean(axis=2)
    if image.shape[2] == 3 and np.ptp(image, axis=2).max() > 0 and _bright_background(grey):
        top = 255.0 if image.max() > 1.0 else 1.0
        return rgb2hed(np.clip(image / top, 0.0, 1.0))[:, :, 0].astype(np.float32)
    return grey


Level = tuple[float, int, np.ndarray]  # (sigma, factor, response): one scale of the space


def scale_space(grey: np.ndarray) -> list[Level]:
    """The scale-normalised LoG ``-sigma^2 LoG`` (positive on bright blobs) of ``grey`` at each
    of ``sigmas()``, as ``(sigma, factor, response)``: computed on the image block-averaged
    ``factor`` times.

    Large scales on a reduced image keep the cost near that of the full-resolution small scales
    (0.5-0.7 s for 1 Mpx on a shared 2-core machine); the reduced sigma is corrected for the
    block average's own blur so that the response is the same as at full resolution.
    """
    reduced = {1: grey}
    levels = []
    for sigma in sigmas():
        factor = int(2 ** max(0, np.floor(np.log2(sigma / MIN_LEVEL_SIGMA))))
        if factor not in reduced:
            reduced[factor] = downsample(grey, factor)
        level_sigma = np.sqrt((sigma / factor) ** 2 - (BOX_VARIANCE if factor > 1 else 0.0))
        log = ndimage.gaussian_laplace(reduced[factor], level_sigma, mode="reflect")
        levels.append((float(sigma), factor, -(level_sigma**2) * log))
    return levels


def bright_polarity(grey: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``grey`` turned so that nuclei are bright: inverted when the annotated cells' centres are
    darker (median, lightly smoothed) than the image's median, i.e. dark nuclei on a bright
    background (brightfield; ``to_grey`` already gives stained colour images' nuclei bright)."""
    smooth = ndimage.gaussian_filter(grey, 1.0)
    at_dots = ndimage.map_coordinates(smooth, points.T, order=1, mode="nearest")
    return grey if np.median(at_dots) >= np.median(grey) else -grey


def diameter_at_points(image: np.ndarray, points: np.ndarray) -> float:
    """The cell diameter (px) of an ``(H, W, C)`` image from its annotated cell centres ``(N, 2)``
    (y, x); NaN without points.

    The scale space is sampled at the centres only, where the cells are, so background texture
    and debris do not count; the scale of the strongest summed response, refined by a parabola
    in log-scale, times ``DIAMETER_PER_SIGMA`` is the diameter. Median relative error against
    ``mask_diameter`` on the dsb2018 + coelho2009 train images: 7.7%.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(points) == 0:
        return float("nan")
    levels = scale_space(bright_polarity(to_grey(image), points))
    return DIAMETER_PER_SIGMA * _peak_scale(levels, points)[0]


def _responses(levels: list[Level], points: np.ndarray) -> np.ndarray:
    """``(S, N)``: each scale's response at each point (bilinear, in full-resolution pixels)."""
    return np.array(
        [
            ndimage.map_coordinates(
                response, to_grid_points(points, factor).T, order=1, mode="nearest"
            )
            for _, factor, response in levels
        ]
    )


def _peak_scale(levels: list[Level], points: np.ndarray) -> tuple[float, float]:
    """The scale of the strongest response summed over ``points``, refined by a parabola through
    it and its two neighbours in log-scale (the scales are log-spaced, so the step is constant),
    and the mean response there."""
    scales = np.array([sigma for sigma, _, _ in levels])
    totals = _responses(levels, points).sum(axis=1)
    best = int(np.argmax(totals))
    strength = float(totals[best] / len(points))
    if best in (0, len(totals) - 1):
        return float(scales[best]), strength
    left, mid, right = totals[best - 1 : best + 2]
    curvature = left - 2.0 * mid + right
    shift = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    return float(scales[best] * np.exp(shift * np.log(scales[1] / scales[0]))), strength


class DiameterEstimate(NamedTuple):
    """A blind cell-diameter estimate (px) and its confidence: the mean normalised LoG response
    at the blobs it was measured on, in units of the image's intensity range. Real nuclei give
    about 0.3 (train median; 5th percentile 0.1), noise 0.1-0.2; a flat image gives 0
    and a placeholder diameter, not a measurement: leave such images unscaled."""

    diameter: float
    confidence: float


def estimate_diameter(image: np.ndarray) -> float:
    """The cell diameter (px) of an ``(H, W, C)`` image without annotations (see
    ``measure_diameter``); always finite."""
    return measure_diameter(image).diameter


def measure_diameter(image: np.ndarray) -> DiameterEstimate:
    """Estimate the cell diameter of an image blind, with a confidence.

    Two steps. The power spectrum seen through the normalised LoG's band-pass gives a first
    scale: the one holding most of the image's blob-like energy; it is fast and not fooled by
    texture inside nuclei, but crowding and large structures pull it. The LoG maxima at that
    scale then serve as seeds (stand-in annotations) for the method of ``diameter_at_points``,
    which measures the blobs themselves.

    Median relative error against ``mask_diameter`` on train images: 7.4% (dsb2018
    fluorescence 6.4%, histology 12.4%, coelho2009 8.3%), against 12.6% for the spectral scale
    alone (coelho2009 16.6%) and 12-22% for the scale of detected scale-space maxima (strongest
    blob, median of the strongest; coelho2009 40-56%, as nuclear texture makes small blobs).
    It fails on dsb2018's brightfield images (about 6 times too large): the pale squamous cells
    around the small dark nuclei hold most of the contrast, and are measured instead.
    """
    grey = normalised_grey(image)
    if not grey.any():
        return DiameterEstimate(SPECTRAL_PER_SIGMA * SIGMA_RANGE[0], 0.0)
    first = _spectral_scale(grey)
    levels = scale_space(grey)
    seeds = _seeds(levels, first * SPECTRAL_PER_SIGMA / BLIND_PER_SIGMA)
    if len(seeds) == 0:
        return DiameterEstimate(SPECTRAL_PER_SIGMA * first, 0.0)
    scale, strength = _peak_scale(levels, seeds)
    return DiameterEstimate(BLIND_PER_SIGMA * scale, max(strength, 0.0))


def normalised_grey(image: np.ndarray) -> np.ndarray:
    """The grey image scaled so that its 0.5 and 99.5 percentiles are 0 and 1 and turned so that
    nuclei are bright: inverted when the median, i.e. the background that covers most of an
    image, is in the upper half of that range (brightfield, histology). Flat images are 0."""
    grey = to_grey(image)
    low, high = np.percentile(grey, [0.5, 99.5])
    if high <= low:
        return np.zeros_like(grey)
    scaled = (grey - low) / (high - low)
    return 1.0 - scaled if _bright_background(grey) else scaled


def _bright_background(grey: np.ndarray) -> bool:
    """Whether the median, i.e. the background that covers most of an image, is in the upper
    half of the intensity range (0.5 to 99.5 percentiles): brightfield or stained tissue."""
    low, median, high = np.percentile(grey, [0.5, 50.0, 99.5])
    return bool(median - low > (high - low) / 2)


def _spectral_scale(grey: np.ndarray) -> float:
    """The smallest scale at which the energy that the normalised LoG passes of ``grey`` peaks
    with at least ``PROMINENT_ENERGY`` of its largest value: the radial power spectrum less its
    white-noise floor (``noise_sigma``), weighted by the LoG's squared frequency response
    ``(s^2 k^2)^2 exp(-s^2 k^2)``; where no scale inside the range peaks so, the largest.

    Without the floor, the grain of a dim, sparse, noisy field held most of the energy and was
    measured as cells 3 px across: counted at that size, 10 cells were 12,849. The largest
    energy alone was a structure around or among the cells on some images (an embryo holding
    hundreds of 12 px nuclei, a dye blot in H&E tissue), measured 10 times too large; its
    nuclei make a second, smaller peak. On 25 training images of each real set the smallest
    prominent peak changed one estimate (crchisto: 96 px to 11 px, true 10) and left the others
    as they were."""
    power = np.abs(np.fft.rfft2(grey - grey.mean())) ** 2
    fy = np.fft.fftfreq(grey.shape[0])[:, None]
    fx = np.fft.rfftfreq(grey.shape[1])[None, :]
    k = 2.0 * np.pi * np.hypot(fy, fx)
    edges = np.geomspace(k[k > 0].min(), k.max() * 1.0001, SPECTRUM_BINS + 1)
    bins = np.searchsorted(edges, k.ravel())
    binned = np.bincount(bins, weights=power.ravel(), minlength=SPECTRUM_BINS + 2)[1:-1]
    coefficients = np.bincount(bins, minlength=SPECTRUM_BINS + 2)[1:-1]
    # a bin's noise is the floor times its coefficients; subtracted per bin, since per
    # coefficient the clipping at 0 would keep a third of it
    binned = np.maximum(binned - coefficients * grey.size * noise_sigma(grey) ** 2, 0.0)
    centres = np.sqrt(edges[:-1] * edges[1:])
    band = (sigmas()[:, None] * centres[None, :]) ** 2
    energy = (band**2 * np.exp(-band)) @ binned
    inner = energy[1:-1]
    prominent = inner >= PROMINENT_ENERGY * energy.max()
    peaks = np.flatnonzero((inner >= energy[:-2]) & (inner >= energy[2:]) & prominent)
    chosen = 1 + peaks[0] if len(peaks) else int(np.argmax(energy))
    return float(sigmas()[chosen])


# The 3 x 3 mask of Immerkaer (1996): blind to planes and, nearly, to smooth structure; white
# noise of standard deviation s comes out with standard deviation 6 s.
NOISE_MASK = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def noise_sigma(grey: np.ndarray) -> float:
    """The standard deviation of ``grey``'s white noise: the root mean square response to
    ``NOISE_MASK`` over 6. Dim images' photon noise is far from normal (most of the background
    is 0), which biases the median or mean absolute response low; the edges of cells add to the
    root mean square, but a cell's spectrum falls with frequency, so the floor it sets stays
    under the band that holds the cells."""
    response = ndimage.convolve(grey.astype(np.float64), NOISE_MASK, mode="reflect")
    return float(np.sqrt(np.mean(response**2)) / 6.0)


def _seeds(levels: list[Level], sigma: float) -> np.ndarray:
    """Centres of the blobs at the scale nearest ``sigma``: the response's local maxima at least
    ``SEED_FRACTION`` of the strong ones (95th percentile), ``(N, 2)`` in image pixels."""
    scale, factor, response = min(levels, key=lambda level: abs(np.log(level[0] / sigma)))
    peaks = peak_local_max(
        response, min_distance=max(1, round(scale / factor)), exclude_border=False
    )
    if len(peaks) == 0:
        return np.zeros((0, 2))
    values = response[peaks[:, 0], peaks[:, 1]]
    strong = values >= SEED_FRACTION * max(np.percentile(values, 95), 0.0)
    return to_image_points(peaks[strong & (values > 0)].astype(float), factor)

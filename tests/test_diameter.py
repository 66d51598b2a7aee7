"""Cell-diameter estimation on synthetic discs of known size."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.draw import disk
from skimage.transform import rescale

from celltally.diameter import (
    diameter_at_points,
    estimate_diameter,
    mask_diameter,
    measure_diameter,
    noise_sigma,
)

RADII = (5, 10, 25, 60)  # at 4 px, pixelated discs read up to 16% large from their centres
TOLERANCE = 0.15


def discs(radius: int, bright: bool, rgb: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image, labels, centres)``: a 4 x 4 grid of discs of ``radius``, jittered by whole
    pixels (so all have the same area), on a noisy background; bright on dark (fluorescence) or
    dark purple on white (stained, RGB). Edges are blurred by 1 px, as optics do: the estimates
    are calibrated on real nuclei, on which hard-edged discs read up to 13% large."""
    rng = np.random.default_rng(radius)
    step = 3 * radius + 4
    side = 4 * step
    labels = np.zeros((side, side), np.uint16)
    centres = step / 2 + step * np.stack(np.mgrid[:4, :4], axis=-1).reshape(-1, 2)
    centres = np.round(centres + rng.uniform(-radius / 4, radius / 4, centres.shape))
    for label, centre in enumerate(centres, start=1):
        labels[disk(tuple(centre), radius, shape=labels.shape)] = label
    foreground = gaussian_filter((labels > 0).astype(np.float32), 1.0)[:, :, None]
    colour = np.array([0.5, 0.2, 0.6] if rgb else [1.0], np.float32)
    image = foreground * (colour - 0.95) + 0.95 if not bright else foreground * colour + 0.05
    image = image + rng.normal(0.0, 0.02, image.shape).astype(np.float32)
    return (255 * image).astype(np.float32), labels, centres


@pytest.mark.parametrize("radius", RADII)
def test_mask_diameter_is_the_discs_equivalent_diameter(radius):
    _, labels, _ = discs(radius, bright=True, rgb=False)
    area = np.count_nonzero(labels == 1)
    assert mask_diameter(labels) == np.sqrt(4 * area / np.pi)


def test_mask_diameter_leaves_out_cut_instances_and_empty_is_nan():
    labels = np.zeros((100, 100), np.uint16)
    for label, x in enumerate(range(10, 100, 18), start=1):
        labels[disk((50, x), 5)] = label
    labels[:8, :30] = 9  # a big one cut by the border
    assert mask_diameter(labels) == pytest.approx(np.sqrt(4 * (labels == 1).sum() / np.pi))
    assert np.isnan(mask_diameter(np.zeros((5, 5), np.uint16)))


@pytest.mark.parametrize("radius", RADII)
@pytest.mark.parametrize(
    ("bright", "rgb"), [(True, False), (True, True), (False, True), (False, False)]
)
def test_estimates_match_the_discs_diameter(radius, bright, rgb):
    image, labels, centres = discs(radius, bright, rgb)
    true = mask_diameter(labels)
    assert diameter_at_points(image, centres) == pytest.approx(true, rel=TOLERANCE)
    assert estimate_diameter(image) == pytest.approx(true, rel=TOLERANCE)


def test_doubling_the_image_doubles_the_estimates():
    image, _, centres = discs(8, bright=True, rgb=False)
    doubled = rescale(image, 2, channel_axis=2, order=1).astype(np.float32)
    at_points = diameter_at_points(doubled, centres * 2 + 0.5) / diameter_at_points(image, centres)
    assert at_points == pytest.approx(2, rel=0.05)
    assert estimate_diameter(doubled) / estimate_diameter(image) == pytest.approx(2, rel=0.05)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 80, 1), np.float32),
        np.full((40, 30, 3), 7.0, np.float32),
        np.ones((1, 1, 1), np.float32),
        np.random.default_rng(0).normal(size=(128, 128, 1)).astype(np.float32),
    ],
    ids=["zero", "flat", "one-pixel", "noise"],
)
def test_blind_estimate_is_finite_on_images_without_cells(image):
    estimate = measure_diameter(image)
    assert np.isfinite(estimate.diameter) and estimate.diameter > 0
    assert 0 <= estimate.confidence < 0.25


def test_flat_image_has_no_confidence_and_no_points_give_nan():
    assert measure_diameter(np.zeros((32, 32, 1), np.float32)).confidence == 0
    assert np.isnan(diameter_at_points(np.zeros((32, 32, 1), np.float32), np.zeros((0, 2))))


def test_the_noise_estimate_is_the_noise_standard_deviation():
    rng = np.random.default_rng(0)
    assert noise_sigma(rng.normal(0, 5, (200, 200))) == pytest.approx(5.0, rel=0.05)
    photons = rng.poisson(3.0, (200, 200)).astype(np.float64)  # mostly small integers
    assert noise_sigma(photons) == pytest.approx(np.sqrt(3.0), rel=0.05)


@pytest.mark.parametrize("cells", [5, 30])
def test_dim_cells_under_photon_noise_are_not_measured_as_the_noise_grain(cells):
    """Discs of 16 px, 2 photons a pixel above a background of 2: the noise's grain (one
    pixel) held most of the image's energy and was measured as cells 3 px across."""
    rng = np.random.default_rng(cells)
    yy, xx = np.mgrid[:300, :300]
    light = np.full((300, 300), 2.0)
    for cy, cx in rng.uniform(16, 284, (cells, 2)):
        light[(yy - cy) ** 2 + (xx - cx) ** 2 <= 8**2] += 2.0
    image = rng.poisson(light).astype(np.float32)[:, :, None]
    assert 16 / 2 <= estimate_diameter(image) <= 16 * 1.5


def test_small_nuclei_inside_a_large_bright_body_are_measured_not_the_body():
    """An embryo-like field: 12 px nuclei packed inside a dimmer 300 px body. The body holds
    most of the image's band-passed energy; the nuclei are what is counted."""
    rng = np.random.default_rng(0)
    side, radius = 640, 6
    image = np.zeros((side, side), np.float32)
    image[disk((side / 2, side / 2), 150, shape=image.shape)] = 0.3
    grid = np.stack(np.mgrid[-135:136:16, -135:136:16], axis=-1).reshape(-1, 2)
    inside = grid[np.hypot(*grid.T) < 135] + side / 2
    for centre in inside + rng.integers(-2, 3, inside.shape):
        image[disk(tuple(centre), radius, shape=image.shape)] = 1.0
    image = gaussian_filter(image, 1.0) + rng.normal(0.0, 0.02, image.shape).astype(np.float32)
    estimate = estimate_diameter((255 * image)[:, :, None])
    assert abs(estimate - 2 * radius) / (2 * radius) < 0.3, estimate

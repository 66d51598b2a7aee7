import numpy as np
import pytest

from celltally.models import create_model
from celltally.targets import density_map
from celltally.train.patches import N_AUGMENTATIONS, PatchSampler, augment


@pytest.mark.parametrize("shape", [(64, 64), (37, 91), (5, 300)])
@pytest.mark.parametrize("sigma", [0.5, 2.0, 6.0])
def test_density_sums_to_scale_times_dots(rng, shape, sigma):
    height, width = shape
    n = 50
    points = rng.uniform([-0.5, -0.5], [height - 0.5, width - 0.5], size=(n, 2))
    # dots exactly on the corners and edges, where most of a Gaussian falls outside
    points[:4] = [[-0.5, -0.5], [height - 0.51, width - 0.51], [0, width - 1], [height - 1, 0]]
    density = density_map(points, shape, sigma=sigma, scale=100.0)
    assert density.shape == shape and density.dtype == np.float32
    assert density.sum(dtype=np.float64) == pytest.approx(100.0 * n, rel=1e-6)
    assert (density >= 0).all()


def test_density_of_no_dots_is_zero():
    assert not density_map(np.zeros((0, 2)), (10, 12)).any()


def test_density_peaks_at_the_dot_and_respects_axes():
    density = density_map(np.array([[3.0, 17.0]]), (20, 30), sigma=1.5)
    assert np.unravel_index(density.argmax(), density.shape) == (3, 17)


def test_density_rejects_bad_sigma():
    with pytest.raises(ValueError, match="sigma"):
        density_map(np.zeros((1, 2)), (4, 4), sigma=0)


@pytest.mark.parametrize("k", range(N_AUGMENTATIONS))
def test_augmentation_moves_pixels_and_dots_together(rng, k):
    image = np.zeros((23, 41, 1), dtype=np.float32)
    points = np.stack([rng.integers(0, 23, 30), rng.integers(0, 41, 30)], axis=1).astype(float)
    image[points[:, 0].astype(int), points[:, 1].astype(int), 0] = 1.0
    moved_image, moved_points = augment(image, points, k)
    assert len(moved_points) == len(points)
    assert moved_image[moved_points[:, 0].astype(int), moved_points[:, 1].astype(int), 0].all()
    assert moved_image.sum() == image.sum()


def test_augmented_targets_keep_the_count(rng):
    image = rng.random((50, 70, 1), dtype=np.float32)
    points = rng.uniform([0, 0], [49, 69], size=(40, 2))
    sampler = PatchSampler([image], [points], create_model("fcrn_a"), rng=rng)
    for k in range(N_AUGMENTATIONS):
        moved, density = sampler.augmented(0, k)
        assert density.shape == moved.shape[:2]
        assert density.sum(dtype=np.float64) == pytest.approx(4000.0, rel=1e-6)


def test_patches_are_normalised_per_patch(rng):
    image = 10 + 5 * rng.random((60, 60, 1), dtype=np.float32)
    sampler = PatchSampler([image], [np.zeros((0, 2))], create_model("fcrn_a"), rng=rng)
    inputs, targets = sampler.patches(4, 32)
    assert inputs.shape == (4, 1, 32, 32) and targets.shape == (4, 1, 32, 32)
    assert inputs.mean(dim=(1, 2, 3)).abs().max() < 1e-4
    assert (inputs.std(dim=(1, 2, 3)) - 1).abs().max() < 1e-3

"""The generalist's training data: the real sets' fixed splits, images rescaled to one cell
diameter with their dots, balanced sampling; and the count calibration kept non-negative."""

import numpy as np
import pytest
import torch
from imageio.v3 import imwrite
from tests.conftest import data_set

from celltally import create_model
from celltally.data.collection import REAL_SETS, real_set
from celltally.data.datasets import Sample
from celltally.data.scale import rescaled, restore_density, to_rescaled_points
from celltally.generalist import CANONICAL_DIAMETER, image_diameters
from celltally.models.size import fit_size_model, size_factor
from celltally.predict import agreeing_peak_threshold
from celltally.targets import density_map
from celltally.train.patches import PatchSampler
from celltally.uncertainty import affine_output, fit_count_calibration


def disc_sample(tmp_path, radius: float, centres) -> Sample:
    """A grey PNG of bright discs on black, with a dot on each."""
    yy, xx = np.mgrid[:200, :240]
    image = np.zeros((200, 240), np.uint8)
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 200
    imwrite(tmp_path / "discs.png", image)
    points = np.array(centres, float)
    return Sample("discs", tmp_path / "discs.png", lambda: points)


def test_a_rescaled_sample_keeps_its_dots_on_its_cells(tmp_path):
    base = disc_sample(tmp_path, 12, [(50, 60), (120, 180), (150, 40)])
    sample = rescaled(base, "set/discs", 0.5, weight=0.25, min_side=112)
    small, points = sample.load()
    assert small.shape == (112, 120, 1)  # 100 x 120, padded to 112 rows with the median (0)
    assert small[100:].max() == 0 and sample.weight == 0.25 and sample.name == "set/discs"
    for y, x in points:
        assert small[round(y), round(x), 0] > 100  # each dot still on its (shrunk) disc
    assert len(points) == 3


def test_rescaled_points_and_densities_map_back_exactly():
    points = np.array([[0.0, 0.0], [99.0, 49.0], [10.5, 20.25]])
    there = to_rescaled_points(points, (100, 50), (200, 100))
    np.testing.assert_allclose(to_rescaled_points(there, (200, 100), (100, 50)), points)
    density = np.random.default_rng(0).random((37, 53)).astype(np.float32)
    restored = restore_density(density, (100, 140))
    assert restored.shape == (100, 140) and restored.min() >= 0
    assert restored.sum() == pytest.approx(density.sum(), rel=1e-5)


def test_weighted_patches_come_from_the_weighted_images(rng):
    model = create_model("fcrn_a")
    images = [np.zeros((64, 64, 1), np.float32), np.ones((64, 64, 1), np.float32)]
    points = [np.zeros((0, 2)), np.zeros((0, 2))]
    sampler = PatchSampler(images, points, model, rng, per_patch=False, weights=[1e-9, 1.0])
    inputs, _ = sampler.patches(8, 32)
    assert torch.allclose(inputs, inputs[:1].expand_as(inputs))  # all from image 1
    uniform = PatchSampler(images, points, model, np.random.default_rng(0), per_patch=False)
    assert uniform.probabilities is None


def test_every_real_set_has_a_fixed_split():
    for real in REAL_SETS:
        data_set(real.name)
        split = real.split()
        assert split.test, real.name
        names = [s.name for part in (split.train, split.val, split.test) for s in part]
        assert len(names) == len(set(names)), real.name
    ctc = real_set("ctc").split()
    assert not ctc.train and len(ctc.test) == 10  # a test-only set is accepted
    vgg = real_set("vgg_cells").split()
    assert (len(vgg.train), len(vgg.val), vgg.test[0].name) == (80, 20, "101")
    modalities = real_set("dsb2018").modalities()
    assert {"fluorescence", "histology", "brightfield"} == set(modalities.values())


def test_training_diameters_come_from_masks_dots_or_tiling():
    data_set("adipocyte")
    adipocyte = real_set("adipocyte").split().train[:3]
    diameters = image_diameters(real_set("adipocyte"), adipocyte)
    assert all(10 < d < 20 for d in diameters)  # 150x150 px tiled by ~155 fat cells
    coelho = real_set("coelho2009").split().train[:2]
    assert all(80 < d < 140 for d in image_diameters(real_set("coelho2009"), coelho))
    assert CANONICAL_DIAMETER == 12.0


def test_count_calibration_never_makes_a_map_negative():
    counts, pixels, truth = [10.0, 20.0, 30.0, 40.0, 50.0], [100.0] * 5, [5, 15, 25, 35, 45]
    gain, offset = fit_count_calibration(counts, pixels, truth)
    assert offset == 0.0 and gain == pytest.approx(np.dot(counts, truth) / np.dot(counts, counts))
    output = np.zeros((1, 8, 8), np.float32)
    assert affine_output(output, 1.0, -0.5).min() == 0.0  # an old negative offset is clipped


def test_the_centres_found_number_as_many_as_the_count():
    torch.manual_seed(0)
    model = create_model("fcrn_a")
    rng = np.random.default_rng(1)
    counts = [6.0, 12.0, 20.0, 30.0]
    maps = []
    for n in counts:  # cells of varied brightness: a high threshold misses the faint ones
        cells = [
            b * density_map(p[None], (128, 128), 2.0, 100.0)
            for p, b in zip(
                rng.uniform(5, 123, (int(n), 2)), rng.uniform(0.2, 1.5, int(n)), strict=True
            )
        ]
        maps.append(np.sum(cells, axis=0))
    threshold = agreeing_peak_threshold(model, maps, counts)
    centres = [len(model.peaks(m, threshold)) for m in maps]
    assert np.median(np.divide(centres, counts)) == pytest.approx(1.0, abs=0.1)
    fewer = agreeing_peak_threshold(model, maps, [c / 2 for c in counts])
    assert fewer > threshold  # fewer cells counted: a higher threshold finds fewer centres


def disc_field(diameter: float, rng, side: int = 160) -> np.ndarray:
    """Bright discs of ``diameter`` px scattered on a dark, noisy field."""
    yy, xx = np.mgrid[:side, :side]
    image = rng.normal(10, 2, (side, side)).astype(np.float32)
    for _ in range(max(1, int(0.3 * side**2 / diameter**2))):
        cy, cx = rng.uniform(0, side, 2)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= (diameter / 2) ** 2] = 200.0
    return image[:, :, None]


def test_the_size_model_reads_the_cell_size_from_the_network_features():
    torch.manual_seed(0)
    model = create_model("fcrn_a")
    model.config.diameter = CANONICAL_DIAMETER
    rng = np.random.default_rng(0)
    factors = np.exp(rng.uniform(-1, 1, 40) * np.log(3.0))
    views = [(disc_field(CANONICAL_DIAMETER * f, rng), f) for f in factors]
    model.config.size_model = fit_size_model(model, views)
    assert len(model.config.size_model) == 2 * 512 + 1
    truth = np.exp(np.linspace(-1, 1, 7) * np.log(2.5))
    read = [size_factor(model, disc_field(CANONICAL_DIAMETER * f, rng), 1.0) for f in truth]
    assert np.corrcoef(np.log(read), np.log(truth))[0, 1] > 0.8

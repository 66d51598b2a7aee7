"""The one inference path, ``CountingModel.predict``: counts never below zero, one network pass,
the cell diameter, and the warnings."""

import numpy as np
import pytest
import torch

from celltally import create_model, load_model
from celltally.data.images import read_image
from celltally.data.scale import rescale_image
from celltally.models import DEFAULT_MODEL

ARCHITECTURES = ["fcrn_a", "fcrn_b", "countception", "fpn_vgg11"]


def hostile_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "black": np.zeros((96, 96), np.uint8),
        "white": np.full((96, 96), 255, np.uint8),
        "flat grey rgb": np.full((96, 96, 3), 77, np.uint8),
        "noise": rng.normal(100, 20, (96, 96)).clip(0, 255).astype(np.uint8),
        "16-bit noise": rng.integers(0, 65535, (96, 96)).astype(np.uint16),
        "dim photon noise": rng.poisson(2.0, (300, 300)).astype(np.uint16),
    }


def dim_cells(rng, side: int = 256, cells: int = 30, diameter: float = 14.0) -> np.ndarray:
    """Dim discs (2 photons a pixel above the background's 2) under photon noise: cells a
    model must still count, though a single pixel hardly shows them."""
    yy, xx = np.mgrid[:side, :side]
    light = np.full((side, side), 2.0)
    for cy, cx in rng.uniform(diameter, side - diameter, (cells, 2)):
        light[(yy - cy) ** 2 + (xx - cx) ** 2 <= (diameter / 2) ** 2] += 2.0
    return rng.poisson(light).astype(np.uint16)


def pessimistic(arch: str) -> torch.nn.Module:
    """A randomly initialised model whose readout is pushed far below zero: without the
    non-negative output stage it would count large negative numbers everywhere."""
    torch.manual_seed(0)
    model = create_model(arch, variance_head=True)
    if model.readout is not None:
        weight = model.readout.weight.detach().clone().reshape(-1)
        model.set_readout(weight, torch.tensor(-5.0))
    model.config.conformal_scores = [0.5, 1.0, 2.0] * 10
    return model.eval()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_no_architecture_counts_below_zero(arch):
    model = pessimistic(arch)
    structured = {"dim cells": dim_cells(np.random.default_rng(1))}  # the network runs
    for name, image in {**hostile_images(), **structured}.items():
        found = model.predict(image, ci=0.9)
        assert found.count >= 0, (arch, name)
        assert found.density.min() >= 0, (arch, name)
        assert found.interval.low >= 0 and found.interval.high >= found.interval.low
        assert found.density.shape == image.shape[:2]


def test_the_default_model_counts_constant_and_noise_images_as_nothing():
    model = load_model(DEFAULT_MODEL)
    for name, image in hostile_images().items():
        found = model.predict(image, ci=0.95)
        assert found.count == 0.0 and found.n_points == 0, name
        assert found.interval.high == 0.0, name
        if np.ptp(image) > 0:
            assert any("no contrast" in note for note in found.warnings), name


def test_dim_cells_under_photon_noise_are_still_counted():
    image = dim_cells(np.random.default_rng(2))
    found = load_model(DEFAULT_MODEL).predict(image, diameter=14)
    assert not any("no contrast" in note for note in found.warnings)
    # 30 discs: 27 centres found; the count is low (18.5) at this signal-to-noise (issue 41)
    assert 24 <= found.n_points <= 33 and found.count > 10


def test_predict_runs_the_network_once_and_count_and_points_agree(samples_dir):
    model = load_model(DEFAULT_MODEL)
    image = read_image(samples_dir / "101cell.png")
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    found = model.predict(image)
    assert len(calls) == 1
    assert model.count(image) == pytest.approx(found.count)
    np.testing.assert_array_equal(model.points(image), found.points)
    assert found.density.sum() == pytest.approx(found.count, rel=1e-4)
    assert found.density.shape == image.shape[:2]


def test_a_rescaled_image_counts_the_same_at_its_diameter(samples_dir):
    model = load_model(DEFAULT_MODEL)
    image = read_image(samples_dir / "164cell.png")
    trained = model.config.diameter or 10.0
    model.config.diameter = trained
    original = model.predict(image, diameter=trained)
    bigger = rescale_image(image, 2.0)
    enlarged = model.predict(bigger, diameter=2 * trained)
    assert enlarged.scale == pytest.approx(0.5)
    assert enlarged.count == pytest.approx(original.count, rel=0.05)
    assert abs(enlarged.n_points - original.n_points) <= 0.05 * original.n_points
    assert enlarged.density.shape == bigger.shape[:2]
    assert enlarged.density.sum() == pytest.approx(enlarged.count, rel=1e-4)
    # centres come back on the enlarged image's pixels: twice the original's
    assert np.median(enlarged.points, axis=0) == pytest.approx(
        2 * np.median(original.points, axis=0) + 0.5, abs=3.0
    )


def test_the_diameter_is_estimated_when_not_given(samples_dir):
    model = load_model(DEFAULT_MODEL)
    if model.config.diameter is None:
        pytest.skip("the default model records no training diameter")
    found = model.predict(read_image(samples_dir / "101cell.png"))
    assert found.diameter_estimated
    assert 0.5 * model.config.diameter < found.diameter < 2 * model.config.diameter


def test_far_larger_cells_than_the_model_knows_are_flagged():
    model = load_model(DEFAULT_MODEL)
    model.config.diameter_range = [6.0, 20.0]  # a model trained on small cells only
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:400, :400]
    image = rng.normal(20.0, 3.0, (400, 400)).astype(np.float32)
    for cy, cx in rng.uniform(60, 340, (8, 2)):
        image[((yy - cy) ** 2 + (xx - cx) ** 2) < 30**2] += 150.0
    found = model.predict(image)
    assert found.diameter > 40
    assert any("outside the 6-20 px" in note for note in found.warnings)


def test_a_flat_image_is_flagged():
    model = load_model(DEFAULT_MODEL)
    found = model.predict(np.full((128, 128), 40, np.uint8))
    assert any("contrast" in note for note in found.warnings)


def test_a_small_image_is_never_rescaled_below_the_models_smallest_input():
    model = load_model(DEFAULT_MODEL)
    yy, xx = np.mgrid[:40, :40]
    image = (200.0 * (((yy - 20) ** 2 + (xx - 20) ** 2) < 15**2)).astype(np.float32)
    found = model.predict(image, diameter=30.0 if model.config.diameter else None)
    assert found.count >= 0 and found.density.shape == (40, 40)
    assert min(image.shape) * found.scale >= model.min_size - 0.5

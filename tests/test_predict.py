import numpy as np
import pytest
import torch
from tests.conftest import textured

from celltally import create_model, dihedral, load_model, save_model
from celltally.errors import InputError
from celltally.metrics import detection_metrics
from celltally.models import bundled_models, model_hash
from celltally.predict import choose_peak_threshold
from celltally.targets import density_map


@pytest.mark.parametrize("name", ["fcrn_a", "fcrn_b", "countception"])
def test_tiled_prediction_equals_whole_image(name, rng):
    model = create_model(name, tile_size=64)  # 64-pixel tiles: a 203x171 image takes 4x3 tiles
    image = textured(rng, (203, 171))
    tiled = model.predict_map(image)
    model.config.tile_size = 4096
    whole = model.predict_map(image)
    grow = 2 * model.pad - model.shrink
    assert tiled.shape == whole.shape == (203 + grow, 171 + grow)
    np.testing.assert_allclose(tiled, whole, rtol=1e-4, atol=1e-5)
    assert tiled.sum() == pytest.approx(whole.sum(), rel=1e-3)


def test_save_load_round_trip_keeps_weights_config_and_outputs(tmp_path, rng):
    model = create_model("fcrn_b", in_channels=3, sigma=3.0, peak_threshold=0.7)
    image = textured(rng, (48, 56, 3))
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    assert type(loaded) is type(model) and loaded.config == model.config
    np.testing.assert_array_equal(loaded.predict_map(image), model.predict_map(image))
    save_model(model, tmp_path / "run" / "model")
    assert load_model(tmp_path / "run").config.arch == "fcrn_b"
    assert len(model_hash(tmp_path / "ckpt")) == 64


def test_unknown_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match=r"not a model: expected a folder with config\.json"):
        load_model(tmp_path / "missing")


def test_the_bundled_model_loads_by_name():
    assert "fcrn_a_vgg_cells" in bundled_models()
    model = load_model("fcrn_a_vgg_cells")
    assert model.config.arch == "fcrn_a"
    assert model.config.training["format"] == "vgg_cells"


@pytest.mark.parametrize("name", ["fcrn_a", "countception"])
@pytest.mark.parametrize("transform", dihedral.ELEMENTS)
def test_targets_of_moved_dots_map_back_onto_the_image(name, transform, rng):
    model = create_model(name)
    shape = (37, 45)
    dots = np.zeros(shape, dtype=np.float32)
    dots[rng.integers(0, 37, 12), rng.integers(0, 45, 12)] = 1  # including the borders
    dots[0, 0] = dots[36, 44] = dots[0, 44] = 1
    moved_dots = dihedral.apply(torch.from_numpy(dots), transform).numpy()
    target = model.training_target(np.argwhere(dots), shape)
    moved_target = model.training_target(np.argwhere(moved_dots), moved_dots.shape)
    back = dihedral.undo(moved_target[None], transform, model.flip_shift)[0]
    np.testing.assert_allclose(back, target, atol=1e-5)


@pytest.mark.parametrize("name", ["fcrn_a", "countception"])
def test_tta_counts_the_mean_of_the_moved_images_counts(name, rng):
    model = create_model(name)
    weight = model.readout.weight.detach().clone().reshape(-1)
    model.set_readout(weight, torch.tensor(0.5))  # most of the map above the ReLU's zero
    image = textured(rng, (61, 83))
    tensor = torch.from_numpy(image)
    counts = [model.count(dihedral.apply(tensor, t).numpy()) for t in dihedral.ELEMENTS]
    assert np.ptp(counts) > 1e-3  # a random network is not equivariant: the mean is not trivial
    model.config.tta = True
    assert model.count(image) == pytest.approx(np.mean(counts), rel=1e-4)
    grow = 2 * model.pad - model.shrink
    assert model.predict_map(image).shape == (61 + grow, 83 + grow)


def test_peak_threshold_rises_above_a_background_of_ripples_that_outnumber_the_cells(rng):
    """Faint background maxima, ~50 per cell: the chosen threshold must keep the cells only."""
    model = create_model("fcrn_a")
    cells = [rng.uniform(10, 290, (20, 2)) for _ in range(3)]
    maps = [
        density_map(points, (300, 300), 2.0, 100.0) + rng.uniform(0, 0.2, (300, 300))
        for points in cells
    ]
    ripples = sum(len(model.local_maxima(m, 0.0)) for m in maps) - 60
    assert ripples > 40 * 60  # the regime where quantiles of the peak values stay in the noise
    threshold = choose_peak_threshold(model, maps, cells, radius=3.0)
    found = [model.local_maxima(m, threshold) for m in maps]
    assert detection_metrics(found, cells, 3.0)["f1"] > 0.95

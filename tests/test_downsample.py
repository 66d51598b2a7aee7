"""``downsample``: the network sees reduced images; everything it gives back is on the image's
own pixels."""

import numpy as np
import pytest
import torch
from tests.conftest import data_set

from celltally import create_model, load_model
from celltally.data import load_dataset, protocol_split
from celltally.data.images import downsample, to_grid_points, to_image_points, upsample
from celltally.models.config import ModelConfig
from celltally.train import TrainConfig, train


def test_downsample_averages_blocks_and_completes_the_edges():
    image = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    small = downsample(image, 2)
    assert small.shape == (3, 4)
    assert small[0, 0] == image[:2, :2].mean()
    assert small[2, 3] == image[4, 6]  # the corner block is the corner pixel repeated
    assert downsample(np.ones((9, 9, 3)), 3).shape == (3, 3, 3)


def test_upsample_shares_or_repeats_and_crops():
    grid = np.array([[4.0, 8.0], [12.0, 16.0]], np.float32)
    shared = upsample(grid, 2, (3, 4))
    assert shared.shape == (3, 4) and shared[0, 0] == 1.0
    assert upsample(grid, 2).sum() == grid.sum()
    assert (upsample(grid, 2, share=False)[:2, :2] == 4.0).all()


def test_points_move_to_the_grid_and_back(rng):
    points = rng.uniform(0, 100, (20, 2))
    assert np.allclose(to_image_points(to_grid_points(points, 3), 3), points)
    # the centre of block (i, j) of a factor-2 grid: pixel 2i + 0.5
    assert np.allclose(to_grid_points(np.array([[0.5, 4.5]]), 2), [[0.0, 2.0]])


def test_the_image_target_counts_every_dot_on_the_grid(rng):
    model = create_model("fcrn_a", downsample=2)
    points = rng.uniform(0, 63, (15, 2))
    target = model.image_target(points, (63, 64))
    assert target.shape == (32, 32)
    assert target.sum() / model.config.scale == pytest.approx(15, abs=0.3)  # a few at edges


@pytest.mark.parametrize("arch", ["fcrn_a", "countception"])
def test_a_downsampled_model_is_the_plain_model_on_the_reduced_image(arch, rng):
    torch.manual_seed(0)
    reduced = create_model(arch, downsample=2, peak_threshold=0.0).eval()
    plain = create_model(arch, peak_threshold=0.0).eval()
    plain.load_state_dict(reduced.state_dict())
    image = rng.uniform(0, 255, (70, 66)).astype(np.float32)
    small = downsample(image[:, :, None], 2)
    assert reduced.count(image) == pytest.approx(plain.count(small), rel=1e-5)
    assert np.allclose(reduced.points(image), to_image_points(plain.points(small), 2))
    output = reduced.predict_output(image)
    density = reduced.density(output[0], image.shape)
    assert density.shape == image.shape
    assert density.sum() == pytest.approx(reduced.count_from_map(output[0]), rel=1e-4)


def test_a_region_interval_of_a_downsampled_model_matches_its_whole_image_interval(rng):
    model = create_model("fcrn_a", downsample=2, variance_head=True).eval()
    model.config.conformal_scores = [0.5, 1.0, 1.5, 2.0] * 10
    image = rng.uniform(0, 255, (64, 64)).astype(np.float32)
    output = model.predict_output(image)
    whole = model.count_interval(output, 0.9)
    everywhere = model.count_interval(output, 0.9, np.ones(image.shape, bool))
    assert everywhere.count == pytest.approx(whole.count, rel=1e-5)
    assert everywhere.std == pytest.approx(whole.std, rel=1e-4)
    top = np.zeros(image.shape, bool)
    top[:32] = True
    assert model.count_interval(output, 0.9, top).count == pytest.approx(
        model.density(output[0], image.shape)[top].sum(), rel=1e-4
    )


def test_images_too_small_for_the_downsampled_network_are_refused():
    model = create_model("fcrn_a", downsample=4)
    with pytest.raises(ValueError, match="64x64 minimum of fcrn_a at downsample 4"):
        model.count(np.zeros((40, 80)))
    with pytest.raises(ValueError, match="downsample must be a whole factor from 1 to 8"):
        ModelConfig(arch="fcrn_a", downsample=0)


@pytest.mark.slow
def test_training_at_half_resolution_learns_and_keeps_the_setting(tmp_path):
    samples = load_dataset(data_set("vgg_cells"), "vgg_cells")
    split = protocol_split(samples, "vgg_cells", 4, 3, seed=0)
    config = TrainConfig(
        downsample=2,
        patch_size=64,
        batch_size=8,
        lr=1e-3,
        steps_per_epoch=15,
        epochs=3,
        finetune_epochs=1,
        sigma=1.0,
    )
    torch.manual_seed(config.seed)
    untrained = create_model("fcrn_a", downsample=2, sigma=1.0)
    truth = [len(s.load()[1]) for s in split.val]
    start = np.mean(
        [abs(untrained.count(s.load()[0]) - t) for s, t in zip(split.val, truth, strict=True)]
    )
    trained = train(config, split.train, split.val, tmp_path, progress=False)
    assert trained.config.training["best_val_mae"] < 0.5 * start
    reloaded = load_model(tmp_path)
    assert reloaded.config.downsample == 2
    image = split.val[0].load()[0]
    centres = reloaded.points(image)
    assert len(centres) and (centres >= -0.5).all() and (centres < 256).all()

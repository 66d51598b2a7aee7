"""Count-ception: shapes, parameters, the count-map target, the FFT convolution, the readout,
the recovered centres and a short training run."""

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import torch.nn.functional as F
from tests.conftest import textured
from typer.testing import CliRunner

from celltally import create_model, save_model
from celltally.cli import app
from celltally.data.synth import preset, synth_samples
from celltally.models.countception import fft_conv2d
from celltally.targets import WINDOW, count_map
from celltally.train import TrainConfig, train

# Counted by hand from the layer list in the paper and models/countception.py: convolution
# weights (no biases: each is followed by BatchNorm) + a BatchNorm scale and shift per map.
INCEPTION = {(64, 16, 16), (32, 16, 32), (16, 112, 48), (160, 64, 32), (96, 40, 40), (80, 32, 96)}
CONV_WEIGHTS = (
    1 * 64 * 9
    + sum(i * a + i * b * 9 for i, a, b in INCEPTION)
    + 48 * 16 * 14 * 14
    + 128 * 32 * 18 * 18
    + 32 * 64
    + 64 * 64
    + 64 * 1
)
BN_MAPS = 64 + sum(a + b for _, a, b in INCEPTION) + 16 + 32 + 64 + 64 + 1
STRIDES = (1, 2, 4, 8, 16, 32)


def test_parameter_count_is_the_papers():
    model = create_model("countception")
    assert sum(p.numel() for p in model.parameters()) == CONV_WEIGHTS + 2 * BN_MAPS == 1_681_058


@pytest.mark.parametrize("shape", [(3, 5), (37, 64), (64, 37), (100, 129)])
def test_output_is_32_pixels_larger_than_the_image(shape):
    model = create_model("countception")
    assert model.predict_map(np.ones(shape, dtype=np.float32)).shape == (
        shape[0] + WINDOW,
        shape[1] + WINDOW,
    )


@pytest.mark.parametrize("stride", STRIDES)
def test_count_map_counts_every_dot_the_same_number_of_times(rng, stride):
    shape = (70, 45)
    points = rng.uniform([0, 0], shape, size=(60, 2))
    points[:4] = [[0, 0], [69.99, 44.99], [0, 44.5], [69.5, 0]]  # the four corners
    target = count_map(points, shape)
    assert target.shape == (70 + WINDOW, 45 + WINDOW)
    assert target[::stride, ::stride].sum() == (WINDOW // stride) ** 2 * len(points)
    one = count_map(np.array([[10.0, 20.0]]), shape)
    rows, cols = np.nonzero(one)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 41, 20, 51)


@pytest.mark.parametrize("stride", STRIDES)
def test_the_readout_divides_by_the_redundancy_of_its_stride(rng, stride):
    points = rng.uniform([0, 0], [90, 60], size=(37, 2))
    model = create_model("countception", window_stride=stride)
    assert model.count_from_map(count_map(points, (90, 60))) == pytest.approx(37.0)


@pytest.mark.parametrize(("channels", "maps", "kernel"), [(48, 16, 14), (128, 32, 18)])
def test_fft_convolution_equals_direct_convolution_forward_and_backward(channels, maps, kernel):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 75, 90, generator=generator, requires_grad=True)
    weight = torch.randn(maps, channels, kernel, kernel, generator=generator, requires_grad=True)
    direct = F.conv2d(x, weight)
    grad = torch.randn(direct.shape, generator=generator)
    expected = torch.autograd.grad(direct, (x, weight), grad)
    fast = fft_conv2d(x, weight)
    found = torch.autograd.grad(fast, (x, weight), grad)
    assert fast.shape == direct.shape
    for name, a, b in [("output", fast, direct), ("input grad", found[0], expected[0]),
                       ("weight grad", found[1], expected[1])]:  # fmt: skip
        assert (a - b).abs().max() / b.abs().max() <= 1e-4, name


def test_the_model_gives_the_same_output_with_fft_and_direct_convolutions(rng):
    model = create_model("countception")
    image = textured(rng, (40, 52))
    fast = model.predict_map(image)
    direct = model.use_fft(False).predict_map(image)
    np.testing.assert_allclose(fast, direct, rtol=1e-4, atol=1e-4 * np.abs(direct).max())


def test_deconvolving_a_count_map_finds_the_dots():
    points = np.array([[12.0, 15.0], [40.0, 60.0], [70.0, 22.0], [75.0, 80.0], [20.0, 85.0]])
    model = create_model("countception", peak_threshold=0.01)
    output = count_map(points, (96, 100))
    found = model.peaks(output)
    assert len(found) == len(points)
    distances = np.linalg.norm(found[:, None] - points[None], axis=2).min(axis=0)
    assert distances.max() <= 1.5
    assert model.density(output).sum() == pytest.approx(len(points), rel=1e-5)


def test_frozen_batch_norm_keeps_its_initial_statistics():
    model = create_model("countception", frozen_bn=True).train()
    model(torch.randn(2, 1, 80, 80))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not m.training and (m.running_mean == 0).all() for m in norms)
    moving = create_model("countception").train()
    moving(torch.randn(2, 1, 80, 80))
    assert any((m.running_mean != 0).any() for m in moving.modules() if hasattr(m, "running_mean"))


def test_the_readout_is_set_through_its_batch_norm(rng):
    model = create_model("countception").train()
    model(torch.randn(2, 1, 64, 64))  # statistics away from their initial values
    model.eval()
    norm = model.layers[-1][1]
    features, before_activation = [], []
    model.readout.register_forward_hook(lambda module, args, output: features.append(args[0]))
    norm.register_forward_hook(
        lambda module, args, output: before_activation.append(output.clone())
    )
    weight, bias = torch.randn(64, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    model.set_readout(weight, bias)
    model(torch.from_numpy(rng.random((1, 1, 48, 40), dtype=np.float32)))
    expected = torch.einsum("c,bchw->bhw", weight.float(), features[0]) + 0.3
    torch.testing.assert_close(before_activation[0][:, 0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_short_training_lowers_the_validation_error(tmp_path):
    crowded = preset("nuclei", height=64, width=64, density=30.0, overlap=0.0, cluster_prob=0.0)
    samples = synth_samples(crowded, 9, seed=0)  # 4 to train on, 5 to validate and calibrate
    recipe = TrainConfig.from_dict({"arch": "countception"})
    assert (recipe.loss, recipe.lr, recipe.batch_size) == ("l1", 5e-3, 4)  # the paper's
    assert recipe.calibrate_counts
    # Batch statistics at 5e-3 ended better over the whole recipe but start slowest
    # (benchmarks/RESULTS.md, "BatchNorm and learning rate"); frozen at 3e-4 learns in 20 steps.
    settings = {"patch_size": 64, "steps_per_epoch": 10, "epochs": 2, "finetune_epochs": 0}
    settings |= {"frozen_bn": True, "lr": 3e-4}
    config = TrainConfig.from_dict({"arch": "countception", "bf16": False, **settings})
    torch.manual_seed(config.seed)
    untrained = create_model("countception")
    start = np.mean([abs(untrained.count(s.load()[0]) - len(s.load()[1])) for s in samples[4:]])
    model = train(config, samples[:4], samples[4:], tmp_path, progress=False)
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["val_mae"].min() < 0.5 * start, start
    assert model.config.count_gain != 1.0  # calibrated on the 5 validation images
    # the epoch kept is the best after the calibration
    assert model.config.training["best_val_mae"] == history["val_mae_calibrated"].min()


def test_the_count_command_runs_a_countception_checkpoint(samples_dir, tmp_path):
    save_model(create_model("countception", peak_threshold=1e-4), tmp_path / "model")
    image = samples_dir / "101cell.png"
    result = CliRunner().invoke(
        app, ["count", str(image), "--model", str(tmp_path / "model"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "counts.csv").iloc[0]
    density = tifffile.imread(tmp_path / "density" / "101cell.tif")
    assert density.shape == (256, 256)  # deconvolved back to the image grid
    assert density.sum() == pytest.approx(row["count"], abs=1e-3)  # the CSV rounds
    points = pd.read_csv(tmp_path / "points" / "101cell.csv")
    assert len(points) == row["n_points"] and points.y.between(0, 255).all()

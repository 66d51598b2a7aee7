"""fpn_vgg11 (cellcount): the pyramid's scales, the counter on any size, the losses, the output."""

import itertools

import numpy as np
import pytest
import torch

from celltally import create_model
from celltally.models.fpn_vgg11 import (
    CELL,
    MASK_MIN_LOG_VARIANCE,
    FeaturePyramid,
    VGG11Counter,
    count_loss,
    segmentation_loss,
)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_the_counter_is_vgg11_with_batch_norm():
    counter = VGG11Counter()
    convs = [m for m in counter.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in counter.features) == 5
    # 3x3 weights (no bias: BatchNorm follows) + BatchNorm + the 1x1 head 512 -> 256 -> 2
    widths = [1, 64, 128, 256, 256, 512, 512, 512, 512]
    weights = sum(9 * a * b + 2 * b for a, b in itertools.pairwise(widths))
    assert n_params(counter) == weights + 512 * 256 + 256 + 256 * 2 + 2


@pytest.mark.parametrize("shape", [(64, 64), (96, 160), (224, 96)])
def test_the_counter_accepts_any_size_and_counts_per_32x32_cell(shape):
    counter = VGG11Counter().eval()
    cells = counter(torch.rand(2, 1, *shape))
    assert cells.shape == (2, 2, shape[0] // CELL, shape[1] // CELL)
    assert (cells[:, 0] >= 0).all()  # softplus counts


def test_the_pyramid_predicts_mask_and_log_variance_at_four_scales():
    outputs = FeaturePyramid(3)(torch.rand(1, 3, 64, 96))
    assert [o.shape for o in outputs] == [(1, 2, 64 // 2**k, 96 // 2**k) for k in range(4)]


@pytest.mark.parametrize("shape", [(32, 32), (50, 70), (130, 97)])
def test_the_output_is_image_sized_and_its_sum_is_the_counters_count(shape):
    model = create_model("fpn_vgg11").eval()
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    output = model.predict_output(image)
    assert output.shape == (2, *shape) and model.config.variance_head
    padded = model.prepare(image)[None]
    height, width = -(-shape[0] // 32) * 32, -(-shape[1] // 32) * 32
    padded = torch.nn.functional.pad(padded, (0, width - shape[1], 0, height - shape[0]))
    with torch.no_grad():
        full = model(padded)
        _, cells = model.count_cells(padded)
    assert full[0, 0].sum().item() == pytest.approx(cells[0, 0].sum().item(), rel=1e-4)
    assert np.exp(full[0, 1].double().numpy()).sum() == pytest.approx(
        np.exp(cells[0, 1].double().numpy()).sum(), rel=1e-4
    )  # variance shares sum to the cells' variance
    assert model.count(image) == pytest.approx(output[0].sum(), rel=1e-5)


def test_the_losses_by_hand():
    mask = torch.ones(1, 1, 8, 8)  # mask 0.5 everywhere, log-variance 0:
    outputs = [torch.zeros(1, 2, 8 // 2**k, 8 // 2**k) for k in range(4)]
    expected = 4 * 0.5 * 0.5**2  # each scale: (1 - 0.5)^2 / 2, total variation 0
    assert segmentation_loss(outputs, mask).item() == pytest.approx(expected)
    outputs[0][:, 1] = -50.0  # a confident finest scale costs as the floor's variance does
    floor = np.exp(MASK_MIN_LOG_VARIANCE)
    at_floor = 0.5**2 / (2 * floor) + MASK_MIN_LOG_VARIANCE / 2
    by_hand = at_floor + 3 * 0.5 * 0.5**2
    assert segmentation_loss(outputs, mask).item() == pytest.approx(by_hand, rel=1e-5)
    cells = torch.zeros(1, 2, 2, 2)
    cells[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # count 10, variance 4 x e^0 = 4
    by_hand = (7.0 - 10.0) ** 2 / (2 * 4.0) + np.log(4.0) / 2
    assert count_loss(cells, torch.tensor([7.0])).item() == pytest.approx(by_hand, rel=1e-6)


def test_recomputed_counter_statistics_make_inference_match_the_training_batches():
    torch.manual_seed(0)
    model = create_model("fpn_vgg11", in_channels=3)
    masks = torch.rand(4, 1, 96, 96)
    model.counter.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics of unrelated batches
            model.counter(0.1 * torch.rand(4, 1, 96, 96))
        model.eval()
        before = model.counter(masks)[:, 0].sum().item()
        model.end_epoch(model.training_phases()[1], [masks])
        model.counter.train()
        in_training = model.counter(masks)[:, 0].sum().item()
        model.eval()
        after = model.counter(masks)[:, 0].sum().item()
    assert after == pytest.approx(in_training, rel=5e-3)  # unbiased against batch variance
    assert abs(before - in_training) > 10 * abs(after - in_training)


def test_counter_crops_count_the_dots_inside_them():
    from celltally.train.epochs import _counter_example

    rng = np.random.default_rng(0)
    height, width = 70, 90
    pixels = rng.choice(height * width, size=60, replace=False)
    points = np.stack([pixels // width, pixels % width], axis=1) + rng.uniform(-0.49, 0.49, (60, 2))
    indicator = np.zeros((height, width), np.float32)  # one 1 at each dot's pixel
    indicator[pixels // width, pixels % width] = 1
    assert _counter_example(indicator, points, rng, None)[1] == 60
    sizes = set()
    for _ in range(40):  # turned and cropped: the count is the dots the crop holds
        crop, count = _counter_example(indicator, points, rng, 64)
        assert crop.sum() == count
        sizes.add(crop.shape)
    assert sizes == {(64, 64)}
    assert _counter_example(indicator, points, rng, 96)[0].shape in {(70, 90), (90, 70)}


@pytest.mark.slow
def test_segmenter_then_counter_training_on_synthetic_masks(tmp_path):
    from celltally.data.synth import preset, synth_samples
    from celltally.train import TrainConfig, train

    cells = preset("bbbc005", height=96, width=128, count_range=(5, 20), radius=8.0)
    samples = synth_samples(cells, 13, seed=0)
    settings = {"epochs": 2, "steps_per_epoch": 6, "finetune_epochs": 3, "batch_size": 4}
    config = TrainConfig.from_dict(
        {"arch": "fpn_vgg11", "in_channels": 3, "bf16": False, **settings}
    )
    model = train(config, samples[:8], samples[8:], tmp_path, progress=False)
    history = model.config.training
    assert history["epochs_run"] == 5 and len(model.config.conformal_scores) == 5
    assert model.config.count_gain != 1.0  # the recipe calibrates the counts on validation
    bounds = model.count(samples[8].load()[0], ci=0.5)
    assert bounds.low <= max(bounds.count, 0.0) <= bounds.high


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"finetune_epochs": 0}, "set finetune_epochs >= 1"),  # the counter must be trained
        ({"ema_decay": 0.9}, "cannot average its weights"),  # its parts train in turn
    ],
)
def test_the_phases_it_declares_are_checked_before_training(tmp_path, settings, problem):
    from celltally.data.synth import preset, synth_samples
    from celltally.train import TrainConfig, train

    cells = preset("bbbc005", height=64, width=64, count_range=(2, 4), radius=6.0)
    samples = synth_samples(cells, 9, seed=0)
    config = TrainConfig.from_dict({"arch": "fpn_vgg11", "in_channels": 3, **settings})
    with pytest.raises(ValueError, match=problem):
        train(config, samples[:4], samples[4:], tmp_path, progress=False)
    assert not (tmp_path / "model").exists()

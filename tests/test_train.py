import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import data_set, textured

from celltally import load_model
from celltally.data import load_dataset, protocol_split
from celltally.train import TrainConfig, train

pytestmark = pytest.mark.slow
QUICK = {"patch_size": 64, "batch_size": 8, "optimizer": "adam", "lr": 1e-3, "finetune_lr": 1e-4}


@pytest.fixture(scope="module")
def tiny_split():
    samples = load_dataset(data_set("vgg_cells"), "vgg_cells")
    return protocol_split(samples, "vgg_cells", 4, 3, seed=0)


def untrained_val_mae(split, config) -> float:
    torch.manual_seed(config.seed)
    from celltally import create_model

    model = create_model(config.model.arch)
    errors = [abs(model.count(s.load()[0]) - len(s.load()[1])) for s in split.val]
    return float(np.mean(errors))


def test_short_training_lowers_the_validation_error(tiny_split, tmp_path):
    config = TrainConfig(**QUICK, steps_per_epoch=15, epochs=3, finetune_epochs=1)
    model = train(config, tiny_split.train, tiny_split.val, tmp_path, progress=False)
    start = untrained_val_mae(tiny_split, config)
    best = model.config.training["best_val_mae"]
    assert best < 0.5 * start, (start, best)
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 4 and "finetune" in history[-1]
    reloaded = load_model(tmp_path)
    assert reloaded.config.peak_threshold == model.config.peak_threshold
    assert reloaded.config.training["settings"]["epochs"] == 3


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_an_interrupted_run_resumes_where_it_stopped(tiny_split, tmp_path, ema_decay):
    config = TrainConfig(
        **QUICK, steps_per_epoch=3, epochs=2, finetune_epochs=1, ema_decay=ema_decay
    )

    def stop_after_first_epoch(epoch, record):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(
            config,
            tiny_split.train,
            tiny_split.val,
            tmp_path / "a",
            on_epoch_end=stop_after_first_epoch,
            progress=False,
        )
    seen = []
    train(
        config,
        tiny_split.train,
        tiny_split.val,
        tmp_path / "a",
        progress=False,
        on_epoch_end=lambda epoch, record: seen.append(epoch),
    )
    assert seen == [2, 3]  # resumed after epoch 1 of 3, not from the start
    train(config, tiny_split.train, tiny_split.val, tmp_path / "b", progress=False)
    resumed = load_file(tmp_path / "a" / "last" / "model.safetensors")
    straight = load_file(tmp_path / "b" / "last" / "model.safetensors")
    assert_same_tensors(resumed, straight)
    if ema_decay:
        assert_same_tensors(
            *(
                torch.load(tmp_path / run / "last" / "state.pt", weights_only=False)["averaged"]
                for run in "ab"
            )
        )


def assert_same_tensors(resumed: dict, straight: dict) -> None:
    for name, weights in straight.items():
        torch.testing.assert_close(resumed[name], weights, msg=name)


def test_the_weight_average_follows_every_optimiser_step():
    from celltally import create_model
    from celltally.train.loop import _weight_average

    model = create_model("fcrn_a")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    averaged = _weight_average(model, optimizer, TrainConfig(ema_decay=0.9))
    seen = []
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.rand(2, 1, 16, 16)).square().mean().backward()
        optimizer.step()
        seen.append(model.readout.weight.detach().clone())
    expected = 0.9 * (0.9 * seen[0] + 0.1 * seen[1]) + 0.1 * seen[2]  # the first step copies
    torch.testing.assert_close(averaged.module.readout.weight, expected)
    assert not torch.equal(expected, seen[2])
    with pytest.raises(ValueError, match="ema_decay must be in"):
        TrainConfig(ema_decay=1.0)


def test_readout_refit_makes_the_summed_training_count_exact(rng):
    from celltally import create_model
    from celltally.train import refit_readout

    model = create_model("fcrn_a", batch_norm=True)
    images = [textured(rng, (48, 64)) for _ in range(3)]
    points = [rng.uniform([0, 0], [47, 63], size=(n, 2)) for n in (5, 12, 30)]
    before = sum(model.count(image) for image in images)
    refit_readout(model, images, points)
    after = sum(model.count(image) for image in images)
    assert abs(before - 47) > 1
    assert after == pytest.approx(47, rel=1e-4)  # exact after the ReLU, by the final gain
    assert all(model.count(image) >= 0 for image in images)


def test_batch_norm_refit_averages_the_statistics_of_whole_images(rng):
    from celltally import create_model
    from celltally.train import refit_batch_norm

    model = create_model("fcrn_a", batch_norm=True).eval()
    images = [rng.random((48, 64), dtype=np.float32) * scale for scale in (1, 5, 20)]
    first_conv, first_norm = model.layers[0][0], model.layers[0][1]
    inputs = []
    hook = first_conv.register_forward_hook(lambda module, args, output: inputs.append(output))
    refit_batch_norm(model, images)
    hook.remove()
    expected = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(dim=0)
    assert len(inputs) == 3
    torch.testing.assert_close(first_norm.running_mean, expected)
    assert first_norm.momentum == 0.1 and not model.training  # left as it was


def test_count_calibration_needs_enough_validation_images(tiny_split, tmp_path):
    config = TrainConfig(**QUICK, calibrate_counts=True)
    with pytest.raises(ValueError, match="at least 5 validation images"):
        train(config, tiny_split.train, tiny_split.val, tmp_path, progress=False)
    assert not (tmp_path / "last").exists()

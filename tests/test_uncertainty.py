"""Count intervals: the aleatoric loss, conformal calibration, variance heads, and the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from imageio.v3 import imread
from tests.conftest import textured
from typer.testing import CliRunner

from celltally import create_model
from celltally.cli import app
from celltally.losses import gaussian_nll, total_variation
from celltally.models import read_config
from celltally.train import with_variance_head
from celltally.uncertainty import (
    calibrate_counts,
    calibrated_mae,
    calibration_scores,
    conformal_quantile,
    fit_count_calibration,
    interval,
    min_calibration_images,
    reliability,
    score_quantile,
)


def test_gaussian_nll_and_its_gradients_match_a_hand_computation():
    mean = torch.tensor([1.0, 2.0, -1.0], requires_grad=True)
    log_var = torch.tensor([0.0, np.log(4.0), np.log(0.25)], requires_grad=True)
    target = torch.tensor([3.0, 2.0, 0.0])
    loss = gaussian_nll(mean, log_var, target)
    # r^2 / (2 var) + log(var) / 2 per element: 4/2 + 0, 0 + log(4)/2, 1/0.5 + log(0.25)/2
    by_hand = (2.0 + (0.0 + np.log(4.0) / 2) + (2.0 + np.log(0.25) / 2)) / 3
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    loss.backward()
    residual, var = np.array([2.0, 0.0, 1.0]), np.array([1.0, 4.0, 0.25])
    assert mean.grad.numpy() == pytest.approx(-residual / var / 3, rel=1e-5)
    assert log_var.grad.numpy() == pytest.approx((0.5 - 0.5 * residual**2 / var) / 3, rel=1e-5)


def test_gaussian_nll_is_minimised_where_the_variance_equals_the_squared_error():
    log_var = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.Adam([log_var], lr=0.05)
    for _ in range(600):
        optimiser.zero_grad()
        gaussian_nll(torch.zeros(1), log_var, torch.full((1,), 3.0)).backward()
        optimiser.step()
    assert torch.exp(log_var).item() == pytest.approx(9.0, rel=1e-2)


def test_gaussian_nll_stays_finite_for_extreme_log_variances():
    loss = gaussian_nll(torch.zeros(2), torch.tensor([-1e4, 1e4]), torch.ones(2))
    assert torch.isfinite(loss)


def test_a_log_variance_below_the_floor_costs_as_the_floor_and_gets_no_gradient():
    log_var = torch.tensor([-30.0, -5.0], requires_grad=True)
    loss = gaussian_nll(torch.zeros(2), log_var, torch.full((2,), 0.1), min_log_variance=-9.0)
    by_hand = (0.01 / 2 * np.exp(9.0) - 9.0 / 2 + 0.01 / 2 * np.exp(5.0) - 5.0 / 2) / 2
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    loss.backward()
    assert log_var.grad[0] == 0.0 and log_var.grad[1] != 0.0


def test_total_variation_by_hand():
    maps = torch.tensor([[[[0.0, 1.0], [3.0, 1.0]]]])
    # vertical |3-0|, |1-1| -> mean 1.5; horizontal |1-0|, |1-3| -> mean 1.5
    assert total_variation(maps).item() == pytest.approx(3.0)


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_calibration_reaches_nominal_coverage_with_known_noise(rng, level):
    """The model's sigmas are right up to an unknown factor 3 and the noise is heavy-tailed
    (Student t, 4 degrees of freedom): conformal calibration still covers ``level``."""

    def draw(n):
        truth = rng.integers(10, 200, n).astype(float)
        sigma = 0.5 + 0.05 * truth
        return truth + 3.0 * sigma * rng.standard_t(4, n), sigma, truth

    scores = calibration_scores(*draw(400))
    counts, sigmas, truth = draw(20000)
    observed = np.mean(
        [
            interval(c, s, scores, level).covers(t)
            for c, s, t in zip(counts, sigmas, truth, strict=True)
        ]
    )
    assert abs(observed - level) < 0.025
    assert reliability(counts, sigmas, truth, scores, [level]) == pytest.approx([observed])


def test_conformal_quantile_needs_enough_scores():
    assert min_calibration_images(0.95) == 19 and min_calibration_images(0.9) == 9
    assert conformal_quantile(np.arange(19.0), 0.95) == 18.0  # the largest of 19
    with pytest.raises(ValueError, match="at least 19"):
        conformal_quantile(np.arange(18.0), 0.95)
    with pytest.raises(ValueError, match="fraction"):
        conformal_quantile(np.arange(30.0), 95)


def test_too_few_scores_for_conformal_fall_back_to_a_gaussian_temperature():
    scores = [1.0, 2.0, 2.0, 4.0] * 4  # 16 < 19: no conformal 95% interval
    assert score_quantile(scores, 0.95) == pytest.approx(1.959964 * np.sqrt(6.25))
    assert score_quantile(np.arange(19.0), 0.95) == 18.0  # enough: conformal
    outlier = [1.0] * 15 + [10.0]  # never narrower than the conformal 90% interval
    assert score_quantile(outlier, 0.95) == score_quantile(outlier, 0.9) == 10.0
    with pytest.raises(ValueError, match="calibrate"):
        score_quantile([], 0.5)


def test_with_variance_head_fits_the_likelihood_optimum_and_keeps_the_map():
    """At the maximum-likelihood fit the scaled squared residuals average exactly 1 (the
    bias's gradient is zero), and the head does not change the map."""
    rng = np.random.default_rng(0)
    images = [textured(rng, (48, 48)) for _ in range(3)]
    points = [rng.uniform(0, 48, (int(rng.integers(5, 15)), 2)) for _ in range(3)]
    torch.manual_seed(0)
    model = create_model("fcrn_a").eval()
    weight = model.readout.weight.detach().clone().reshape(-1)
    model.set_readout(weight, torch.tensor(0.5))  # most of the map above the ReLU's zero
    fitted = with_variance_head(model, images, points).eval()
    fitted.config.log_variance_range = None  # the likelihood's optimum, before its clipping
    scaled = []
    for image, dots in zip(images, points, strict=True):
        output = fitted.predict_output(image)
        assert np.allclose(output[0], model.predict_map(image), atol=1e-6)
        residual = fitted.training_target(dots, image.shape) - output[0]
        scaled.append(residual.astype(np.float64) ** 2 * np.exp(-output[1].astype(np.float64)))
    # within 0.2%: behind the ReLU, pixels predicted and targeted 0 have residuals of exactly
    # 0, which keep pulling the variance down, and L-BFGS stops near the optimum
    assert np.mean(scaled) == pytest.approx(1.0, abs=2e-3)
    assert fitted.config.variance_head and not model.config.variance_head


def test_a_fitted_variance_head_is_clipped_to_the_quantiles_of_its_fitted_values():
    rng = np.random.default_rng(1)
    images = [textured(rng, (64, 64)) for _ in range(2)]
    points = [rng.uniform(0, 64, (10, 2)) for _ in range(2)]
    fitted = with_variance_head(create_model("fcrn_a").eval(), images, points).eval()
    low, high = fitted.config.log_variance_range
    clipped = np.concatenate([fitted.predict_output(image)[1].ravel() for image in images])
    fitted.config.log_variance_range = None
    raw = np.concatenate([fitted.predict_output(image)[1].ravel() for image in images])
    outside = (raw < low) | (raw > high)
    assert 0 < outside.mean() < 0.01  # all pixels were fitted: 0.1% beyond each quantile
    assert np.array_equal(clipped, np.clip(raw, low, high))


def test_intervals_are_ordered_and_never_negative():
    bounds = interval(2.0, 3.0, [0.5, 1.0, 2.0] * 10, 0.9)
    assert bounds.low == 0.0 and bounds.high == pytest.approx(2.0 + 2.0 * 3.0)
    assert bounds.low <= bounds.count <= bounds.high and bounds.sigma == 3.0


@pytest.mark.parametrize("arch", ["fcrn_a", "fcrn_b", "countception"])
def test_a_variance_head_adds_a_log_variance_channel(arch):
    model = create_model(arch, variance_head=True).eval()
    image = textured(np.random.default_rng(0), (48, 64))
    output = model.predict_output(image)
    assert output.shape[0] == 2 and output.shape[1:] == model.predict_map(image).shape
    with pytest.raises(ValueError, match="calibrate"):
        model.count(image, ci=0.95)
    model.config.conformal_scores = [1.0] * 20
    bounds = model.count(image, ci=0.95)
    assert bounds.count == pytest.approx(model.count(image), rel=1e-5)
    assert 0 <= bounds.low <= max(bounds.count, 0) <= bounds.high  # untrained: maybe < 0
    sigma = np.sqrt(np.exp(output[1].astype(np.float64))[:: model.config.window_stride].sum())
    assert arch == "countception" or bounds.sigma == pytest.approx(
        sigma / model.count_divisor, rel=1e-4
    )


def test_a_model_without_variance_head_says_how_to_get_intervals():
    with pytest.raises(ValueError, match="variance_head=true"):
        create_model("fcrn_a").count(np.ones((32, 32)), ci=0.95)


@pytest.mark.slow
def test_train_with_variance_head_then_count_evaluate_and_calibrate_with_intervals(tmp_path):
    from celltally.data.synth import preset, write_set

    folder = tmp_path / "synth"
    list(write_set(preset("nuclei", height=64, width=64, density=20.0), 30, folder, workers=1))
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    settings = ["epochs=1", "steps_per_epoch=3", "finetune_epochs=0", "patch_size=48",
                "variance_head=true", "calibrate_counts=true"]  # fmt: skip
    data = ["--data", folder, "--format", "points"]
    run("train", *data, "--out", tmp_path / "run", "--n-train", 4, "--n-val", 20,
        *[a for s in settings for a in ("--set", s)])  # fmt: skip
    config = read_config(tmp_path / "run" / "model").to_dict()
    assert len(config["conformal_scores"]) == 20 and config["variance_head"]
    assert config["count_gain"] != 1.0 and config["count_offset"] >= 0.0

    run("count", folder, "--model", tmp_path / "run", "--ci", "--out", tmp_path / "c")
    table = pd.read_csv(tmp_path / "c" / "counts.csv")
    assert list(table.columns)[:5] == ["image", "count", "ci_low", "ci_high", "std"]
    assert (table["ci_low"] <= table["count"]).all() and (table["count"] <= table["ci_high"]).all()
    assert (table["std"] > 0).all()

    run("evaluate", "--model", tmp_path / "run", *data, "--ci", "--out", tmp_path / "eval.json",
        "--reliability", tmp_path / "reliability.png")  # fmt: skip
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["n_images"] == 6 and 0.0 <= report["interval"]["coverage"] <= 1.0
    assert len(report["reliability"]["observed"]) == len(report["reliability"]["levels"])
    assert imread(tmp_path / "reliability.png").ndim == 3

    run("calibrate", "--model", tmp_path / "run", *data, "--out", tmp_path / "recal")
    recalibrated = read_config(tmp_path / "recal").to_dict()
    assert len(recalibrated["conformal_scores"]) == 30

    # the paper's bundled model has no variance head: its counts alone can be calibrated
    paper = ("--model", "fcrn_a_vgg_cells")
    result = run("calibrate", *paper, *data, "--counts", "--out", tmp_path / "counts_only")
    counts_only = read_config(tmp_path / "counts_only").to_dict()
    assert counts_only["count_gain"] != 1.0 and not counts_only["conformal_scores"]
    assert "counts: map x" in result.output
    # or fit a variance head, then it gives intervals
    run("calibrate", *paper, *data, "--fit-on", folder, "--out", tmp_path / "fitted")
    run("count", folder, "--model", tmp_path / "fitted", "--ci", "--out", tmp_path / "f")
    table = pd.read_csv(tmp_path / "f" / "counts.csv")
    assert (table["ci_low"] <= table["count"]).all() and (table["count"] <= table["ci_high"]).all()


def test_intervals_from_a_model_without_variance_head_are_a_one_line_error(samples_dir, tmp_path):
    paper = ["--model", "fcrn_a_vgg_cells"]
    result = CliRunner().invoke(
        app, ["count", str(samples_dir), *paper, "--ci", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "variance_head=true" in result.output
    assert not (tmp_path / "counts.csv").exists()


def test_region_intervals_add_up_to_the_image_when_the_regions_tile_it():
    model = create_model("fcrn_a", variance_head=True).eval()
    model.config.conformal_scores = list(np.linspace(0.1, 3.0, 40))
    output = model.predict_output(textured(np.random.default_rng(1), (64, 80)))
    left = np.zeros((64, 80), bool)
    left[:, :30] = True
    whole = model.count_interval(output, 0.9)
    parts = [model.count_interval(output, 0.9, region) for region in (left, ~left)]
    assert sum(p.count for p in parts) == pytest.approx(whole.count, rel=1e-5, abs=1e-6)
    assert sum(p.sigma**2 for p in parts) == pytest.approx(whole.sigma**2, rel=1e-5)
    with pytest.raises(ValueError, match="mask of the image"):
        model.count_interval(output, 0.9, left[:10])


@pytest.mark.parametrize("arch", ["fcrn_a", "countception"])
def test_count_calibration_recovers_a_known_affine_bias(arch, rng):
    model = create_model(arch)
    side = 40 if arch == "fcrn_a" else 72  # Count-ception's map is 32 pixels larger
    outputs = [rng.random((1, side, side + 8), dtype=np.float32) for _ in range(6)]
    gain, offset = 1.08, 0.02
    true = [gain * model.count_from_map(o[0]) + model.count_from_map(np.full_like(o[0], offset))
            for o in outputs]  # fmt: skip
    corrected = calibrate_counts(model, outputs, true)
    assert model.config.count_gain == pytest.approx(gain, rel=1e-5)
    assert model.config.count_offset == pytest.approx(offset, rel=1e-4)
    assert [model.count_from_map(o[0]) for o in corrected] == pytest.approx(true, rel=1e-5)
    calibrate_counts(model, corrected, true)  # already calibrated: the second fit is identity
    assert model.config.count_gain == pytest.approx(gain, rel=1e-5)


def test_the_count_calibration_applies_to_counts_regions_and_intervals(rng):
    model = create_model("fcrn_a", variance_head=True).eval()
    model.config.conformal_scores = list(np.linspace(0.1, 3.0, 40))
    image = textured(rng, (48, 56))
    plain = model.predict_output(image)
    model.config.count_gain, model.config.count_offset = 2.0, 0.001
    calibrated = model.predict_output(image)
    assert calibrated[0] == pytest.approx(2.0 * plain[0] + 0.001, rel=1e-5, abs=1e-6)
    expected = 2.0 * model.count_from_map(plain[0]) + 0.001 * 48 * 56 / model.count_divisor
    assert model.count(image) == pytest.approx(expected, rel=1e-5)
    before, after = model.count_interval(plain, 0.9), model.count_interval(calibrated, 0.9)
    assert after.sigma == pytest.approx(2.0 * before.sigma, rel=1e-5)
    half = np.zeros((48, 56), bool)
    half[:, :20] = True
    region = model.count_interval(calibrated, 0.9, half).count
    assert region == pytest.approx(calibrated[0][half].sum() / model.count_divisor, rel=1e-5)


def test_calibrated_mae_leaves_each_image_out_of_its_own_fit(rng):
    counts, pixels = rng.uniform(50, 150, 12), np.full(12, 4.0)
    truth = 1.2 * counts + 0.5 * pixels
    assert calibrated_mae(counts, pixels, truth) == pytest.approx(0.0, abs=1e-9)
    noisy = truth + rng.normal(0, 3, 12)
    design = np.column_stack([counts, pixels])
    in_sample = np.abs(design @ np.linalg.lstsq(design, noisy, rcond=None)[0] - noisy).mean()
    held_out = [  # by hand: fit on the other 11, correct the one left out
        abs(design[i] @ fit_count_calibration(*np.delete(np.stack([counts, pixels, noisy]), i, 1))
            - noisy[i])
        for i in range(12)
    ]  # fmt: skip
    assert calibrated_mae(counts, pixels, noisy) == pytest.approx(np.mean(held_out))
    assert np.mean(held_out) > in_sample  # an honest estimate is no better than the fit's own


def test_count_calibration_refuses_too_few_images_and_a_falling_fit():
    model = create_model("fcrn_a")
    maps = [np.full((1, 8, 8), value, np.float32) for value in (1.0, 2.0, 3.0, 4.0, 5.0)]
    with pytest.raises(ValueError, match="at least 5"):
        calibrate_counts(model, maps[:4], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="do not grow"):
        calibrate_counts(model, maps, [5, 4, 3, 2, 1])
    with pytest.raises(ValueError, match="count_gain must be positive"):
        create_model("fcrn_a", count_gain=0.0)

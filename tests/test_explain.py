"""Saliency (the gradient of the count, checked by finite differences) and feature inversion;
the explain commands on real files."""

import json

import numpy as np
import pytest
import tifffile
import torch
from imageio.v3 import imread, imwrite
from typer.testing import CliRunner

from celltally import create_model, load_model
from celltally.cli import app
from celltally.explain import invert, saliency


@pytest.mark.parametrize("arch", ["fcrn_a", "countception"])
def test_saliency_is_the_gradient_of_the_count(arch):
    torch.manual_seed(0)
    model = create_model(arch).eval()
    image = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    gradient = saliency(model, image)
    assert gradient.shape == (40, 48) and (gradient >= 0).all()
    # finite difference in the normalised input the gradient is taken in
    tensor = model.prepare(image)[None].double()
    model.double()
    y, x = 20 + model.pad, 30 + model.pad
    step = 1e-4

    def count(t):
        with torch.no_grad():
            return float(model.forward_padded(t)[0, 0].sum() / model.count_divisor)

    bumped = tensor.clone()
    bumped[0, 0, y, x] += step
    numeric = abs(count(bumped) - count(tensor)) / step
    assert gradient[20, 30] == pytest.approx(numeric, rel=1e-3, abs=1e-7)


def test_smoothgrad_is_smoother_than_a_single_gradient(samples_dir):
    model = load_model("fcrn_a_vgg_cells")
    image = imread(samples_dir / "101cell.png")
    plain, smooth = saliency(model, image), saliency(model, image, samples=8)

    def roughness(m):
        return np.abs(np.diff(m, axis=1)).mean() / m.mean()

    assert roughness(smooth) < roughness(plain)


def test_explain_saliency_writes_a_map_and_a_picture(samples_dir, tmp_path):
    runner = CliRunner()
    image = samples_dir / "101cell.png"
    result = runner.invoke(app, ["explain", "saliency", str(image), "--out", str(tmp_path),
                                 "--smooth", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert tifffile.imread(tmp_path / "101cell_saliency.tif").shape == (256, 256)
    assert imread(tmp_path / "101cell_saliency.png").ndim == 3
    (tmp_path / "bad.png").write_bytes(b"not an image")
    result = runner.invoke(app, ["explain", "saliency", str(tmp_path / "bad.png"), "--out",
                                 str(tmp_path / "x")])  # fmt: skip
    assert result.exit_code == 2 and "bad.png" in result.output
    assert not (tmp_path / "x").exists()


def test_inversion_descends_and_deep_layers_keep_less_of_the_image(samples_dir):
    """The FCRN paper's Figure 11: the first layer's features give the image back, deeper
    layers much less of it."""
    model = load_model("fcrn_a_vgg_cells")
    crop = imread(samples_dir / "101cell.png")[:64, :64]
    first = invert(model, crop, "layers.conv1", steps=150)
    deep = invert(model, crop, "layers.up6", steps=150)
    for inversion in (first, deep):
        objective = np.array(inversion.objective)
        assert objective[-1] < 0.2 * objective[0]
        assert np.mean(np.diff(objective) <= 0) >= 0.85  # bar momentum's overshoots
    assert first.correlation > 0.9 and deep.correlation < first.correlation - 0.3
    assert first.image.shape == (64, 64, 1)


def test_unknown_layers_are_named_with_examples():
    with pytest.raises(ValueError, match=r"no layer 'conv9'.*layers\.conv1"):
        invert(load_model("fcrn_a_vgg_cells"), np.ones((32, 32)), "conv9", steps=1)


def test_explain_layers_and_invert_from_the_command_line(samples_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["explain", "layers"])
    assert (
        result.exit_code == 0 and "layers.conv4" in result.output and "(512, 8, 8)" in result.output
    )
    crop = tmp_path / "crop.png"
    imwrite(crop, imread(samples_dir / "101cell.png")[:48, :48])
    layers = ["-l", "layers.conv1", "-l", "layers.conv2"]
    result = runner.invoke(app, ["explain", "invert", str(crop), *layers, "--steps", "20",
                                 "--out", str(tmp_path / "inv")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert imread(tmp_path / "inv" / "crop_inversion.png").ndim == 3
    report = json.loads((tmp_path / "inv" / "crop_inversion.json").read_text())
    assert (
        set(report) == {"layers.conv1", "layers.conv2"}
        and len(report["layers.conv1"]["objective"]) == 20
    )
    result = runner.invoke(
        app, ["explain", "invert", str(crop), "-l", "nope", "--out", str(tmp_path / "x")]
    )
    assert (
        result.exit_code == 2
        and "no layer 'nope'" in result.output
        and not (tmp_path / "x").exists()
    )

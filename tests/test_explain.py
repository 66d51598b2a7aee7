"""Saliency: the gradient of the count, checked by finite differences; the CLI on real files."""

import numpy as np
import pytest
import tifffile
import torch
from imageio.v3 import imread
from typer.testing import CliRunner

from celltally import create_model, load_model
from celltally.cli import app
from celltally.explain import saliency


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

import numpy as np
import pytest
import torch
from tests.conftest import textured

from celltally import create_model, list_models
from celltally.errors import InputError
from celltally.models.config import ModelConfig

# Counted by hand from the layer list in models/fcrn.py (weights + biases, 3 input channels).
FCRN_A_PARAMETERS = (
    3 * 9 * 32
    + 32
    + 32 * 9 * 64
    + 64
    + 64 * 9 * 128
    + 128
    + 128 * 9 * 512
    + 512
    + 512 * 9 * 128
    + 128
    + 128 * 9 * 64
    + 64
    + 64 * 9 * 32
    + 32
    + 32
    + 1
)
FCRN_B_PARAMETERS = (
    3 * 9 * 64
    + 64
    + 64 * 9 * 64
    + 64
    + 64 * 9 * 128
    + 128
    + 128 * 9 * 128
    + 128
    + 128 * 9 * 256
    + 256
    + 256 * 9 * 256
    + 256
    + 256 * 25 * 256
    + 256
    + 256 * 25 * 128
    + 128
    + 128
    + 1
)


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_both_fcrns():
    assert {"fcrn_a", "fcrn_b"} <= set(list_models())
    with pytest.raises(ValueError, match=r"unknown model 'nope'; available: .*fcrn_a"):
        create_model("nope")


def test_parameter_counts_match_the_papers():
    fcrn_a, fcrn_b = create_model("fcrn_a", in_channels=3), create_model("fcrn_b", in_channels=3)
    assert n_parameters(fcrn_a) == FCRN_A_PARAMETERS == 1_365_825  # paper: about 1.37 M
    assert n_parameters(fcrn_b) == FCRN_B_PARAMETERS == 3_603_521  # paper: about 3.6 M


@pytest.mark.parametrize("name", ["fcrn_a", "fcrn_b"])
@pytest.mark.parametrize("shape", [(16, 16), (17, 33), (101, 99), (64, 129)])
def test_any_image_size_gives_a_map_of_the_same_size(name, shape):
    model = create_model(name)
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    assert model.predict_map(image).shape == shape
    batch = torch.randn(2, 1, *shape)
    assert model.forward_padded(batch).shape == (2, 1, *shape)


def test_receptive_field_of_fcrn_a_encoder_is_38():
    """The paper's 38x38 field: the input pixels one deepest-layer unit depends on."""
    model = create_model("fcrn_a")
    encoder = model.layers[:7]  # conv1 .. conv4
    image = torch.randn(1, 1, 128, 128, requires_grad=True)
    encoder(image)[0, :, 8, 8].sum().backward()
    rows = torch.nonzero(image.grad[0, 0].abs().sum(dim=1)).flatten()
    assert int(rows.max() - rows.min() + 1) == 38


def test_orthogonal_initialisation():
    model = create_model("fcrn_a")
    weight = model.layers.conv4[0].weight.detach().reshape(512, -1)  # 512 x 1152: rows orthogonal
    gram = weight @ weight.T
    assert torch.allclose(gram, gram[0, 0] * torch.eye(512), atol=1e-4)
    assert not model.layers.conv4[0].bias.any()


def test_too_small_image_is_refused_with_the_minimum():
    with pytest.raises(
        InputError, match=r"tiny.png: image of 8x40 pixels is smaller than the 16x16"
    ):
        create_model("fcrn_a").predict_map(np.ones((8, 40)), source="tiny.png")


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown model config keys \['colour'\]"):
        ModelConfig.from_dict({"arch": "fcrn_a", "colour": 1})
    with pytest.raises(ValueError, match="in_channels must be 1 or 3"):
        create_model("fcrn_a", in_channels=2)


def test_count_is_the_map_sum_over_scale():
    model = create_model("fcrn_a", scale=50.0)
    image = textured(np.random.default_rng(3), (40, 40))
    assert model.count(image) == pytest.approx(
        float(model.predict_map(image).sum()) / 50.0, rel=1e-6
    )

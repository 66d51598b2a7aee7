"""Settings objects built from JSON values: names and types checked, with messages that help."""

from dataclasses import dataclass

import pytest

from celltally.config import from_dict, parse_assignments


@dataclass
class Settings:
    steps: int = 10
    rate: float = 0.1
    name: str = "a"
    size: tuple[int, int] = (1, 2)
    limit: float | None = None


def test_json_values_become_the_annotated_types():
    settings = from_dict(Settings, {"rate": 1, "size": [3, 4], "limit": 5})
    assert settings == Settings(rate=1.0, size=(3, 4), limit=5.0)
    assert isinstance(settings.rate, float) and isinstance(settings.limit, float)
    assert from_dict(Settings, {"limit": None}).limit is None


@pytest.mark.parametrize(
    "values, message",
    [
        ({"steps": 2.5}, "setting steps must be of type int, got 2.5"),
        ({"steps": True}, "setting steps must be of type int, got True"),
        ({"size": [1]}, "setting size must be a list of 2 (int, int), got [1]"),
        ({"limit": "x"}, "setting limit must be of type float or null, got 'x'"),
        (
            {"stepz": 3},
            "unknown settings ['stepz']; valid: ['limit', 'name', 'rate', 'size', 'steps']",
        ),
    ],
)
def test_wrong_values_say_what_is_expected(values, message):
    with pytest.raises(ValueError) as error:
        from_dict(Settings, values)
    assert str(error.value) == message


def test_assignments_parse_json_or_bare_words():
    values = parse_assignments(Settings, ["steps=3", "size=[5, 6]", "name=b", "limit=null"])
    assert values == {"steps": 3, "size": [5, 6], "name": "b", "limit": None}
    with pytest.raises(ValueError, match="expected NAME=VALUE with NAME one of"):
        parse_assignments(Settings, ["step=3"])


def test_the_recipe_applies_however_the_config_is_built():
    from dataclasses import replace

    from celltally.train import TrainConfig

    direct, read = TrainConfig(arch="countception"), TrainConfig.from_dict({"arch": "countception"})
    assert direct == read and (direct.loss, direct.lr, direct.batch_size) == ("l1", 5e-3, 4)
    assert TrainConfig(arch="countception", loss="mse").loss == "mse"  # what is given wins
    assert replace(direct, lr=0.1).loss == "l1"
    assert TrainConfig().loss == "mse"


def test_a_training_config_holds_its_models_architecture_given_flat():
    from dataclasses import fields, replace

    from celltally.models import Architecture
    from celltally.train import TrainConfig

    config = TrainConfig.from_dict({"arch": "fcrn_b", "in_channels": 3, "epochs": 2})
    assert config.model == Architecture(arch="fcrn_b", in_channels=3, batch_norm=True)
    assert not {f.name for f in fields(TrainConfig)} & {f.name for f in fields(Architecture)}
    assert TrainConfig.from_dict(config.to_dict()) == config  # the run's record reads back
    assert replace(config, epochs=5).model == config.model
    assert TrainConfig().model.batch_norm and not Architecture().batch_norm  # training's default
    with pytest.raises(ValueError, match="in_channels must be 1 or 3"):
        TrainConfig(in_channels=2)
    with pytest.raises(ValueError, match="must be of type int"):
        TrainConfig.from_dict({"in_channels": "three"})

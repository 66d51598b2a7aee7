"""The model registry: ``create_model("fcrn_a")`` builds a fresh, initialised model."""

from __future__ import annotations

from typing import Any

import torch

from celltally.models.base import CountingModel
from celltally.models.config import ModelConfig

_ARCHITECTURES: dict[str, type[CountingModel]] = {}


def register_model(name: str):
    """Class decorator adding an architecture to the registry under ``name``."""

    def add(cls: type[CountingModel]) -> type[CountingModel]:
        _ARCHITECTURES[name] = cls
        return cls

    return add


def list_models() -> list[str]:
    return sorted(_ARCHITECTURES)


def architecture(name: str) -> type[CountingModel]:
    """The model class registered as ``name``."""
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(list_models())}")
    return _ARCHITECTURES[name]


def create_model(name: str, **config: Any) -> CountingModel:
    """Build architecture ``name`` with ``config`` (fields of ``ModelConfig``) as overrides."""
    return build_model(ModelConfig(arch=name, **config))


def build_model(config: ModelConfig) -> CountingModel:
    """Build the architecture ``config.arch`` names, its weights channels-last (see
    ``CountingModel.forward_padded``)."""
    model = architecture(config.arch)(config)
    return model.to(memory_format=torch.channels_last)

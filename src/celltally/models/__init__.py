"""Counting models: one file per method, a registry, and checkpoint loading."""

from celltally.models import countception, fcrn, fpn_vgg11  # noqa: F401  (register them)
from celltally.models.base import CountingModel
from celltally.models.config import Architecture, ModelConfig
from celltally.models.io import (
    DEFAULT_MODEL,
    bundled_models,
    load_model,
    model_hash,
    read_config,
    resolve_model,
    save_model,
)
from celltally.models.registry import create_model, list_models, register_model

__all__ = [
    "DEFAULT_MODEL",
    "Architecture",
    "CountingModel",
    "ModelConfig",
    "bundled_models",
    "create_model",
    "list_models",
    "load_model",
    "model_hash",
    "read_config",
    "register_model",
    "resolve_model",
    "save_model",
]

"""Checkpoints: a folder with ``config.json`` (architecture, fitted state, defaults of the
per-call options, provenance: ``ModelConfig.to_sections``) and
``model.safetensors``. ``load_model`` rebuilds a model from such a folder, from a training run
folder (its ``model/`` holds the best checkpoint), or from the name of a bundled model."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from importlib import resources
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from celltally.errors import InputError
from celltally.io import read_json
from celltally.models.base import CountingModel
from celltally.models.config import ModelConfig
from celltally.models.registry import build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_MODEL = "generalist"


def versions() -> dict[str, str]:
    return {
        "celltally": version("celltally"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def save_model(model: CountingModel, folder: str | Path) -> Path:
    """Write ``model`` to ``folder`` atomically (a temporary folder renamed into place)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, staging / WEIGHTS_FILE)
    record = {**model.config.to_sections(), "versions": versions()}
    (staging / CONFIG_FILE).write_text(json.dumps(record, indent=2))
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old)
    else:
        staging.rename(folder)
    return folder


def load_model(
    path_or_name: str | Path = DEFAULT_MODEL, device: str | torch.device = "cpu"
) -> CountingModel:
    """Load a checkpoint folder, a training run folder or a bundled model by name (default:
    the default model)."""
    folder = resolve_model(path_or_name)
    model = build_model(read_config(folder))
    model.load_state_dict(load_file(folder / WEIGHTS_FILE))
    return model.to(device).eval()


def read_config(path_or_name: str | Path) -> ModelConfig:
    """The config of a checkpoint, run folder or bundled model, without building it."""
    folder = resolve_model(path_or_name)
    return ModelConfig.from_sections(read_json(folder / CONFIG_FILE))


def resolve_model(path_or_name: str | Path) -> Path:
    """The checkpoint folder behind a path or a bundled model's name."""
    path = Path(path_or_name)
    for candidate in (path, path / "model"):
        if (candidate / CONFIG_FILE).is_file() and (candidate / WEIGHTS_FILE).is_file():
            return candidate
    bundled = bundled_models()
    if str(path_or_name) in bundled:
        return bundled[str(path_or_name)]
    raise InputError(
        path_or_name,
        f"not a model: expected a folder with {CONFIG_FILE} and {WEIGHTS_FILE}, a training run"
        f" folder, or a bundled model ({', '.join(bundled) or 'none installed'})",
    )


def bundled_models() -> dict[str, Path]:
    """Models shipped inside the package, by name."""
    root = Path(str(resources.files("celltally") / "weights"))
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / CONFIG_FILE).is_file()}


def model_hash(path_or_name: str | Path) -> str:
    """SHA-256 of a checkpoint's weights file: which exact model produced a result."""
    digest = hashlib.sha256((resolve_model(path_or_name) / WEIGHTS_FILE).read_bytes())
    return digest.hexdigest()


def model_card(folder: Path) -> dict[str, str]:
    """What a bundled model is: its architecture, what it is for, the cell diameter it counts
    at, its training data with their licences and its test figures (from ``card.json``)."""
    config = read_config(folder)
    card_file = folder / "card.json"
    card = read_json(card_file) if card_file.is_file() else {}
    data = card.get("training_data", {})
    return {
        "architecture": config.arch,
        "for": card.get("purpose", ""),
        "cell diameter": "unknown" if config.diameter is None else f"{config.diameter:g} px",
        "trained on": "; ".join(f"{name} ({licence})" for name, licence in data.items()),
        "tested": card.get("test", ""),
    }

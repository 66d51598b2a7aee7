"""The resumable state of a run: ``last/`` holds the latest epoch's weights with the optimiser,
random state and history, from which an interrupted run goes on exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from celltally.io import atomic_write
from celltally.models import save_model
from celltally.models.io import WEIGHTS_FILE, read_config
from celltally.train.config import TrainConfig


@dataclass
class TrainState:
    """What ``last/state.pt`` holds besides the weights: enough to resume exactly."""

    epoch: int = 0
    best_mae: float = float("inf")
    elapsed: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def save_checkpoint(
    out: Path, model, optimizer, rng: np.random.Generator, state: TrainState, averaged
) -> None:
    """Save the resumable state: weights (``last/``) and optimiser + random state + history
    (+ weight average)."""
    save_model(model, out / "last")
    payload = {
        "optimizer": optimizer.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "state": asdict(state),
        "averaged": None if averaged is None else averaged.state_dict(),
    }
    atomic_write(out / "last" / "state.pt", lambda tmp: torch.save(payload, tmp))


def resume_state(
    out: Path, model, optimizer, rng: np.random.Generator, config: TrainConfig, averaged
) -> TrainState:
    state_file = out / "last" / "state.pt"
    if not state_file.exists():
        return TrainState()
    saved = read_config(out / "last")
    if saved.arch != config.model.arch:
        raise ValueError(
            f"{out} holds a {saved.arch} run; use another --out to train {config.model.arch}"
        )
    payload = torch.load(state_file, weights_only=False)
    model.load_state_dict(load_file(out / "last" / WEIGHTS_FILE))
    optimizer.load_state_dict(payload["optimizer"])
    rng.bit_generator.state = payload["numpy_rng"]
    torch.set_rng_state(payload["torch_rng"])
    if averaged is not None:
        if payload.get("averaged") is None:
            raise ValueError(f"{out} was trained without ema_decay; resume it with ema_decay=0")
        averaged.load_state_dict(payload["averaged"])
    return TrainState(**payload["state"])

"""One epoch of each kind of batch a model's training phases ask for (random patches, whole
images, the model's own foreground masks), and the optimiser step they share. Which loss a batch
is scored with is the model's (``CountingModel.training_loss``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from celltally.models import CountingModel
from celltally.models.phases import TrainingPhase
from celltally.train.config import TrainConfig
from celltally.train.patches import N_AUGMENTATIONS, PatchSampler, augment


class EpochData:
    """What the epochs draw their batches from: the patch sampler, and (once a phase asks for
    them) the model's own masks of the training images with their dots."""

    def __init__(self, sampler: PatchSampler, patch: int):
        self.sampler, self.patch = sampler, patch
        self.own_masks: list[np.ndarray] | None = None

    def prepare(self, model: CountingModel, phase: TrainingPhase) -> None:
        """Make the model's own masks of the training images the first time a phase needs
        them (in evaluation mode, before the epoch sets the model's training modes)."""
        if phase.batches == "own_masks" and self.own_masks is None:
            self.own_masks = own_masks(model, self.sampler.images)


def run_epoch(
    model: CountingModel, phase: TrainingPhase, data: EpochData, optimizer, config: TrainConfig
) -> float:
    """One epoch of ``phase``; its mean loss."""
    data.prepare(model, phase)
    model.start_epoch(phase)
    step = _Stepper(model, phase, optimizer, config)
    batches = _EPOCHS[phase.batches](model, data, config, step)
    model.end_epoch(phase, batches)
    return float(np.mean(step.losses))


def _patch_epoch(model, data: EpochData, config: TrainConfig, step) -> list[torch.Tensor]:
    for _ in range(config.steps_per_epoch):
        step(*data.sampler.patches(config.batch_size, data.patch))
    return []


def _whole_image_epoch(model, data: EpochData, config: TrainConfig, step) -> list[torch.Tensor]:
    """One pass over the whole training images in random order."""
    for index in data.sampler.rng.permutation(len(data.sampler.images)):
        step(*data.sampler.whole(int(index)))
    return []


def _own_mask_epoch(model, data: EpochData, config: TrainConfig, step) -> list[torch.Tensor]:
    """One pass over the model's own masks of the training images, ``batch_size`` at a time,
    each randomly turned. With ``counter_crop``, random crops instead, as many per mask as it
    has crops' worth of pixels, so an epoch still covers about the whole training set. Returns
    the batches, for ``CountingModel.end_epoch``."""
    masks, points, rng = data.own_masks, data.sampler.points, data.sampler.rng
    crop = config.counter_crop
    repeats = [1 if crop is None else max(1, round(mask.size / crop**2)) for mask in masks]
    order = [int(i) for i in rng.permutation(np.repeat(np.arange(len(masks)), repeats))]
    seen = []
    for start in range(0, len(order), config.batch_size):
        by_shape: dict[tuple, list[tuple[np.ndarray, int]]] = {}
        for index in order[start : start + config.batch_size]:
            mask, count = _counter_example(masks[index], points[index], rng, crop)
            by_shape.setdefault(mask.shape, []).append((mask, count))
        for batch in by_shape.values():
            inputs = torch.from_numpy(np.stack([mask for mask, _ in batch])[:, None])
            step(inputs, torch.tensor([float(count) for _, count in batch]))
            seen.append(inputs)
    return seen


_EPOCHS: dict[str, Callable] = {
    "patches": _patch_epoch,
    "whole": _whole_image_epoch,
    "own_masks": _own_mask_epoch,
}


@torch.no_grad()
def own_masks(model: CountingModel, images: list[np.ndarray]) -> list[np.ndarray]:
    """The model's own mask of every (whole, normalised) image, in evaluation mode."""
    model.eval()
    return [model.own_mask(model.prepare(image)[None])[0, 0].numpy() for image in images]


def _counter_example(
    mask: np.ndarray, points: np.ndarray, rng: np.random.Generator, crop: int | None
) -> tuple[np.ndarray, int]:
    """``mask`` randomly turned and, with ``crop``, a random crop of it (at most ``crop`` on a
    side); with the number of ``points`` inside (a dot belongs to its nearest pixel centre:
    the convention under which turns and flips move dots exactly with the pixels)."""
    turned, points = augment(mask[:, :, None], points, int(rng.integers(N_AUGMENTATIONS)))
    turned = turned[:, :, 0]
    if crop is None:
        return turned, len(points)
    height, width = min(crop, turned.shape[0]), min(crop, turned.shape[1])
    top = int(rng.integers(turned.shape[0] - height + 1))
    left = int(rng.integers(turned.shape[1] - width + 1))
    rows, cols = np.floor(points[:, 0] + 0.5), np.floor(points[:, 1] + 0.5)
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return np.ascontiguousarray(turned[top : top + height, left : left + width]), int(inside.sum())


class _Stepper:
    """One optimiser step per call on a batch of ``phase``, in bfloat16 autocast where the
    config says so; keeps the losses."""

    def __init__(self, model: CountingModel, phase: TrainingPhase, optimizer, config):
        self.model, self.phase, self.optimizer, self.config = model, phase, optimizer, config
        self.losses: list[float] = []

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        config = self.config
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            loss = self.model.training_loss(self.phase, inputs, targets, config.loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        self.optimizer.step()
        self.losses.append(loss.item())

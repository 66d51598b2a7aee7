"""Training batches: random, count-preserving augmentations of annotated images and patches.

An augmentation is one of the 8 flips / 90-degree rotations. It moves the image pixels and the
dots together; the target is then rendered afresh from the moved dots (never warped), so every
density target sums to exactly ``scale`` x its dots and every count map counts each dot exactly.
Rendered targets are cached per (image, augmentation): there are only 8 per image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from celltally import dihedral
from celltally.models.base import normalise

if TYPE_CHECKING:
    from celltally.models.base import CountingModel

N_AUGMENTATIONS = len(dihedral.ELEMENTS)


def augment(image: np.ndarray, points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply dihedral element ``k`` (``dihedral.ELEMENTS``: ``k % 4`` quarter turns, then a
    flip if ``k >= 4``) to an ``(H, W, C)`` image and its ``(N, 2)`` y,x points."""
    element = dihedral.ELEMENTS[k]
    moved = np.ascontiguousarray(dihedral.apply(image, element, axes=(0, 1)))
    return moved, dihedral.apply_to_points(points, image.shape[:2], element)


class PatchSampler:
    """Draws batches of normalised image patches and the model's targets for them.

    Images are padded as the model pads them (``model.pad``), and a patch's target is the piece
    of the whole image's target that the network computes from that patch (``model.shrink``
    smaller). ``per_patch``: normalise each patch by its own mean and std (the paper; only for
    unpadded models); otherwise by its whole image's, as at inference. With ``masks`` (one
    ``(H, W)`` foreground mask per image) the targets are the masks instead. ``weights``: each
    image's relative chance of giving a patch (default: all alike).
    """

    def __init__(
        self,
        images: list[np.ndarray],
        points: list[np.ndarray],
        model: CountingModel,
        rng: np.random.Generator,
        per_patch: bool = True,
        masks: list[np.ndarray] | None = None,
        weights: list[float] | None = None,
    ):
        if per_patch and model.pad:
            raise ValueError(
                f"{model.config.arch} pads whole normalised images; set per_patch_norm=false"
            )
        self.images, self.points, self.per_patch, self.masks = images, points, per_patch, masks
        self.model, self.rng = model, rng
        self.probabilities = None  # uniform over the images
        if weights is not None and len(set(weights)) > 1:
            self.probabilities = np.asarray(weights, float) / np.sum(weights)
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def augmented(self, index: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(padded image, target) of image ``index`` under augmentation ``k``."""
        key = (index, k)
        if key not in self._cache:
            image, points = augment(self.images[index], self.points[index], k)
            if self.masks is None:
                target = self.model.training_target(points, image.shape[:2])
            else:  # the foreground mask, moved with the image
                target = augment(self.masks[index][:, :, None], points, k)[0][:, :, 0]
                target = target.astype(np.float32)
            if not self.per_patch:
                tensor = self.model.network_input(torch.from_numpy(image.transpose(2, 0, 1).copy()))
                image = np.ascontiguousarray(tensor.numpy().transpose(1, 2, 0))
            self._cache[key] = (image, target)
        return self._cache[key]

    def patches(self, batch_size: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of random ``size`` x ``size`` input patches and their targets."""
        inputs, targets = [], []
        out = size - self.model.shrink
        for _ in range(batch_size):
            index = self._draw_image()
            image, target = self.augmented(index, int(self.rng.integers(N_AUGMENTATIONS)))
            top = int(self.rng.integers(target.shape[0] - out + 1))
            left = int(self.rng.integers(target.shape[1] - out + 1))
            inputs.append(image[top : top + size, left : left + size])
            targets.append(target[top : top + out, left : left + out])
        return _to_batch(inputs, targets, self.per_patch)

    def _draw_image(self) -> int:
        if self.probabilities is None:
            return int(self.rng.integers(len(self.images)))
        return int(self.rng.choice(len(self.images), p=self.probabilities))

    def whole(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``index`` whole, randomly augmented: a batch of one for fine-tuning."""
        image, target = self.augmented(index, int(self.rng.integers(N_AUGMENTATIONS)))
        return _to_batch([image], [target], self.per_patch)


def _to_batch(
    images: list[np.ndarray], targets: list[np.ndarray], normalise_each: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())
    targets_batch = torch.from_numpy(np.stack(targets)[:, None].copy())
    return (normalise(inputs) if normalise_each else inputs), targets_batch

"""Training batches: random, count-preserving augmentations of annotated images and patches.

An augmentation is one of the 8 flips / 90-degree rotations. It moves the image pixels and the
dots together; the density target is then rendered afresh from the moved dots (never warped),
so every target sums to exactly ``scale`` x its dots. Rendered targets are cached per
(image, augmentation): there are only 8 per image.
"""

from __future__ import annotations

import numpy as np
import torch

from celltally.models.base import normalise
from celltally.targets import density_map

N_AUGMENTATIONS = 8


def augment(image: np.ndarray, points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply dihedral element ``k`` (0-7: ``k % 4`` quarter turns, then a flip if ``k >= 4``)
    to an ``(H, W, C)`` image and its ``(N, 2)`` y,x points."""
    height, width = image.shape[:2]
    y, x = points[:, 0], points[:, 1]
    for _ in range(k % 4):  # np.rot90 turns counter-clockwise: (y, x) -> (W - 1 - x, y)
        image = np.rot90(image)
        y, x = width - 1 - x, y
        height, width = width, height
    if k >= 4:
        image = image[:, ::-1]
        x = width - 1 - x
    return np.ascontiguousarray(image), np.stack([y, x], axis=1)


class PatchSampler:
    """Draws batches of normalised image patches and their density targets.

    ``per_patch``: normalise each patch by its own mean and std (the paper); otherwise by its
    whole image's, as at inference.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        points: list[np.ndarray],
        sigma: float,
        scale: float,
        rng: np.random.Generator,
        per_patch: bool = True,
    ):
        self.images, self.points, self.per_patch = images, points, per_patch
        self.sigma, self.scale, self.rng = sigma, scale, rng
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def augmented(self, index: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(image, density) of image ``index`` under augmentation ``k``."""
        key = (index, k)
        if key not in self._cache:
            image, points = augment(self.images[index], self.points[index], k)
            if not self.per_patch:
                image = normalise(torch.from_numpy(image.transpose(2, 0, 1).copy())).numpy()
                image = np.ascontiguousarray(image.transpose(1, 2, 0))
            self._cache[key] = (image, density_map(points, image.shape[:2], self.sigma, self.scale))
        return self._cache[key]

    def patches(self, batch_size: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of random ``size`` x ``size`` patches and their density targets."""
        inputs, targets = [], []
        for _ in range(batch_size):
            index = int(self.rng.integers(len(self.images)))
            image, density = self.augmented(index, int(self.rng.integers(N_AUGMENTATIONS)))
            top = int(self.rng.integers(image.shape[0] - size + 1))
            left = int(self.rng.integers(image.shape[1] - size + 1))
            inputs.append(image[top : top + size, left : left + size])
            targets.append(density[top : top + size, left : left + size])
        return _to_batch(inputs, targets, self.per_patch)

    def whole(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``index`` whole, randomly augmented: a batch of one for fine-tuning."""
        image, density = self.augmented(index, int(self.rng.integers(N_AUGMENTATIONS)))
        return _to_batch([image], [density])


def _to_batch(
    images: list[np.ndarray], densities: list[np.ndarray], normalised: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())
    targets = torch.from_numpy(np.stack(densities)[:, None].copy())
    return (normalise(inputs) if normalised else inputs), targets

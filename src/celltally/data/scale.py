"""Rescaling images so their cells have the size a model was trained at, and mapping the
results back onto the image's own pixels.

An image of ``(H, W)`` pixels rescaled by ``factor`` has ``(h, w) = round(factor * (H, W))``
pixels (at least 1). Pixel centres map linearly between the two grids, edge to edge: image
coordinate ``y`` is ``(y + 0.5) * h / H - 0.5`` on the rescaled grid. Densities are resampled
and then renormalised so that their sum, the count, is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from skimage.transform import resize

from celltally.data.datasets import Sample
from celltally.data.images import pick_channel

# Rescaling by less than this relative amount is skipped: resampling blurs, and a network
# trained with scale jitter does not notice a few per cent.
SCALE_TOLERANCE = 0.05


def rescaled_shape(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    """The ``(h, w)`` of an image of ``shape`` rescaled by ``factor``."""
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def needs_rescaling(factor: float) -> bool:
    return abs(np.log(factor)) > np.log1p(SCALE_TOLERANCE)


def rescale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """``(H, W, C)`` ``image`` rescaled by ``factor`` (anti-aliased when shrinking), float32."""
    shape = rescaled_shape(image.shape, factor) + image.shape[2:]
    return resize(
        image, shape, order=1, anti_aliasing=factor < 1, preserve_range=True, mode="reflect"
    ).astype(np.float32)


def to_rescaled_points(
    points: np.ndarray, shape: tuple[int, ...], new_shape: tuple[int, ...]
) -> np.ndarray:
    """``(N, 2)`` y,x points of an image of ``shape`` on the pixels of its ``new_shape``
    rescaled copy."""
    ratio = np.array(new_shape[:2], float) / np.array(shape[:2], float)
    return (np.asarray(points, float).reshape(-1, 2) + 0.5) * ratio - 0.5


def restore_density(density: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A ``(h, w)`` density of a rescaled image on the original image's ``shape`` pixels,
    with the same sum (clipped at zero, which bilinear resampling of non-negative maps keeps)."""
    if density.shape == tuple(shape[:2]):
        return density
    restored = resize(
        density.astype(np.float64), shape[:2], order=1, anti_aliasing=True, mode="reflect"
    )
    restored = np.clip(restored, 0.0, None)
    total, kept = density.sum(dtype=np.float64), restored.sum()
    if kept > 0:
        restored *= total / kept
    return restored.astype(np.float32)


@dataclass(frozen=True)
class RescaledSample(Sample):
    """A sample seen as a model with a canonical cell diameter sees it: its channel picked as
    at inference (``pick_channel``), rescaled by ``factor`` with its dots, and padded at the
    bottom and right with its median colour (no cells) to at least ``min_side`` pixels."""

    base: Sample | None = field(default=None, repr=False, compare=False)
    factor: float = 1.0
    min_side: int = 0

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        image, points = self.base.load()
        image = pick_channel(image, source=self.base.image_path)[0]
        scaled = rescale_image(image, self.factor) if needs_rescaling(self.factor) else image
        points = to_rescaled_points(points, image.shape, scaled.shape)
        return _padded(scaled, self.min_side), points


def rescaled(
    sample: Sample, name: str, factor: float, weight: float, min_side: int = 0
) -> RescaledSample:
    """``sample`` as a ``RescaledSample`` called ``name``."""
    return RescaledSample(
        name,
        sample.image_path,
        sample.read_points,
        sample.group,
        None,
        weight,
        base=sample,
        factor=factor,
        min_side=min_side,
    )


def _padded(image: np.ndarray, min_side: int) -> np.ndarray:
    rows, cols = max(0, min_side - image.shape[0]), max(0, min_side - image.shape[1])
    if not rows and not cols:
        return image
    fill = np.median(image.reshape(-1, image.shape[2]), axis=0)
    padded = np.empty((image.shape[0] + rows, image.shape[1] + cols, image.shape[2]), np.float32)
    padded[...] = fill
    padded[: image.shape[0], : image.shape[1]] = image
    return padded

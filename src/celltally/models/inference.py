"""The network pass over a whole image: tiles with context for large images, and test-time
augmentation over the 8 flips and quarter turns. Below ``celltally.models.base``, which calls it.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from celltally.models.base import CountingModel


def predict_tiled(
    model: CountingModel, image: torch.Tensor, tile_size: int, margin: int
) -> np.ndarray:
    """Predict the ``(out_channels, H, W)`` output of a normalised, padded ``(C, H, W)`` image in
    tiles, in bounded memory.

    Each tile's core is predicted from a window with ``margin`` pixels of context on every side
    and only the core is kept. Cores and windows start on multiples of the model's stride, so the
    network pools over the same pixel grid as in a whole-image pass; with a margin wider than
    the network's reach, every kept pixel equals the whole-image prediction. Output pixel
    ``(i, j)`` is computed from input pixels from ``(i, j)`` on (the output is ``model.shrink``
    smaller than the input).
    """
    stride, shrink = model.stride, model.shrink
    tile = max(stride, tile_size // stride * stride)
    margin = -(-margin // stride) * stride
    height, width = image.shape[-2] - shrink, image.shape[-1] - shrink
    if height <= tile + 2 * margin and width <= tile + 2 * margin:
        return _run(model, image)
    output = np.empty((model.out_channels, height, width), dtype=np.float32)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            y0, x0 = max(top - margin, 0), max(left - margin, 0)
            y1, x1 = min(bottom + margin, height), min(right + margin, width)
            prediction = _run(model, image[:, y0 : y1 + shrink, x0 : x1 + shrink])
            output[:, top:bottom, left:right] = prediction[
                :, top - y0 : bottom - y0, left - x0 : right - x0
            ]
    return output


# The 8 flips and quarter turns of the square, as (transpose, mirror rows, mirror columns).
DIHEDRAL = list(itertools.product((False, True), repeat=3))


def predict_dihedral(
    model: CountingModel, image: torch.Tensor, tile_size: int, margin: int
) -> np.ndarray:
    """Test-time augmentation: the mean ``predict_tiled`` output over the 8 flips and quarter
    turns of ``image``, each mapped back onto the image by ``to_image_frame``. Counts are the
    mean of the 8 counts; centres are found on the mean map."""
    total = sum(
        to_image_frame(model, predict_tiled(model, moved(image, t), tile_size, margin), t)
        for t in DIHEDRAL
    )
    return (total / np.float32(len(DIHEDRAL))).astype(np.float32)


def moved(image: torch.Tensor, transform: tuple[bool, bool, bool]) -> torch.Tensor:
    """``(..., H, W)`` ``image`` transposed and/or mirrored as ``transform`` says."""
    transpose, mirror_rows, mirror_cols = transform
    image = image.transpose(-2, -1) if transpose else image
    axes = [axis for axis, mirror in ((-2, mirror_rows), (-1, mirror_cols)) if mirror]
    return image.flip(axes) if axes else image


def to_image_frame(
    model: CountingModel, output: np.ndarray, transform: tuple[bool, bool, bool]
) -> np.ndarray:
    """Map the ``(C, h, w)`` output of the ``moved`` image back onto the original image: undo
    the mirrors, then the transpose. A mirrored axis is also rolled back by ``model.flip_shift``
    pixels. Count-ception's map pixel ``i`` counts the 32 image rows ending at row ``i``; in the
    mirrored image they end at row ``H + 30 - i``, one before the reversed index ``H + 31 - i``
    of its ``H + 32`` rows. The row rolled in from the other end is the window past the image,
    always empty."""
    transpose, mirror_rows, mirror_cols = transform
    for axis, mirror in ((-2, mirror_rows), (-1, mirror_cols)):
        if mirror:
            output = np.roll(np.flip(output, axis), -model.flip_shift, axis)
    return output.swapaxes(-2, -1) if transpose else output


def _run(model: CountingModel, image: torch.Tensor) -> np.ndarray:
    return model.forward_padded(image[None])[0].float().cpu().numpy()

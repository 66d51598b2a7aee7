"""The network pass over a whole image: tiles with context for large images, and test-time
augmentation over the 8 flips and quarter turns. Below ``celltally.models.base``, which calls it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from celltally import dihedral

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


def predict_dihedral(
    model: CountingModel, image: torch.Tensor, tile_size: int, margin: int
) -> np.ndarray:
    """Test-time augmentation: the mean ``predict_tiled`` output over the 8 flips and quarter
    turns of ``image``, each mapped back onto the image (``dihedral.undo``, rolled by the
    model's ``flip_shift``). Counts are the mean of the 8 counts; centres are found on the mean
    map."""
    total = sum(
        dihedral.undo(
            predict_tiled(model, dihedral.apply(image, element), tile_size, margin),
            element,
            model.flip_shift,
        )
        for element in dihedral.ELEMENTS
    )
    return (total / np.float32(len(dihedral.ELEMENTS))).astype(np.float32)


def _run(model: CountingModel, image: torch.Tensor) -> np.ndarray:
    return model.forward_padded(image[None])[0].float().cpu().numpy()

"""The 8 flips and quarter turns of the square (the dihedral group), shared by training
augmentation (images with their dots) and test-time augmentation (network outputs mapped back
onto the image).

An element is ``(transpose, mirror rows, mirror columns)``, applied in that order.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Element = tuple[bool, bool, bool]
Array = TypeVar("Array", np.ndarray, torch.Tensor)

# Ordered as training draws them: k = 0-3 quarter turns counter-clockwise (``np.rot90``), then
# the same four followed by a mirror of the columns.
ELEMENTS: tuple[Element, ...] = (
    (False, False, False),
    (True, True, False),
    (False, True, True),
    (True, False, True),
    (False, False, True),
    (True, True, True),
    (False, True, False),
    (True, False, False),
)


def apply(array: Array, element: Element, axes: tuple[int, int] = (-2, -1)) -> Array:
    """``array`` (NumPy or torch) transposed and/or mirrored over its ``axes`` (rows, columns)."""
    transpose, mirror_rows, mirror_cols = element
    if transpose:
        array = array.swapaxes(*axes)
    mirrors = (mirror_rows, mirror_cols)
    mirrored = [axis for axis, mirror in zip(axes, mirrors, strict=True) if mirror]
    if not mirrored:
        return array
    return np.flip(array, mirrored) if isinstance(array, np.ndarray) else array.flip(mirrored)


def apply_to_points(points: np.ndarray, shape: tuple[int, int], element: Element) -> np.ndarray:
    """``(N, 2)`` y,x ``points`` of an image of ``shape`` (H, W), moved with the image."""
    transpose, mirror_rows, mirror_cols = element
    y, x = points[:, 0], points[:, 1]
    height, width = shape
    if transpose:
        y, x, height, width = x, y, width, height
    if mirror_rows:
        y = height - 1 - y
    if mirror_cols:
        x = width - 1 - x
    return np.stack([y, x], axis=1)


def undo(output: np.ndarray, element: Element, shift: int = 0) -> np.ndarray:
    """Map ``(C, h, w)`` ``output`` computed on an image moved by ``element`` back onto the
    image: undo the mirrors, each also rolled back by ``shift`` pixels (for maps whose pixel
    ``i`` stands for a window ending at ``i``, see ``CountingModel.flip_shift``), then the
    transpose."""
    transpose, mirror_rows, mirror_cols = element
    for axis, mirror in ((-2, mirror_rows), (-1, mirror_cols)):
        if mirror:
            output = np.roll(np.flip(output, axis), -shift, axis)
    return output.swapaxes(-2, -1) if transpose else output

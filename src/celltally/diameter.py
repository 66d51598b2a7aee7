"""Cell size: how big the cells of an image are, so that an image can be rescaled to the cell
diameter a model was trained at (issue 41).

The size of a cell is its equivalent diameter ``sqrt(4 A / pi)`` (the diameter of the disc of the
same area ``A``), in pixels; an image's cell diameter is the median over its cells.
"""

from __future__ import annotations

import numpy as np

MIN_INTERIOR = 5  # whole instances needed before those cut by the border are left out


def mask_diameter(labels: np.ndarray) -> float:
    """The median equivalent diameter of the instances of an ``(H, W)`` label image (0 is
    background), in pixels; NaN if it holds no instance.

    Instances touching the image border are cut, so their area understates the cell's: they are
    left out when at least ``MIN_INTERIOR`` other instances remain (else every instance counts,
    since a few cut cells say more than none).
    """
    labels = np.asarray(labels)
    areas = np.bincount(labels.ravel())
    ids = np.flatnonzero(areas[1:]) + 1
    if ids.size == 0:
        return float("nan")
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    interior = np.setdiff1d(ids, border)
    kept = interior if interior.size >= MIN_INTERIOR else ids
    return float(np.median(np.sqrt(4.0 * areas[kept] / np.pi)))

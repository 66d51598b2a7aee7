"""Dot annotations: reading them from dot-map images and CSV files, writing them as CSV.

Coordinate convention, used everywhere in celltally: a point is ``(y, x)`` in pixels, ``y`` the
row and ``x`` the column, with the centre of the top-left pixel at ``(0, 0)``. A point is inside an
``H x W`` image when ``-0.5 <= y < H - 0.5`` and ``-0.5 <= x < W - 0.5``. Point arrays have shape
``(N, 2)`` and dtype float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from celltally.data.images import read_image
from celltally.errors import InputError
from celltally.io import atomic_write


def points_from_dot_pixels(dots: np.ndarray) -> np.ndarray:
    """One point per nonzero pixel (VGG cells: first channel; MBM: the 1-bit map)."""
    mask = _first_channel(dots) > 0
    return np.argwhere(mask).astype(np.float64)


def points_from_dot_blobs(dots: np.ndarray, threshold: float) -> np.ndarray:
    """One point per 8-connected blob above ``threshold`` (lossy JPEG dot maps), at its centroid."""
    mask = _first_channel(dots) > threshold
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros((0, 2))
    return np.asarray(ndimage.center_of_mass(mask, labels, range(1, n + 1)), dtype=np.float64)


def read_dot_image(path: str | Path, threshold: float | None = None) -> np.ndarray:
    """Read a dot-map image: every nonzero pixel, or with ``threshold``, every blob above it."""
    dots = read_image(path)
    return (
        points_from_dot_pixels(dots)
        if threshold is None
        else points_from_dot_blobs(dots, threshold)
    )


def read_points_csv(path: str | Path) -> np.ndarray:
    """Read points from a CSV with ``y,x`` columns, ImageJ ``X,Y`` columns or napari ``axis-*``.

    Column names are matched case-insensitively; ``x`` is always the column index. For napari
    files the last two ``axis-`` columns are (row, column).
    """
    path = Path(path)
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return np.zeros((0, 2))
    except Exception as error:
        raise InputError(path, f"cannot be read as CSV ({error})") from None
    columns = {str(c).strip().lower(): c for c in table.columns}
    axes = sorted((c for c in columns if c.startswith("axis-")), key=lambda c: int(c[5:]))
    if "y" in columns and "x" in columns:
        y, x = columns["y"], columns["x"]
    elif len(axes) >= 2:
        y, x = columns[axes[-2]], columns[axes[-1]]
    else:
        raise InputError(
            path,
            f"no point columns in {list(table.columns)};"
            " expected y,x or X,Y or napari axis-0,axis-1",
        )
    try:
        points = table[[y, x]].to_numpy(dtype=np.float64)
    except ValueError:
        raise InputError(path, "point coordinates must be numbers") from None
    if not np.isfinite(points).all():
        raise InputError(path, "point coordinates contain NaN or missing values")
    return points.reshape(-1, 2)


def write_points_csv(path: str | Path, points: np.ndarray) -> None:
    """Write points as a ``y,x`` CSV, atomically (no half-written file on interruption)."""
    table = pd.DataFrame(np.asarray(points, dtype=np.float64).reshape(-1, 2), columns=["y", "x"])
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.2f"))


def check_points_inside(points: np.ndarray, shape: tuple[int, int], source: str | Path) -> None:
    """Raise a one-line error naming ``source`` if a point lies outside an image of ``shape``."""
    height, width = shape
    outside = (points[:, 0] < -0.5) | (points[:, 0] >= height - 0.5)
    outside |= (points[:, 1] < -0.5) | (points[:, 1] >= width - 0.5)
    if outside.any():
        y, x = points[np.argmax(outside)]
        raise InputError(
            source,
            f"{int(outside.sum())} point(s) outside the {height}x{width} image,"
            f" e.g. y={y:g}, x={x:g}"
            " (points are y,x with the top-left pixel centre at 0,0)",
        )


def _first_channel(image: np.ndarray) -> np.ndarray:
    return image[:, :, 0] if image.ndim == 3 else image

"""Training targets made from dot annotations.

``density_map`` is the FCRN target (Xie et al. 2016): a Gaussian per dot, scaled by ``scale``.
Each dot's Gaussian is cut at the image border and renormalised there, so the map sums to
``scale * len(points)`` exactly, also for dots on the border. Because the Gaussian is isotropic
and separable, the map is ``scale * Gy.T @ Gx`` with one normalised 1D profile per dot and axis.

``count_map`` is the Count-ception target (Cohen et al. 2017): for an image zero-padded by
``window`` pixels, the number of dots in every ``window`` x ``window`` window. ``window_sums`` is
that box filter, and ``window_sums_adjoint`` its transpose (used to deconvolve a count map).
"""

from __future__ import annotations

import numpy as np

DEFAULT_SIGMA = 2.0  # pixels; our reading of the FCRN paper for the cell data
DEFAULT_SCALE = 100.0  # Xie et al. 2016 multiply the density by 100 to ease training
WINDOW = 32  # Count-ception's receptive window, in pixels
_CHUNK = 4096  # dots per matrix product, so huge point sets stay in bounded memory


def density_map(
    points: np.ndarray,
    shape: tuple[int, int],
    sigma: float = DEFAULT_SIGMA,
    scale: float = DEFAULT_SCALE,
) -> np.ndarray:
    """Render ``points`` (``(N, 2)``, y,x) as a float32 density map of ``shape`` summing to
    ``scale * N``."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    height, width = shape
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    density = np.zeros((height, width), dtype=np.float64)
    for start in range(0, len(points), _CHUNK):
        chunk = points[start : start + _CHUNK]
        profile_y = _normalised_profiles(chunk[:, 0], height, sigma)
        profile_x = _normalised_profiles(chunk[:, 1], width, sigma)
        density += profile_y.T @ profile_x
    return (density * scale).astype(np.float32)


def _normalised_profiles(centres: np.ndarray, length: int, sigma: float) -> np.ndarray:
    grid = np.arange(length, dtype=np.float64)
    profiles = np.exp(-0.5 * ((grid[None, :] - centres[:, None]) / sigma) ** 2)
    return profiles / profiles.sum(axis=1, keepdims=True)


def count_map(points: np.ndarray, shape: tuple[int, int], window: int = WINDOW) -> np.ndarray:
    """The number of dots in each ``window`` x ``window`` window of the zero-padded image.

    Output pixel ``(i, j)`` of the ``(H + window, W + window)`` map counts the dots in image rows
    ``i - window + 1 .. i`` and columns ``j - window + 1 .. j``, so each dot is counted in exactly
    ``window**2`` output pixels, and in ``(window / s)**2`` of the pixels ``[::s, ::s]`` for any
    stride ``s`` that divides ``window``. Dots are binned to the pixel that contains them.
    """
    height, width = shape
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    rows = np.clip(np.floor(points[:, 0]).astype(int), 0, height - 1)
    cols = np.clip(np.floor(points[:, 1]).astype(int), 0, width - 1)
    dots = np.zeros((height, width), dtype=np.float64)
    np.add.at(dots, (rows, cols), 1.0)
    return window_sums(dots, window).astype(np.float32)


def window_sums(values: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """``(H, W)`` -> ``(H + window, W + window)``: sums over the window ending at each pixel."""
    for axis in (0, 1):
        values = _sums_along(values, window, axis, grow=True)
    return values


def window_sums_adjoint(values: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """The transpose of ``window_sums``: ``(H + window, W + window)`` -> ``(H, W)``, each pixel
    the sum over the windows that contain it."""
    for axis in (0, 1):
        values = _sums_along(values, window, axis, grow=False)
    return values


def _sums_along(values: np.ndarray, window: int, axis: int, grow: bool) -> np.ndarray:
    """Running sums of ``window`` values along ``axis``, from a cumulative sum: with ``grow``,
    ``out[i] = sum(v[i - window + 1 .. i])`` (zeros outside) for ``n + window`` outputs, else
    ``out[a] = sum(v[a .. a + window - 1])`` for the ``n - window`` starts inside."""
    values = np.moveaxis(values, axis, 0)
    if grow:
        zeros = np.zeros((window, *values.shape[1:]), dtype=values.dtype)
        values = np.concatenate([zeros, values, zeros])
    cumulative = np.concatenate([np.zeros_like(values[:1]), np.cumsum(values, axis=0)])
    if grow:  # padded index p = i + window: out[i] = sum(padded[i + 1 .. i + window])
        summed = cumulative[window + 1 :] - cumulative[1 : len(values) + 1 - window]
    else:
        summed = cumulative[window : len(values)] - cumulative[: len(values) - window]
    return np.moveaxis(summed, 0, axis)

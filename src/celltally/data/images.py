"""Reading microscopy images into float arrays, with the checks that keep bad input out.

Every image leaves this module as ``float32`` with shape ``(H, W, C)``. Multi-page TIFFs are
read as a list of such pages, each counted on its own.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
from skimage.transform import downscale_local_mean

from celltally.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")


def read_pages(path: str | Path) -> list[np.ndarray]:
    """Read every 2D image (page) in a file, each as float32 ``(H, W, C)``.

    A TIFF of shape ``(P, H, W)`` or ``(P, H, W, C)`` gives ``P`` pages; a trailing axis of 3 or 4
    is colour (RGB/RGBA). Other formats give one page.
    """
    path = Path(path)
    raw = _read_raw(path)
    if path.suffix.lower() not in TIFF_SUFFIXES or raw.ndim - _has_colour(raw) <= 2:
        return [as_image(raw, path)]
    if raw.ndim - _has_colour(raw) > 3:
        raise InputError(
            path, f"unsupported image shape {raw.shape}; expected pages of (H, W) or (H, W, 3-4)"
        )
    return [as_image(page, path) for page in raw]


def read_image(path: str | Path) -> np.ndarray:
    """Read a single-page image as float32 ``(H, W, C)``; a multi-page file is an error."""
    pages = read_pages(path)
    if len(pages) != 1:
        raise InputError(path, f"holds {len(pages)} pages; expected one image")
    return pages[0]


def as_image(array: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """Check an array is a usable image and return it as float32 ``(H, W, C)``."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(
            source, f"unsupported pixel type {array.dtype}; expected integers or floats"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise InputError(
            source,
            f"unsupported image shape {array.shape}; expected (H, W) or (H, W, 1-4 channels)",
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(source, f"empty image of shape {array.shape}")
    image = array.astype(np.float32)
    if not np.isfinite(image).all():
        raise InputError(source, "contains NaN or infinite pixel values")
    return image


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Convert ``(H, W, C)`` to the ``channels`` a model takes (1: mean of colours; 3: RGB)."""
    if image.shape[2] in (2, 4):  # grey+alpha or RGBA: the last channel is alpha
        image = image[:, :, :-1]
    if channels == 1:
        return image.mean(axis=2, keepdims=True)
    if channels == 3:
        return image if image.shape[2] == 3 else np.repeat(image[:, :, :1], 3, axis=2)
    raise ValueError(f"models take 1 or 3 channels, not {channels}")


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` (``(H, W)`` or ``(H, W, C)``) reduced ``factor`` times: the mean of each
    ``factor`` x ``factor`` block, the last row and column of blocks completed by repeating the
    edge pixels (``ceil(H / factor)`` x ``ceil(W / factor)`` pixels out)."""
    if factor == 1:
        return image
    height, width = image.shape[:2]
    pad = [(0, -height % factor), (0, -width % factor)] + [(0, 0)] * (image.ndim - 2)
    blocks = (factor, factor) + (1,) * (image.ndim - 2)
    return downscale_local_mean(np.pad(image, pad, mode="edge"), blocks).astype(np.float32)


def upsample(
    grid_map: np.ndarray, factor: int, shape: tuple[int, int] | None = None, share: bool = True
) -> np.ndarray:
    """A map of a ``downsample``d image back on the image's pixels, cropped to ``shape``
    (default: the whole blocks). ``share``: each grid pixel's value is shared equally by the
    ``factor`` x ``factor`` pixels it covers, so sums are kept (counts); else it is repeated."""
    if factor == 1:
        return grid_map
    spread = grid_map.repeat(factor, axis=0).repeat(factor, axis=1)
    spread = spread / np.float32(factor**2) if share else spread
    return spread if shape is None else spread[: shape[0], : shape[1]]


def to_grid_points(points: np.ndarray, factor: int) -> np.ndarray:
    """``(N, 2)`` pixel coordinates of an image in those of its ``downsample``d grid (pixel
    centre ``factor * i + (factor - 1) / 2`` becomes ``i``)."""
    return (points + 0.5) / factor - 0.5


def to_image_points(points: np.ndarray, factor: int) -> np.ndarray:
    """The inverse of ``to_grid_points``."""
    return (points + 0.5) * factor - 0.5


def find_images(paths: list[str]) -> list[Path]:
    """Expand files, folders (their images, sorted) and glob patterns into image files."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            matches = sorted(Path().glob(given)) if not path.is_absolute() else _abs_glob(path)
            if not matches:
                raise InputError(given, "no such file, folder or glob match")
            found += [p for p in matches if p.is_file()]
    return found


def _abs_glob(path: Path) -> list[Path]:
    anchor = Path(path.anchor)
    return sorted(anchor.glob(str(path.relative_to(anchor))))


def _read_raw(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(path, "no such file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(
            path, f"unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)}"
        )
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            return tifffile.imread(path)
        return iio.imread(path)
    except Exception as error:  # the readers raise many types for corrupt files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(path, f"cannot be read as an image ({reason})") from None


def _has_colour(array: np.ndarray) -> int:
    return int(array.ndim >= 3 and array.shape[-1] in (3, 4))

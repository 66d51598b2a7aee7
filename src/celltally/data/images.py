"""Reading microscopy images into float arrays, with the checks that keep bad input out.

Every image leaves this module as ``float32`` with shape ``(H, W, C)``, channels last.

TIFF axes: a TIFF's first series has axes (``tifffile``'s letters, from ImageJ hyperstacks,
OME-TIFF, ``imwrite(..., metadata={'axes': 'CYX'})`` or the colour tags). ``C`` (separate
channels, e.g. stains) and ``S`` (samples: the colours of an RGB picture, channels otherwise)
become the channel axis; ``Y`` and ``X`` the image; every other axis (``Z``, ``T``, ``I``...)
gives pages, flattened in order, each counted on its own. A TIFF without axes metadata (unknown
``Q`` axes) is read by its shape: a trailing axis of 1-4 is colour (3-4: RGB/RGBA) or channels
(1-2), and at most one leading axis is pages. So an unlabelled ``(3, H, W)`` stack is three
pages, not three channels: a leading size of 2-4 could be either, and pages are what a plain
``imwrite(..., photometric='minisblack')`` of a stack means (and what this module always read);
label the axes to have channels. A planar RGB TIFF (``SYX``) is one colour picture.

Channel choice (``pick_channel``): with ``channel=N`` that channel alone is counted. By default
(``channel=None``) grey stays grey and alpha is dropped; an image whose channels are (nearly)
equal becomes grey; if only one channel holds anything, that one is counted; a 3-channel image on
a bright background (histology, brightfield) keeps its colours; any other multi-channel image
(dark background: a fluorescence composite of separate stains) is never averaged: the nuclear
channel by convention is counted (blue for RGB, channel 0 for separate channels), with a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
from skimage.transform import downscale_local_mean

from celltally.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
CHANNEL_AXES = "CS"  # tifffile's channel and (colour) sample axes
# samples of other TIFFs (grey with extra samples...) are separate channels
COLOUR_PHOTOMETRICS = (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)

# pick_channel's thresholds, as fractions of the image's own range (see there)
EMPTY_CHANNEL = 0.05
EQUAL_CHANNELS = 0.05
BRIGHT_BACKGROUND = 0.5
RGB_NUCLEAR_CHANNEL = 2  # blue: composites show DAPI / Hoechst in blue


@dataclass(frozen=True)
class ImageStack:
    """The pages of an image file, each float32 ``(H, W, C)``, and how their channels came."""

    pages: list[np.ndarray]
    axes: str  # the file's axes, e.g. 'TCYX'; guessed from the shape where it has none ('YXS')
    separate_channels: bool  # True: separate images (a C axis: stains); False: grey/RGB(A) colour


def read_stack(path: str | Path) -> ImageStack:
    """Read every page of an image file, with its axes (see the module docstring for the rules).

    Raises ``InputError`` naming the file if it cannot be read or its shape makes no image."""
    path = Path(path)
    data, axes = _read_raw(path)
    if not axes:  # PNG, JPEG, BMP: one picture, grey or colour
        return ImageStack([as_image(data, path)], "YX" if data.ndim == 2 else "YXS", False)
    if "Q" in axes:
        axes = _guess_axes(data.shape, path)
    return ImageStack(_split_pages(data, axes, path), axes, "C" in axes)


def read_pages(path: str | Path) -> list[np.ndarray]:
    """Read every 2D image (page) in a file, each as float32 ``(H, W, C)``; see ``read_stack``."""
    return read_stack(path).pages


def read_image(path: str | Path) -> np.ndarray:
    """Read a single-page image as float32 ``(H, W, C)``; a multi-page file is an error."""
    pages = read_pages(path)
    if len(pages) != 1:
        raise InputError(path, f"holds {len(pages)} pages; expected one image")
    return pages[0]


def as_image(array: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """Check an array is a usable image and return it as float32 ``(H, W, C)``."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise InputError(
            source,
            f"unsupported image shape {array.shape}; expected (H, W) or (H, W, 1-4 channels)",
        )
    return _as_float32(array, source)


def pick_channel(
    image: np.ndarray,
    channel: int | None = None,
    *,
    separate_channels: bool = False,
    source: str | Path | None = None,
) -> tuple[np.ndarray, str | None]:
    """The part of a float32 ``(H, W, C)`` page to count, and a one-line note for the user (or
    None). ``separate_channels``: as ``ImageStack`` says; if False, a last channel of 2 or 4 is
    alpha. ``source`` names the file in errors.

    ``channel=N`` (0-based) counts that channel alone, ``(H, W, 1)``; out of range is an
    ``InputError`` saying how many channels there are. ``channel=None``, the default, decides
    from the image, in this order:

    - grey stays grey; grey+alpha and RGBA lose their alpha;
    - only one channel holds anything: that channel (VGG cells: cells only in blue);
    - channels (nearly) equal: their mean, grey;
    - a bright background and 3 channels (histology, brightfield): kept in colour, which the
      models read;
    - otherwise (a dark background: a fluorescence composite of separate stains, which averaging
      would blur together): the channel holding the nuclei by convention, blue for RGB (DAPI,
      Hoechst) and channel 0 for separate channels, or the first non-empty one if that one is
      empty, with a note naming it and ``--channel``.

    The tests are relative to the image's own range, its 0.1-99.9th percentiles (robust to hot
    pixels, and the same for 8-bit, 16-bit and float): a channel is empty if its own range is
    under 5% of the image's; channels are nearly equal if the 99.9th percentile of each pixel's
    max - min over channels is under 5% of it (a grey picture saved as RGB, JPEG noise and all);
    the background is bright if the median pixel (mean of its channels) is above the middle of
    the range: most pixels are bright (histology, brightfield: 0.6-0.85 of the range; dark
    fluorescence backgrounds lie near 0).
    """
    if channel is not None:
        return _one_channel(image, channel, source), None
    if not separate_channels and image.shape[2] in (2, 4):
        image = image[:, :, :-1]
    if image.shape[2] == 1:
        return image, None
    return _default_channel(image, separate_channels)


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


def _read_raw(path: Path) -> tuple[np.ndarray, str]:
    """The pixels of a file and, for a TIFF, the axes of its first series ('' for others), with
    ``S`` (samples) only for colour: the samples of a grey TIFF are separate channels (``C``)."""
    if not path.is_file():
        raise InputError(path, "no such file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(
            path, f"unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)}"
        )
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                colour = series.keyframe.photometric in COLOUR_PHOTOMETRICS
                return series.asarray(), series.axes if colour else series.axes.replace("S", "C")
        return iio.imread(path), ""
    except Exception as error:  # the readers raise many types for corrupt files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(path, f"cannot be read as an image ({reason})") from None


def _guess_axes(shape: tuple[int, ...], path: Path) -> str:
    """Axes of a TIFF without axes metadata, from its shape (see the module docstring)."""
    channels = "" if len(shape) < 3 or shape[-1] > 4 else "S" if shape[-1] >= 3 else "C"
    pages = len(shape) - 2 - len(channels)
    if pages not in (0, 1):
        raise InputError(
            path,
            f"unsupported image shape {shape}; expected pages of (H, W) or (H, W, 1-4 channels),"
            " or axes metadata (ImageJ, OME-TIFF) naming more dimensions",
        )
    return "Q" * pages + "YX" + channels


def _split_pages(data: np.ndarray, axes: str, path: Path) -> list[np.ndarray]:
    """``data`` with these axes as float32 ``(H, W, C)`` pages: channel axes last, others pages."""
    if "Y" not in axes or "X" not in axes:
        raise InputError(path, f"unsupported image shape {data.shape} with axes {axes}")
    pages = [i for i, axis in enumerate(axes) if axis not in "YX" + CHANNEL_AXES]
    channels = [i for i, axis in enumerate(axes) if axis in CHANNEL_AXES]
    plane = [axes.index("Y"), axes.index("X")]
    shape = (
        math.prod(data.shape[i] for i in pages),
        *(data.shape[i] for i in plane),
        math.prod(data.shape[i] for i in channels),
    )
    stack = data.transpose(pages + plane + channels).reshape(shape)
    return [_as_float32(page, path) for page in stack]


def _as_float32(array: np.ndarray, source: str | Path | None) -> np.ndarray:
    """A checked ``(H, W, C)`` array as float32."""
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(
            source, f"unsupported pixel type {array.dtype}; expected integers or floats"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(source, f"empty image of shape {array.shape}")
    image = array.astype(np.float32)
    if not np.isfinite(image).all():
        raise InputError(source, "contains NaN or infinite pixel values")
    return image


def _one_channel(image: np.ndarray, channel: int, source: str | Path | None) -> np.ndarray:
    count = image.shape[2]
    if not 0 <= channel < count:
        raise InputError(
            source,
            f"has no channel {channel}: it has {count} channel(s), numbered 0 to {count - 1}",
        )
    return image[:, :, channel : channel + 1]


def _default_channel(image: np.ndarray, separate: bool) -> tuple[np.ndarray, str | None]:
    """``pick_channel``'s default for an image of 2 or more channels (alpha already dropped)."""
    sample = _sample(image)
    low, high = np.percentile(sample, [0.1, 99.9])
    span = high - low
    lows, highs = np.percentile(sample, [0.1, 99.9], axis=(0, 1))
    filled = [int(c) for c in np.flatnonzero(highs - lows > EMPTY_CHANNEL * span)]
    if len(filled) == 1:
        return _one_channel(image, filled[0], None), None
    spread = np.percentile(np.ptp(sample, axis=2), 99.9)
    if not filled or spread <= EQUAL_CHANNELS * span:
        return image.mean(axis=2, keepdims=True), None
    bright = np.median(sample.mean(axis=2)) > low + BRIGHT_BACKGROUND * span
    if bright and image.shape[2] == 3:
        return image, None
    return _nuclear_channel(image, filled, separate, bright)


def _nuclear_channel(
    image: np.ndarray, filled: list[int], separate: bool, bright: bool
) -> tuple[np.ndarray, str]:
    """The channel holding the nuclei by convention (if it holds anything), and a note."""
    count = image.shape[2]
    rgb = not separate and count == 3
    channel = RGB_NUCLEAR_CHANNEL if rgb else 0
    why = "where nuclei are by convention"
    if channel not in filled:
        channel, why = filled[0], "the first one holding anything"
    name = f"channel {channel}" + (f" ({('red', 'green', 'blue')[channel]})" if rgb else "")
    kind = "colour composite" if rgb else f"{count}-channel image"
    note = (
        f"{'bright' if bright else 'dark'}-background {kind}: counted {name}, {why};"
        " --channel N (0-based) counts another"
    )
    return _one_channel(image, channel, None), note


def _sample(image: np.ndarray, pixels: int = 2**20) -> np.ndarray:
    """Every n-th row and column of a large image: about ``pixels`` pixels, for statistics."""
    step = max(1, math.isqrt(image.shape[0] * image.shape[1] // pixels))
    return image[::step, ::step]

"""Annotated data sets: the three public sets in the data path, and users' own folders.

A data set is a sorted list of ``Sample``. Images are read lazily, so listing a set is cheap.
Formats:

- ``vgg_cells``: ``NNNcell.png`` + ``NNNdots.png`` (one red pixel per cell).
- ``mbm``: ``BM_..._00K.png`` + ``BM_..._dots_00K.png`` (1-bit, one pixel per nucleus).
- ``adipocyte``: ``images/<name>.jpeg`` + ``annotations/<name>.jpeg`` (lossy red dots: red > 100,
  8-connected blobs).
- ``points``: a folder of images, each with ``<stem>.csv`` of points beside it (and, for models
  trained on masks, ``masks/<stem>.png``); an optional ``groups.csv`` (columns ``image,group``)
  names images that must stay on one side of a split, e.g. fields of view of one slide.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from celltally.data.images import IMAGE_SUFFIXES, read_image
from celltally.data.points import check_points_inside, read_dot_image, read_points_csv
from celltally.errors import InputError

FORMATS = ("vgg_cells", "mbm", "adipocyte", "points")
ADIPOCYTE_DOT_THRESHOLD = 100.0


def default_channels(fmt: str) -> int:
    """Input channels a network should see: 3 for colour histology, 1 for fluorescence."""
    return 3 if fmt in ("mbm", "adipocyte") else 1


def default_data_root() -> Path:
    """The folder holding the public sets: ``$CELLTALLY_DATA`` or ``../shared/data``."""
    return Path(os.environ.get("CELLTALLY_DATA", "../shared/data"))


@dataclass(frozen=True)
class Sample:
    """One annotated image. ``group`` ties images that must stay on one side of a split;
    ``weight`` is the image's relative share of the training patches (a mix of sets of
    different sizes is balanced by it)."""

    name: str
    image_path: Path
    read_points: Callable[[], np.ndarray] = field(repr=False, compare=False)
    group: str = ""
    mask_path: Path | None = None
    weight: float = 1.0

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(image, points)``, checking that every point lies inside the image."""
        image = read_image(self.image_path)
        points = self.read_points()
        check_points_inside(points, image.shape[:2], self.image_path)
        return image, points

    def load_mask(self) -> np.ndarray:
        """The ``(H, W)`` boolean foreground mask (non-zero pixels of ``mask_path``)."""
        if self.mask_path is None or not self.mask_path.is_file():
            raise InputError(
                self.image_path,
                "no foreground mask: models trained on masks need masks/<name>.png beside the"
                " images (celltally synth writes them)",
            )
        mask = read_image(self.mask_path)
        return mask.reshape(mask.shape[0], mask.shape[1], -1).max(axis=2) > 0


def load_dataset(root: str | Path, fmt: str) -> list[Sample]:
    """List the samples of the data set at ``root`` in format ``fmt`` (see module docs)."""
    readers = {"vgg_cells": _vgg_cells, "mbm": _mbm, "adipocyte": _adipocyte, "points": _points}
    if fmt not in readers:
        raise InputError(root, f"unknown data format '{fmt}'; choose one of {', '.join(FORMATS)}")
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "no such data folder")
    samples = readers[fmt](root)
    if not samples:
        raise InputError(root, f"no annotated images found for format '{fmt}'")
    return sorted(samples, key=lambda s: s.name)


def resolve_data(data: str | Path, fmt: str | None) -> tuple[Path, str]:
    """Find a data folder: a path, or the name of a public set under the data root."""
    path = Path(data)
    if not path.exists() and str(data) in FORMATS:
        path = default_data_root() / str(data)
    return path, fmt or (path.name if path.name in FORMATS else "points")


def _vgg_cells(root: Path) -> list[Sample]:
    return [
        Sample(p.name[:3], p, _dot_pixels(root / f"{p.name[:3]}dots.png"))
        for p in root.glob("[0-9][0-9][0-9]cell.png")
    ]


def _mbm(root: Path) -> list[Sample]:
    samples = []
    for dots in root.glob("*_dots_*.png"):
        image = dots.with_name(dots.name.replace("_dots_", "_"))
        samples.append(Sample(image.stem, image, _dot_pixels(dots), group=image.stem[:-4]))
    return samples


def _adipocyte(root: Path) -> list[Sample]:
    def reader(path: Path) -> Callable[[], np.ndarray]:
        return lambda: read_dot_image(path, threshold=ADIPOCYTE_DOT_THRESHOLD)

    return [
        Sample(p.stem, p, reader(root / "annotations" / p.name))
        for p in (root / "images").glob("*.jp*g")
    ]


def _points(root: Path) -> list[Sample]:
    groups = _groups(root / "groups.csv")
    samples = []
    for image in root.iterdir():
        if image.suffix.lower() in IMAGE_SUFFIXES and image.with_suffix(".csv").exists():
            csv = image.with_suffix(".csv")
            mask = root / "masks" / f"{image.stem}.png"
            samples.append(
                Sample(
                    image.stem,
                    image,
                    lambda csv=csv: read_points_csv(csv),
                    mask_path=mask,
                    group=groups.get(image.stem, ""),
                )
            )
    return samples


def _groups(path: Path) -> dict[str, str]:
    """``groups.csv``'s image stem -> group (none if there is no such file)."""
    if not path.exists():
        return {}
    try:
        table = pd.read_csv(path, dtype=str)
        stems = [Path(image).stem for image in table["image"]]
        return dict(zip(stems, table["group"], strict=True))
    except (KeyError, ValueError, pd.errors.ParserError) as error:
        raise InputError(path, f"needs columns image,group ({error})") from None


def _dot_pixels(path: Path) -> Callable[[], np.ndarray]:
    return lambda: read_dot_image(path)

"""Counting inside regions of an image: boxes, polygons and GeoJSON shapes.

A region is a boolean mask of the image's pixels; its count is the sum of the model's density
(cells per pixel, summing to the image's count) over the mask, so regions that tile the image
have counts that add up to the image's count. Coordinates follow celltally's ``(y, x)``
convention on the command line; GeoJSON (QuPath, napari exports) lists ``[x, y]`` pairs, as
its specification says, in pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from skimage.draw import polygon2mask
from skimage.transform import resize

from celltally.errors import InputError

if TYPE_CHECKING:
    from celltally.models.base import CountingModel
    from celltally.models.prediction import NetworkPass


@dataclass(frozen=True)
class Region:
    name: str
    mask: np.ndarray  # (H, W) bool


def box_region(spec: str, shape: tuple[int, int], name: str | None = None) -> Region:
    """``"y0,x0,y1,x1"``: rows y0 to y1 and columns x0 to x1, the ends excluded."""
    values = _numbers(spec, 4, "a box is y0,x0,y1,x1")
    y0, x0, y1, x1 = (round(v) for v in values)
    if not (0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]):
        raise ValueError(f"box {spec} is empty or outside the {shape[0]}x{shape[1]} image")
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return Region(name or f"box {spec}", mask)


def polygon_region(spec: str, shape: tuple[int, int], name: str | None = None) -> Region:
    """``"y,x;y,x;y,x;..."``: the pixels whose centres lie inside the polygon."""
    vertices = [_numbers(vertex, 2, "a polygon is y,x;y,x;y,x...") for vertex in spec.split(";")]
    return _polygon(np.array(vertices), shape, name or f"polygon {spec}")


def regions_from(
    boxes: list[str], polygons: list[str], geojson: str | Path | None, shape: tuple[int, int]
) -> list[Region]:
    """The regions of ``box_region`` and ``polygon_region`` specs and a GeoJSON file."""
    regions = [box_region(box, shape) for box in boxes]
    regions += [polygon_region(polygon, shape) for polygon in polygons]
    return regions + (geojson_regions(geojson, shape) if geojson else [])


def geojson_regions(path: str | Path, shape: tuple[int, int]) -> list[Region]:
    """The Polygon and MultiPolygon features of a GeoJSON file (``[x, y]`` pixel coordinates;
    holes are subtracted), named by their ``name`` property, or numbered."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(path, f"cannot read GeoJSON: {error}") from None
    features = data.get("features", [data] if data.get("type") == "Feature" else [])
    regions = []
    for index, feature in enumerate(features):
        geometry = feature.get("geometry") or {}
        polygons = {"Polygon": [geometry.get("coordinates")], "MultiPolygon": geometry.get(
            "coordinates")}.get(geometry.get("type"))  # fmt: skip
        if not polygons:
            continue
        name = (feature.get("properties") or {}).get("name") or f"region {index + 1}"
        mask = np.zeros(shape, bool)
        for rings in polygons:
            outer, *holes = (np.asarray(ring, float)[:, ::-1] for ring in rings)  # x,y -> y,x
            mask |= _polygon(outer, shape, name).mask
            for hole in holes:
                mask &= ~_polygon(hole, shape, name).mask
        regions.append(Region(str(name), mask))
    if not regions:
        raise InputError(path, "no Polygon or MultiPolygon features in this GeoJSON")
    return regions


def _polygon(vertices: np.ndarray, shape: tuple[int, int], name: str) -> Region:
    if len(vertices) < 3:
        raise ValueError(f"{name}: a polygon needs at least 3 vertices")
    return Region(name, polygon2mask(shape, vertices))


def _numbers(text: str, count: int, form: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise ValueError(f"cannot read '{text}': {form}")
    return values


def region_counts(
    model: CountingModel,
    found: NetworkPass,
    density: np.ndarray,
    regions: list[Region],
    level: float | None = None,
) -> list[dict]:
    """One row per region: its area, its count (the sum of the image's ``density``, from
    ``model.read_out(found)``) and, with ``level``, its calibrated interval, read from the
    network's output over the region's pixels on the rescaled image the network saw."""
    rows = []
    for region in regions:
        if region.mask.shape != density.shape:
            raise ValueError(f"{region.name}: mask of {region.mask.shape}, image {density.shape}")
        row = {
            "region": region.name,
            "area_px": int(region.mask.sum()),
            "count": float(density[region.mask].sum(dtype=np.float64)),
        }
        if level is not None:
            bounds = model.count_interval(found.output, level, on_network(region.mask, found))
            row |= {"ci_low": bounds.low, "ci_high": bounds.high, "std": bounds.std}
        rows.append(row)
    return rows


def on_network(mask: np.ndarray, found: NetworkPass) -> np.ndarray:
    """A region's mask on the pixels of the rescaled image the network saw."""
    if found.scale == 1.0:
        return mask
    return resize(mask.astype(np.float32), found.network_shape, order=1) >= 0.5

"""SIMCEP-style synthetic fluorescence microscopy with exact dots, masks and counts.

The model follows Lehmussola et al., "Computational framework for simulating fluorescence
microscope images with cell populations" (IEEE TMI 2007), which also made the VGG cells and
BBBC005 sets:

1. *Cell population.* The count is drawn (normal, uniform or Poisson by density); cells are placed
   uniformly or, with probability ``cluster_prob``, next to an earlier cell, overlapping it by up
   to ``overlap`` of their summed radii: this makes the clumps of real cultures.
2. *Shapes.* Each cell body is an ellipse (random elongation and orientation) whose boundary is
   deformed by random low-order harmonics; the nucleus is the same shape shrunk by
   ``nucleus_ratio``. Intensity inside is a dome (from flat to the projected thickness of a
   sphere) times a smooth random texture, times a per-cell brightness.
3. *Measurement.* Focal blur (per image, plus a per-cell defocus; where cells overlap the
   brighter shows), background autofluorescence that varies smoothly and has a fine texture,
   uneven (vignetted) illumination, Poisson photon noise and Gaussian read noise, quantised to
   8 or 16 bits.

Every image comes with its dots (one centre per cell, ``y,x``), an instance-label mask and a
foreground mask. Pixels where cells overlap belong to the cell whose centre is relatively nearer,
and every centre pixel belongs to its own cell, so dots, counts and mask instances agree exactly.
Image ``i`` of a set with seed ``s`` depends only on ``(s, i)``: sets are reproducible byte for
byte, whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile
from imageio import v3 as iio
from scipy import ndimage

from celltally.config import from_dict
from celltally.data.datasets import Sample
from celltally.data.images import as_image
from celltally.data.points import atomic_write, write_points_csv
from celltally.errors import InputError

N_HARMONICS = 3  # boundary deformation: harmonics 2..4 of the angle
DEFOCUS_LEVELS = 4  # per-cell defocus is rendered in this many blur layers
MIN_SPACING = 1.5  # pixels between cell centres, > sqrt(2)
# Settings varied per image by ``jitter``: the look, never the cell size, which a model needs
# to stay fixed to count overlapping cells by their area.
JITTERED = (
    "intensity", "dome", "texture", "background", "autofluorescence",
    "background_texture", "halo", "halo_blur", "cell_blur",
)  # fmt: skip


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of a simulated image set. Intensities are fractions of the full scale.

    Attributes:
        height, width: image size in pixels.
        count_range: fewest and most cells per image.
        count_mean, count_std: counts are normal(mean, std) redrawn until inside
            ``count_range``; with ``count_mean`` null they are uniform over ``count_range``.
        density: cells per 100x100 pixels; if set, counts are Poisson(density x area) instead.
        radius, radius_std: mean cell-body radius in pixels, and its relative spread.
        elongation: largest relative difference of the ellipse axes from ``radius``.
        irregularity: amplitude of the random boundary harmonics (0 = smooth ellipses).
        overlap: how much two cells may overlap, as a fraction of their summed radii.
        cluster_prob: probability that a cell is placed next to an earlier one.
        nucleus_ratio: nucleus size relative to the cell body.
        dome: how much brighter a cell's centre is than its rim: intensity goes as
            (1 - r^2)^(dome / 2) of the relative radius r; 1 = the thickness of a sphere,
            0 = flat.
        intensity, intensity_std: mean brightness of a cell and its relative spread.
        nucleus_intensity: brightness of nuclei (their own channel).
        texture, texture_scale: relative amplitude and correlation length (pixels) of the
            textured intensity inside cells.
        background: mean background (autofluorescence) level.
        autofluorescence: relative amplitude of its smooth spatial variation.
        background_texture: relative amplitude of its fine texture (the blotches of real
            backgrounds; correlation length ``texture_scale``).
        illumination: fraction of light lost at the farthest corner (vignetting).
        blur: range of the per-image focal blur (Gaussian sigma, pixels).
        focus: range of BBBC005-style focus levels F; if set, the blur sigma is F / 4 (a
            Gaussian of size F at +- 2 sigma) instead of ``blur``.
        cell_blur: largest extra defocus of single cells (sigma, pixels).
        halo, halo_blur: fraction of the cells' light scattered into a wide halo, and its width
            (sigma, pixels): the long tails of a real point-spread function.
        photons: photon count at full scale (Poisson noise; null: none).
        read_noise: standard deviation of the Gaussian sensor noise.
        bleed: fraction of the signal that shows in the channels without a stain.
        jitter: per-image relative spread of the appearance (domain randomisation): each image
            multiplies the settings in ``JITTERED`` and ``blur`` by its own random factors
            exp(jitter x normal), so a model trained on the images does not rely on one look.
        bit_depth: 8 (PNG output) or 16 (TIFF output).
        channels: channels of the output image (1, or 3 for RGB).
        body_channel, nuclei_channel: the channel showing cell bodies / nuclei (null: not
            shown). Masks and labels outline the bodies if shown, otherwise the nuclei.
    """

    height: int = 256
    width: int = 256
    count_range: tuple[int, int] = (1, 1000)
    count_mean: float | None = 100.0
    count_std: float = 30.0
    density: float | None = None
    radius: float = 5.0
    radius_std: float = 0.15
    elongation: float = 0.2
    irregularity: float = 0.08
    overlap: float = 0.4
    cluster_prob: float = 0.3
    nucleus_ratio: float = 0.5
    dome: float = 1.0
    intensity: float = 0.6
    intensity_std: float = 0.3
    nucleus_intensity: float = 0.8
    texture: float = 0.2
    texture_scale: float = 1.5
    background: float = 0.1
    autofluorescence: float = 0.2
    background_texture: float = 0.0
    illumination: float = 0.3
    blur: tuple[float, float] = (1.0, 1.5)
    focus: tuple[int, int] | None = None
    cell_blur: float = 1.0
    halo: float = 0.0
    halo_blur: float = 8.0
    photons: float | None = 300.0
    read_noise: float = 0.01
    bleed: float = 0.0
    jitter: float = 0.0
    bit_depth: int = 8
    channels: int = 1
    body_channel: int | None = 0
    nuclei_channel: int | None = None

    def __post_init__(self) -> None:
        low, high = self.count_range
        checks = {
            "height and width must be at least 16 pixels": min(self.height, self.width) >= 16,
            "count_range must be (low, high) with 0 <= low <= high": 0 <= low <= high,
            "radius must be at least 1 pixel": self.radius >= 1,
            "overlap must be in [0, 1)": 0 <= self.overlap < 1,
            "cluster_prob must be in [0, 1]": 0 <= self.cluster_prob <= 1,
            "nucleus_ratio must be in (0, 1]": 0 < self.nucleus_ratio <= 1,
            "dome must be in [0, 2]": 0 <= self.dome <= 2,
            "jitter must be in [0, 1]": 0 <= self.jitter <= 1,
            "blur must be (low, high) with 0 <= low <= high": 0 <= self.blur[0] <= self.blur[1],
            "focus must be (low, high) with 1 <= low <= high": self.focus is None
            or 1 <= self.focus[0] <= self.focus[1],
            "bit_depth must be 8 or 16": self.bit_depth in (8, 16),
            "channels must be 1 or 3": self.channels in (1, 3),
            "body_channel / nuclei_channel must name an output channel, and one must be set": (
                {self.body_channel, self.nuclei_channel} - {None}
                and all(
                    c is None or 0 <= c < self.channels
                    for c in (self.body_channel, self.nuclei_channel)
                )
            ),
        }
        for problem, ok in checks.items():
            if not ok:
                raise ValueError(f"synthetic image settings: {problem}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SynthConfig:
        """Build from a dict (JSON settings), checking names and types."""
        return from_dict(cls, values)


PRESETS: dict[str, dict[str, Any]] = {
    # Like VGG cells: 256x256 RGB, cells in the blue channel, about 174 +- 64 cells, blurred.
    "vgg_cells": dict(
        count_range=(50, 350),
        count_mean=174.0,
        count_std=64.0,
        radius=5.8,
        radius_std=0.1,
        overlap=0.9,
        cluster_prob=0.1,
        irregularity=0.04,
        elongation=0.15,
        dome=0.7,
        intensity=1.31,
        intensity_std=0.16,
        texture=0.1,
        texture_scale=1.0,
        background=0.13,
        autofluorescence=0.15,
        background_texture=0.09,
        illumination=0.5,
        blur=(1.1, 1.7),
        cell_blur=1.5,
        halo=0.5,
        halo_blur=30.0,
        photons=8000.0,
        read_noise=0.001,
        bleed=0.006,
        jitter=0.15,
        channels=3,
        body_channel=2,
    ),
    # Like BBBC005: 696x520, 1-100 cells, cell-body (green) and nuclei (blue) stains, focus
    # blur F = 1..48, clustering probability 0.25.
    "bbbc005": dict(
        height=520,
        width=696,
        count_range=(1, 100),
        count_mean=None,
        radius=14.0,
        radius_std=0.2,
        elongation=0.3,
        irregularity=0.12,
        overlap=0.3,
        cluster_prob=0.25,
        nucleus_ratio=0.45,
        intensity=0.35,
        texture=0.35,
        texture_scale=2.5,
        background=0.03,
        focus=(1, 48),
        cell_blur=0.0,
        channels=3,
        body_channel=1,
        nuclei_channel=2,
    ),
    # Fluorescent nuclei at a chosen density (set ``density``), 16-bit, one channel.
    "nuclei": dict(
        height=512,
        width=512,
        count_range=(0, 100_000),
        density=3.0,
        radius=6.0,
        nucleus_ratio=1.0,
        body_channel=None,
        nuclei_channel=0,
        bit_depth=16,
    ),
}


def preset(name: str, **overrides: Any) -> SynthConfig:
    """The settings of a preset (see ``PRESETS``), with some overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic preset '{name}'; choose one of {', '.join(PRESETS)}")
    return SynthConfig.from_dict({**PRESETS[name], **overrides})


@dataclass
class SynthImage:
    """One simulated image and its ground truth."""

    image: np.ndarray  # (H, W, C) uint8 or uint16
    points: np.ndarray  # (N, 2) cell centres, y,x
    labels: np.ndarray  # (H, W) instance ids 1..N, 0 = background
    blur: float  # the per-image focal blur sigma

    @property
    def count(self) -> int:
        return len(self.points)

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0


def generate(config: SynthConfig, seed: int, index: int) -> SynthImage:
    """Simulate image ``index`` of the set with ``seed`` (it depends on nothing else)."""
    rng = np.random.default_rng([seed, index])
    if config.jitter:
        config = _jittered(config, rng)
    count = _draw_count(config, rng)
    radii = config.radius * np.clip(1 + config.radius_std * rng.standard_normal(count), 0.5, 2)
    centres = _place_cells(config, radii, rng)
    shapes = _random_shapes(config, radii, rng)
    brightness = np.clip(1 + config.intensity_std * rng.standard_normal(count), 0.15, None)
    defocus = rng.integers(0, DEFOCUS_LEVELS if config.cell_blur > 0 else 1, count)
    blur = _draw_blur(config, rng)
    signal = np.zeros((config.height, config.width, config.channels), np.float32)
    stains = (
        (config.body_channel, 1.0, config.intensity),
        (config.nuclei_channel, config.nucleus_ratio, config.nucleus_intensity),
    )
    labels = None
    for channel, scale, level in stains:
        if channel is None:
            continue
        cells = _cell_pixels(config, centres, shapes, scale)
        if labels is None:  # bodies if shown, else nuclei
            labels = _label_cells(config, cells, centres)
        layers = _render_cells(config, cells, level * brightness, defocus)
        texture = np.clip(1 + config.texture * _fine_field(config, rng), 0, None)
        signal[:, :, channel] = _blur_layers(config, layers * texture, blur)
    image = _measure(config, signal, rng)
    return SynthImage(image, np.round(centres, 2), labels, blur)


def _jittered(config: SynthConfig, rng: np.random.Generator) -> SynthConfig:
    """This image's own appearance settings (see ``SynthConfig.jitter``)."""
    factors = np.exp(config.jitter * rng.standard_normal(len(JITTERED) + 1))
    values = {name: getattr(config, name) * f for name, f in zip(JITTERED, factors, strict=False)}
    values["dome"] = min(values["dome"], 2.0)
    values["halo"] = min(values["halo"], 0.9)
    blur = tuple(float(b * factors[-1]) for b in config.blur)
    return dataclasses.replace(config, jitter=0.0, blur=blur, **values)


def _draw_count(config: SynthConfig, rng: np.random.Generator) -> int:
    low, high = config.count_range
    if config.density is not None:
        expected = config.density * config.height * config.width / 1e4
        return int(np.clip(rng.poisson(expected), low, high))
    if config.count_mean is None:
        return int(rng.integers(low, high + 1))
    for _ in range(1000):
        count = round(rng.normal(config.count_mean, config.count_std))
        if low <= count <= high:
            return count
    raise ValueError("count_mean / count_std put almost no counts inside count_range")


def _place_cells(config: SynthConfig, radii: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Centres: uniform, or (with ``cluster_prob``) touching / overlapping an earlier cell."""
    upper = np.array([config.height - 1, config.width - 1], float)
    centres = np.empty((len(radii), 2))
    for i, radius in enumerate(radii):
        for _ in range(200):
            if i and rng.random() < config.cluster_prob:
                j = rng.integers(i)
                gap = (radius + radii[j]) * rng.uniform(1 - config.overlap, 1)
                angle = rng.uniform(0, 2 * np.pi)
                centre = centres[j] + gap * np.array([np.sin(angle), np.cos(angle)])
            else:
                centre = rng.uniform(0, 1, 2) * upper
            if _free(centre, centres[:i], radius + radii[:i], config.overlap, upper):
                break
        else:
            raise ValueError(
                f"cannot place {len(radii)} cells of radius {config.radius} in a"
                f" {config.height}x{config.width} image: lower the count or radius, or raise"
                " overlap"
            )
        centres[i] = centre
    return centres


def _free(centre, others, reach, overlap: float, upper: np.ndarray) -> bool:
    """Inside the image, and no nearer to another cell than the overlap allows, nor than
    ``MIN_SPACING``: centres that far apart always round to different pixels."""
    if (centre < 0).any() or (centre > upper).any():
        return False
    distance = np.hypot(*(others - centre).T)
    return bool((distance >= np.maximum((1 - overlap) * reach, MIN_SPACING)).all())


@dataclass
class _Shapes:
    """Cell outlines: ellipses (axes, angle) deformed by boundary harmonics 2..4."""

    axes: np.ndarray  # (N, 2) semi-axes in pixels
    angle: np.ndarray  # (N,)
    amplitudes: np.ndarray  # (N, N_HARMONICS) relative
    phases: np.ndarray  # (N, N_HARMONICS)


def _random_shapes(config: SynthConfig, radii: np.ndarray, rng: np.random.Generator) -> _Shapes:
    n = len(radii)
    stretch = rng.uniform(0, config.elongation, n)
    amplitudes = config.irregularity * rng.standard_normal((n, N_HARMONICS)) / np.arange(1, 4)
    return _Shapes(
        radii[:, None] * np.stack([1 + stretch, 1 - stretch], axis=1),
        rng.uniform(0, np.pi, n),
        np.clip(amplitudes, -0.3, 0.3),
        rng.uniform(0, 2 * np.pi, (n, N_HARMONICS)),
    )


@dataclass
class _CellPixels:
    """The pixels inside the cells, one entry per (cell, pixel) pair."""

    cell: np.ndarray  # index of the cell
    pixel: np.ndarray  # flat pixel index
    relative: np.ndarray  # distance from the cell centre relative to its boundary, < 1


def _cell_pixels(
    config: SynthConfig, centres: np.ndarray, shapes: _Shapes, scale: float
) -> _CellPixels:
    """Every cell's pixels at once: a square window around each centre, all cells stacked."""
    reach = scale * shapes.axes[:, 0] * (1 + np.abs(shapes.amplitudes).sum(axis=1))
    half = int(np.ceil(reach.max(initial=0))) + 1
    offsets = np.arange(-half, half + 1)
    rows = np.floor(centres[:, 0])[:, None, None].astype(int) + offsets[None, :, None]
    cols = np.floor(centres[:, 1])[:, None, None].astype(int) + offsets[None, None, :]
    dy, dx = rows - centres[:, 0, None, None], cols - centres[:, 1, None, None]
    theta = np.arctan2(dy, dx)
    a, b = shapes.axes[:, 0, None, None], shapes.axes[:, 1, None, None]
    turn = theta - shapes.angle[:, None, None]
    boundary = a * b / np.hypot(b * np.cos(turn), a * np.sin(turn))
    for k in range(N_HARMONICS):
        wobble = np.cos((k + 2) * theta + shapes.phases[:, k, None, None])
        boundary *= 1 + shapes.amplitudes[:, k, None, None] * wobble
    relative = np.hypot(dy, dx) / (scale * boundary)
    inside = (relative < 1) & (rows >= 0) & (rows < config.height)
    inside &= (cols >= 0) & (cols < config.width)
    cell = np.broadcast_to(np.arange(len(centres))[:, None, None], inside.shape)[inside]
    pixel = (rows * config.width + cols)[inside]
    return _CellPixels(cell, pixel, relative[inside])


def _label_cells(config: SynthConfig, cells: _CellPixels, centres: np.ndarray) -> np.ndarray:
    """Instance labels 1..N: a pixel shared by cells goes to the one it is relatively nearest
    to, and each centre pixel to its own cell (see ``_free``: they differ)."""
    order = np.lexsort((cells.relative, cells.pixel))
    pixel = cells.pixel[order]
    first = np.r_[True, pixel[1:] != pixel[:-1]]
    labels = np.zeros(config.height * config.width, np.uint32)
    labels[pixel[first]] = cells.cell[order][first] + 1
    labels = labels.reshape(config.height, config.width)
    rows, cols = np.round(centres).astype(int).T
    labels[rows, cols] = np.arange(1, len(centres) + 1)
    return labels


def _render_cells(config, cells: _CellPixels, brightness, defocus) -> np.ndarray:
    """One intensity layer per defocus level: each cell a dome of its brightness. Where cells
    overlap the brighter one shows (as in SIMCEP's VGG cells, whose clumps do not saturate)."""
    size = config.height * config.width
    dome = brightness[cells.cell] * (1 - cells.relative**2) ** (config.dome / 2)
    layers = np.zeros(DEFOCUS_LEVELS * size, np.float32)
    np.maximum.at(layers, defocus[cells.cell] * size + cells.pixel, dome)
    return layers.reshape(DEFOCUS_LEVELS, config.height, config.width)


def _blur_layers(config: SynthConfig, layers: np.ndarray, blur: float) -> np.ndarray:
    """Focal blur of each defocus layer, the brightest layer showing where they overlap (as
    within a layer), plus the halo of all of them."""
    image = np.zeros(layers.shape[1:], np.float32)
    for depth, layer in enumerate(layers):
        if layer.any():
            sigma = np.hypot(blur, config.cell_blur * depth / (DEFOCUS_LEVELS - 1))
            blurred = ndimage.gaussian_filter(layer, sigma, truncate=3.0) if sigma > 0 else layer
            np.maximum(image, blurred, out=image)
    if config.halo == 0:
        return image
    halo = ndimage.gaussian_filter(layers.sum(axis=0), config.halo_blur, truncate=3.0)
    return (1 - config.halo) * image + config.halo * halo


def _draw_blur(config: SynthConfig, rng: np.random.Generator) -> float:
    if config.focus is not None:
        return float(rng.integers(config.focus[0], config.focus[1] + 1)) / 4
    return float(rng.uniform(*config.blur))


def _fine_field(config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Random variation with correlation length ``texture_scale``, zero mean and unit spread."""
    noise = ndimage.gaussian_filter(
        rng.standard_normal((config.height, config.width)).astype(np.float32),
        config.texture_scale,
    )
    return noise / (noise.std() + 1e-12)


def _smooth_field(config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency random variation (up to 1.5 cycles per image) with zero mean and unit
    spread: a random Fourier series."""
    frequencies = np.linspace(-1.5, 1.5, 5)
    waves_y = np.exp(2j * np.pi * np.outer(frequencies, np.arange(config.height)) / config.height)
    waves_x = np.exp(2j * np.pi * np.outer(frequencies, np.arange(config.width)) / config.width)
    coefficients = rng.standard_normal((5, 5)) + 1j * rng.standard_normal((5, 5))
    # einsum, not a BLAS product: BLAS threads would fight the worker processes for the cores
    field = np.einsum("ky,kl,lx->yx", waves_y, coefficients, waves_x).real
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def _measure(config: SynthConfig, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Background, illumination, noise and quantisation: the microscope and the camera."""
    stained = [c for c in (config.body_channel, config.nuclei_channel) if c is not None]
    unstained = [c for c in range(config.channels) if c not in stained]
    variation = config.autofluorescence * _smooth_field(config, rng)
    if config.background_texture:
        variation += config.background_texture * _fine_field(config, rng)
    background = config.background * np.clip(1 + variation, 0, None)
    light = signal + background[:, :, None]
    light[:, :, unstained] = config.bleed * light[:, :, stained].mean(axis=2, keepdims=True)
    light *= _vignetting(config, rng)[:, :, None]
    if config.photons is not None:
        light = rng.poisson(light * config.photons) / config.photons
    light = light + config.read_noise * rng.standard_normal(light.shape)
    top = 2**config.bit_depth - 1
    dtype = np.uint8 if config.bit_depth == 8 else np.uint16
    return np.round(np.clip(light, 0, 1) * top).astype(dtype)


def _vignetting(config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Illumination falling off quadratically from a random optical centre."""
    centre = rng.uniform(0, 1, 2) * (config.height, config.width)
    y = (np.arange(config.height)[:, None] - centre[0]) / config.height
    x = (np.arange(config.width)[None, :] - centre[1]) / config.width
    falloff = (y**2 + x**2) / 2  # at most 1 at the corner farthest from a corner centre
    return (1 - config.illumination * falloff).astype(np.float32)


def image_name(index: int) -> str:
    return f"synth_{index:05d}"


def write_image(out: Path, config: SynthConfig, seed: int, index: int) -> dict[str, Any]:
    """Generate image ``index`` and write it, its dots, labels and mask; return its manifest row."""
    synth = generate(config, seed, index)
    name = image_name(index)
    suffix = ".png" if config.bit_depth == 8 else ".tif"
    image = synth.image[:, :, 0] if config.channels == 1 else synth.image
    _write_array(out / f"{name}{suffix}", image)
    write_points_csv(out / f"{name}.csv", synth.points)
    labels = synth.labels.astype(np.uint16 if synth.count < 2**16 else np.uint32)
    _write_array(out / "labels" / f"{name}.tif", labels)
    _write_array(out / "masks" / f"{name}.png", synth.mask.astype(np.uint8) * 255)
    return {
        "image": f"{name}{suffix}",
        "points": f"{name}.csv",
        "labels": f"labels/{name}.tif",
        "mask": f"masks/{name}.png",
        "count": synth.count,
        "blur_sigma": round(synth.blur, 4),
    }


def _write_array(path: Path, array: np.ndarray) -> None:
    """Write atomically; PNGs at zlib level 1 (16% larger than the default, 30x faster)."""
    if path.suffix == ".tif":
        atomic_write(path, lambda tmp: tifffile.imwrite(tmp, array, compression="zlib"))
    else:
        atomic_write(path, lambda tmp: iio.imwrite(tmp, array, extension=".png", compress_level=1))


def write_set(
    config: SynthConfig, n: int, out: str | Path, seed: int = 0, workers: int | None = None
) -> Iterator[dict[str, Any]]:
    """Generate ``n`` images into ``out`` in parallel, yielding manifest rows as images finish
    (in order); then write ``manifest.csv`` and ``synth.json`` (settings, seed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    rows = []
    with ProcessPoolExecutor(workers) as pool:
        jobs = pool.map(write_image, [out] * n, [config] * n, [seed] * n, range(n), chunksize=4)
        for row in jobs:
            rows.append(row)
            yield row
    record = {"seed": seed, "n": n, "config": dataclasses.asdict(config)}
    atomic_write(out / "synth.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    atomic_write(out / "manifest.csv", lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))


@dataclass(frozen=True)
class SynthSample(Sample):
    """A simulated image as a training sample: generated when loaded, never stored."""

    config: SynthConfig | None = field(default=None, repr=False, compare=False)
    seed: int = 0
    index: int = 0

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        synth = generate(self.config, self.seed, self.index)
        return as_image(synth.image), synth.points

    def load_mask(self) -> np.ndarray:
        return generate(self.config, self.seed, self.index).mask


def synth_samples(config: SynthConfig, n: int, seed: int = 0, label: str = "synth") -> list[Sample]:
    """``n`` simulated samples (images ``0..n-1`` of the set with ``seed``)."""

    def points(index: int):
        return lambda: generate(config, seed, index).points

    return [
        SynthSample(
            image_name(i),
            Path(f"{label}/{image_name(i)}"),
            points(i),
            config=config,
            seed=seed,
            index=i,
        )
        for i in range(n)
    ]


def synth_settings(source: str) -> tuple[str, SynthConfig]:
    """Settings from a preset name or a JSON file: the ``synth.json`` of a generated set (or
    its folder), or ``{"preset": NAME, SETTING: VALUE, ...}``. Returns ``(label, config)``."""
    if source in PRESETS:
        return source, preset(source)
    path = Path(source)
    record_file = path / "synth.json" if path.is_dir() else path
    if not record_file.is_file():
        raise InputError(
            source, f"not a synthetic preset ({', '.join(PRESETS)}) nor a synth.json settings file"
        )
    try:
        return str(record_file), _settings_record(json.loads(record_file.read_text()))
    except (json.JSONDecodeError, ValueError, AttributeError) as error:
        raise InputError(record_file, f"bad synthetic settings: {error}") from None


def _settings_record(record: dict[str, Any]) -> SynthConfig:
    if "config" in record:
        return SynthConfig.from_dict(record["config"])
    values = dict(record)
    name = values.pop("preset", None)
    return preset(name, **values) if name else SynthConfig.from_dict(values)

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

*Domain randomisation* (``randomise``, the ``generalist`` preset) draws every image's own world
instead: its size; the diameter of the counted objects (nuclei, or whole cells with nuclei); a
density from empty to confluent, the cells on a jittered hexagonal lattice whose sites are kept
where a smooth random field is high (scattered cells, colonies, sheets); and the modality:
fluorescence (grey or coloured stains), brightfield (Beer-Lambert absorption, with a phase
contrast halo or DIC relief), or H&E histology (haematoxylin nuclei, eosin cytoplasm and
fibrous stroma on white, with random stain colours). Blur, uneven background, signal-to-noise
ratio, bit depth and debris (fibres, specks: not cells) vary too. The manifest records what
each image drew.
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
from celltally.data.points import write_points_csv
from celltally.errors import InputError
from celltally.io import atomic_write, write_json

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
        randomise: domain randomisation: each image draws its own size, cell size, shape,
            density, modality, optics, noise and bit depth (see the module docstring) from the
            ranges below and ignores the settings above.
        diameter_range: smallest and largest diameter (pixels) of the counted objects; drawn
            log-uniformly.
        size_range: shortest and longest image side (pixels); height and width drawn apart.
        modalities: relative frequencies of fluorescence, brightfield and histology images.
        empty_fraction: fraction of images without cells.
        artefacts: fraction of images with debris (fibres, specks) that is not counted.
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
    randomise: bool = False
    diameter_range: tuple[float, float] = (4.0, 60.0)
    size_range: tuple[int, int] = (128, 512)
    modalities: tuple[float, float, float] = (2.0, 1.0, 1.0)
    empty_fraction: float = 0.1
    artefacts: float = 0.2

    def __post_init__(self) -> None:
        low, high = self.count_range
        (smallest, largest), (shortest, longest) = self.diameter_range, self.size_range
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
            "diameter_range must be (low, high) with 2 <= low <= high": 2 <= smallest <= largest,
            "size_range must be (low, high) with 16 <= low <= high": 16 <= shortest <= longest,
            "modalities must be frequencies >= 0, not all 0": min(self.modalities) >= 0
            and sum(self.modalities) > 0,
            "empty_fraction must be in [0, 1]": 0 <= self.empty_fraction <= 1,
            "artefacts must be in [0, 1]": 0 <= self.artefacts <= 1,
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
    # Every image its own world (domain randomisation, see ``randomise``): nuclei or whole
    # cells 4-60 px across, from empty to confluent; fluorescence, brightfield or H&E.
    "generalist": dict(randomise=True),
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
    drawn: dict[str, Any] = field(default_factory=dict)  # what a randomised image drew

    @property
    def count(self) -> int:
        return len(self.points)

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0


def generate(config: SynthConfig, seed: int, index: int) -> SynthImage:
    """Simulate image ``index`` of the set with ``seed`` (it depends on nothing else)."""
    rng = np.random.default_rng([seed, index])
    if config.randomise:
        return _generate_randomised(config, rng)
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
        signal[:, :, channel] = _stain(config, cells, level * brightness, defocus, blur, rng)
    image = _measure(config, signal, rng)
    return SynthImage(image, np.round(centres, 2), labels, blur)


def _stain(config, cells: _CellPixels, brightness, defocus, blur: float, rng) -> np.ndarray:
    """The blurred image of the cells' stain: domes of their brightness, textured."""
    layers = _render_cells(config, cells, brightness, defocus)
    texture = np.clip(1 + config.texture * _fine_field(config, rng), 0, None)
    return _blur_layers(config, layers * texture, blur)


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
    distance = np.hypot(dy, dx)
    # no outline reaches farther: the shape is worked out only for the pixels nearer than this
    farthest = scale * shapes.axes[:, 0] * np.prod(1 + np.abs(shapes.amplitudes), axis=1)
    near = (distance < farthest[:, None, None]) & (rows >= 0) & (rows < config.height)
    near &= (cols >= 0) & (cols < config.width)
    cell = np.broadcast_to(np.arange(len(centres))[:, None, None], near.shape)[near]
    dy, dx = np.broadcast_to(dy, near.shape)[near], np.broadcast_to(dx, near.shape)[near]
    theta = np.arctan2(dy, dx)
    a, b = shapes.axes[cell, 0], shapes.axes[cell, 1]
    turn = theta - shapes.angle[cell]
    boundary = a * b / np.hypot(b * np.cos(turn), a * np.sin(turn))
    for k in range(N_HARMONICS):
        wobble = np.cos((k + 2) * theta + shapes.phases[cell, k])
        boundary *= 1 + shapes.amplitudes[cell, k] * wobble
    relative = distance[near] / (scale * boundary)
    inside = relative < 1
    pixel = (rows * config.width + cols)[near]
    return _CellPixels(cell[inside], pixel[inside], relative[inside])


def _label_cells(config: SynthConfig, cells: _CellPixels, centres: np.ndarray) -> np.ndarray:
    """Instance labels 1..N: a pixel shared by cells goes to the one it is relatively nearest
    to, and each centre pixel to its own cell (see ``_free``: they differ)."""
    order = np.lexsort((cells.relative, cells.pixel))
    pixel = cells.pixel[order]
    first = np.diff(pixel, prepend=-1) != 0
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
    return _camera(config, light, rng)


def _camera(config: SynthConfig, light: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uneven illumination, photon and read noise, quantisation of ``light`` (H, W, C)."""
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


# Domain randomisation (``SynthConfig.randomise``)
MODALITIES = ("fluorescence", "brightfield", "histology")
SNR_RANGE = {"fluorescence": (2.0, 80.0), "brightfield": (2.0, 80.0), "histology": (8.0, 100.0)}
HAEMATOXYLIN = (0.650, 0.704, 0.286)  # optical density per unit stain in R, G, B (Ruifrok 2001)
EOSIN = (0.072, 0.990, 0.105)
MIN_STEP = 3.0  # pixels between lattice sites: twice MIN_SPACING, leaving room for jitter


@dataclass(frozen=True)
class _Scene:
    """What a randomised image drew, beyond its own concrete settings."""

    config: SynthConfig  # size, cell size and shape, blur, bit depth, channels
    modality: str
    whole_cells: bool  # cell bodies with nuclei (the cells are counted), or nuclei only
    fill: float  # fraction of lattice sites holding a cell: 0 empty, 1 confluent
    step: float  # lattice spacing in pixels
    jitter: float  # random shift of the sites, in lattice steps
    clustering: float  # how strongly cells gather where a smooth random field is high
    snr: float  # contrast of the cells over the standard deviation of the noise
    artefacts: bool

    def record(self) -> dict[str, Any]:
        """The manifest's columns for this image."""
        c = self.config
        return {
            "modality": self.modality,
            "objects": "cells" if self.whole_cells else "nuclei",
            "diameter_px": round(2 * c.radius, 2),
            "height": c.height,
            "width": c.width,
            "channels": c.channels,
            "bit_depth": c.bit_depth,
            "fill": round(self.fill, 4),
            "clustering": round(self.clustering, 3),
            "snr": round(self.snr, 2),
            "artefacts": self.artefacts,
        }


@dataclass
class _Maps:
    """The stains of a randomised image before the modality's optics, all (H, W), about 0-1."""

    body: np.ndarray
    nuclei: np.ndarray
    debris: np.ndarray
    field: np.ndarray  # the smooth random field the cells gather in (tissue in histology)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _generate_randomised(config: SynthConfig, rng: np.random.Generator) -> SynthImage:
    """An image of a world of its own (see ``SynthConfig.randomise``)."""
    scene = _draw_scene(config, rng)
    c = scene.config
    field = _smooth_field(c, rng)
    # rounded first, so that the stored dots are the centres the labels were made from
    centres = np.round(_lattice_centres(scene, field, rng), 2)
    count = len(centres)
    radii = c.radius * np.clip(1 + c.radius_std * rng.standard_normal(count), 0.5, 2)
    shapes = _random_shapes(c, radii, rng)
    brightness = np.clip(1 + c.intensity_std * rng.standard_normal(count), 0.15, None)
    defocus = rng.integers(0, DEFOCUS_LEVELS, count)
    blur = c.blur[0]
    nuclei = _cell_pixels(c, _nucleus_centres(scene, centres, radii, rng), shapes, c.nucleus_ratio)
    bodies = _cell_pixels(c, centres, shapes, 1.0) if scene.whole_cells else None
    labels = _label_cells(c, nuclei if bodies is None else bodies, centres)
    empty = np.zeros((c.height, c.width), np.float32)
    maps = _Maps(
        body=empty if bodies is None else _stain(c, bodies, brightness, defocus, blur, rng),
        nuclei=_stain(c, nuclei, brightness, defocus, blur, rng),
        debris=_debris(scene, rng) if scene.artefacts else empty,
        field=field,
    )
    image = RENDERERS[scene.modality](scene, maps, rng)
    drawn = scene.record() | {"coverage": round(float((labels > 0).mean()), 4)}
    return SynthImage(image, centres, labels, blur, drawn)


def _draw_scene(config: SynthConfig, rng: np.random.Generator) -> _Scene:
    """This image's world; the optics of its modality are drawn when it is rendered."""
    modality = MODALITIES[rng.choice(3, p=np.divide(config.modalities, sum(config.modalities)))]
    whole_cells = bool(rng.random() < 0.5)
    diameter = _log_uniform(rng, *config.diameter_range)
    height, width = (
        int(n) for n in rng.integers(config.size_range[0], config.size_range[1] + 1, 2)
    )
    empty = rng.random() < config.empty_fraction
    step = max(diameter * rng.uniform(0.8, 1.1), MIN_STEP)
    concrete = dataclasses.replace(
        config,
        randomise=False,
        height=height,
        width=width,
        radius=diameter / 2,
        radius_std=rng.uniform(0.05, 0.25),
        elongation=rng.uniform(0.05, 0.5),
        irregularity=rng.uniform(0.02, 0.2),
        nucleus_ratio=rng.uniform(0.35, 0.65) if whole_cells else 1.0,
        dome=rng.uniform(0.0, 1.5),
        intensity_std=rng.uniform(0.1, 0.4),
        texture=rng.uniform(0.05, 0.4),
        texture_scale=max(0.7, diameter * rng.uniform(0.03, 0.1)),
        blur=(float(np.clip(diameter * _log_uniform(rng, 0.02, 0.2), 0.4, 8.0)),) * 2,
        cell_blur=diameter * rng.uniform(0.0, 0.08),
        halo=rng.uniform(0.0, 0.3) if modality == "fluorescence" else 0.0,
        halo_blur=max(2.0, diameter * rng.uniform(0.5, 2.0)),
        illumination=rng.uniform(0.0, 0.5),
        **_channels(modality, whole_cells, rng),
    )
    return _Scene(
        concrete,
        modality,
        whole_cells,
        fill=0.0 if empty else _draw_fill(height * width / (np.sqrt(3) / 2 * step**2), rng),
        step=step,
        # neighbours are a step apart and each moves by jitter x step: they stay MIN_SPACING apart
        jitter=min(rng.uniform(0.15, 0.35), (1 - MIN_SPACING / step) / 2 - 0.01),
        clustering=rng.uniform(0.0, 3.0),
        snr=_log_uniform(rng, *SNR_RANGE[modality]),
        artefacts=bool(rng.random() < config.artefacts),
    )


def _draw_fill(sites: float, rng: np.random.Generator) -> float:
    """Log-uniform from 0.5% of the lattice's sites (or about 2 cells) to confluent (all)."""
    least = min(max(0.005, 2 / sites), 1.0)
    return min(_log_uniform(rng, least, 1.5), 1.0)


def _channels(modality: str, whole_cells: bool, rng: np.random.Generator) -> dict[str, Any]:
    """Bit depth and channels: 8-bit RGB histology; grey 8/16-bit brightfield; fluorescence
    grey, or RGB with blue nuclei and red or green cell bodies."""
    if modality == "histology":
        return dict(bit_depth=8, channels=3, body_channel=0, nuclei_channel=2)
    bit_depth = 16 if rng.random() < 0.3 else 8
    if modality == "fluorescence" and rng.random() < 0.3:
        body = int(rng.integers(2)) if whole_cells else None
        return dict(bit_depth=bit_depth, channels=3, body_channel=body, nuclei_channel=2)
    return dict(
        bit_depth=bit_depth, channels=1, body_channel=0 if whole_cells else None, nuclei_channel=0
    )


def _lattice_centres(scene: _Scene, field: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random subset (``fill``) of the sites of a jittered hexagonal lattice of random
    orientation, the sites where ``field`` is high preferred (``clustering``): scattered cells,
    colonies or confluent sheets, whose centres are never nearer than ``MIN_SPACING``."""
    c = scene.config
    n = int(np.ceil(np.hypot(c.height, c.width) / 2 / scene.step)) + 1
    j, i = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    y, x = j.ravel() * np.sqrt(3) / 2 * scene.step, (i + j % 2 / 2).ravel() * scene.step
    angle = rng.uniform(0, np.pi)
    shift = rng.uniform(-0.5, 0.5, 2) * scene.step + (np.array([c.height, c.width]) - 1) / 2
    reach = scene.jitter * scene.step * np.sqrt(rng.random(y.size))
    turn = rng.uniform(0, 2 * np.pi, y.size)
    sites = np.stack(
        [
            y * np.cos(angle) - x * np.sin(angle) + shift[0] + reach * np.sin(turn),
            y * np.sin(angle) + x * np.cos(angle) + shift[1] + reach * np.cos(turn),
        ],
        axis=1,
    )
    sites = sites[((sites >= 0) & (sites <= [c.height - 1, c.width - 1])).all(axis=1)]
    rows, cols = np.round(sites).astype(int).T
    score = scene.clustering * field[rows, cols] + rng.standard_normal(len(sites))
    return sites[np.argsort(-score, kind="stable")[: rng.binomial(len(sites), scene.fill)]]


def _nucleus_centres(scene: _Scene, centres, radii, rng: np.random.Generator) -> np.ndarray:
    """Nuclei sit near, not exactly at, the centres of whole cells."""
    if not scene.whole_cells:
        return centres
    shift = (1 - scene.config.nucleus_ratio) * radii * rng.uniform(0, 0.5, len(radii))
    angle = rng.uniform(0, 2 * np.pi, len(radii))
    return centres + shift[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1)


def _debris(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Fibres (smooth random walks) and, beside cells of 10 pixels or more, specks."""
    c = scene.config
    canvas = np.zeros((c.height, c.width), np.float32)
    for _ in range(rng.integers(1, 4)):
        steps = int(rng.uniform(0.1, 0.6) * (c.height + c.width))
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.1, steps))
        start = rng.uniform(0, 1, 2) * (c.height, c.width)
        path = start + 0.7 * np.cumsum(np.stack([np.sin(heading), np.cos(heading)], 1), 0)
        _draw(canvas, path, 1.0)
    if 2 * c.radius >= 10:
        specks = rng.integers(0, 30)
        _draw(canvas, rng.uniform(0, 1, (specks, 2)) * (c.height, c.width), rng.uniform(1, 4))
    canvas = ndimage.gaussian_filter(canvas, rng.uniform(0.5, 1.2))
    return canvas / (canvas.max() + 1e-12)


def _draw(canvas: np.ndarray, points: np.ndarray, value: float) -> None:
    """Set the pixels nearest ``points`` (inside the canvas) to ``value``."""
    rows, cols = np.round(points).astype(int).T
    inside = (rows >= 0) & (rows < canvas.shape[0]) & (cols >= 0) & (cols < canvas.shape[1])
    canvas[rows[inside], cols[inside]] = value


def _noisy(
    config: SynthConfig, level: float, contrast: float, snr: float, rng: np.random.Generator
) -> SynthConfig:
    """Settings whose photon and read noise have, together, the standard deviation
    ``contrast / snr`` at light ``level``; photon noise makes a random share of it."""
    sigma = contrast / snr
    shot = rng.uniform(0.3, 1.0)
    return dataclasses.replace(
        config, photons=level / (shot * sigma**2), read_noise=sigma * np.sqrt(1 - shot)
    )


def _fluorescence(scene: _Scene, maps: _Maps, rng: np.random.Generator) -> np.ndarray:
    """Bright stains on a dark, autofluorescent background."""
    c = scene.config
    level = _log_uniform(rng, 0.15 if c.bit_depth == 8 else 0.02, 1.0)
    signal = np.zeros((c.height, c.width, c.channels), np.float32)
    if c.channels == 1 and scene.whole_cells:  # one stain: nuclei brighter or dimmer
        nuclei = rng.uniform(-0.6, 1.5)
        grey = (maps.body + nuclei * maps.nuclei) / max(1.0, 1.0 + nuclei)
        signal[:, :, 0] = level * np.clip(grey, 0, None)
    elif c.channels == 1:
        signal[:, :, 0] = level * maps.nuclei
    else:
        signal[:, :, c.nuclei_channel] = level * maps.nuclei
        if c.body_channel is not None:
            signal[:, :, c.body_channel] = level * rng.uniform(0.3, 1.0) * maps.body
    signal += level * rng.uniform(0.3, 2.0) * maps.debris[:, :, None]
    c = dataclasses.replace(
        c,
        background=level * _log_uniform(rng, 0.02, 0.5),
        autofluorescence=rng.uniform(0.05, 0.5),
        background_texture=rng.uniform(0.0, 0.3),
        bleed=rng.uniform(0.0, 0.05),
    )
    return _measure(_noisy(c, level + c.background, level, scene.snr, rng), signal, rng)


def _brightfield(scene: _Scene, maps: _Maps, rng: np.random.Generator) -> np.ndarray:
    """Transmitted light: cells absorb a little (Beer-Lambert), nuclei more; phase contrast
    adds a bright halo around them, DIC a relief."""
    c = scene.config
    lamp = rng.uniform(0.55, 0.9)
    body, nuclei = _log_uniform(rng, 0.08, 0.6), _log_uniform(rng, 0.05, 1.0)
    density = body * maps.body + nuclei * maps.nuclei + rng.uniform(0.3, 1.5) * maps.debris
    seen = np.exp(-density)
    if rng.random() < 0.4:  # phase contrast: light from the cells spread around them
        width = max(1.0, 2 * c.radius * rng.uniform(0.1, 0.3))
        seen += rng.uniform(0.5, 2.0) * (ndimage.gaussian_filter(density, width) - density)
    if rng.random() < 0.25:  # DIC: shaded along a random direction
        angle = rng.uniform(0, 2 * np.pi)
        dy, dx = np.gradient(density)
        seen += c.radius * rng.uniform(0.3, 1.0) * (np.sin(angle) * dy + np.cos(angle) * dx)
    variation = rng.uniform(0, 0.06) * _smooth_field(c, rng)
    variation += rng.uniform(0, 0.03) * _fine_field(c, rng)
    light = lamp * (1 + variation) * np.clip(seen, 0, None)
    contrast = lamp * (1 - np.exp(-max(body, nuclei)))
    return _camera(_noisy(c, lamp, contrast, scene.snr, rng), light[:, :, None], rng)


def _histology(scene: _Scene, maps: _Maps, rng: np.random.Generator) -> np.ndarray:
    """H&E in transmitted light: haematoxylin (purple) nuclei, eosin (pink) cytoplasm and
    fibrous stroma, white where there is no tissue; stain colours vary from slide to slide."""
    c = scene.config
    tissue = np.clip((maps.field - rng.uniform(-2.5, 0.3)) / rng.uniform(0.2, 1.0), 0, 1)
    stroma = tissue * np.clip(1 + rng.uniform(0.05, 0.3) * _fibres(c, rng), 0, 2)
    stroma *= 1 - np.clip(maps.body, 0, 1)  # cells push the stroma aside
    haematoxylin = rng.uniform(0.3, 1.2) * maps.nuclei + rng.uniform(0, 0.12) * stroma
    eosin = rng.uniform(0.02, 0.25) * stroma + _log_uniform(rng, 0.03, 0.5) * maps.body
    density = (
        haematoxylin[:, :, None] * _stain_colour(HAEMATOXYLIN, rng)
        + eosin[:, :, None] * _stain_colour(EOSIN, rng)
        + rng.uniform(0.3, 1.0) * maps.debris[:, :, None]
    )
    light = rng.uniform(0.88, 0.98, 3) * 10.0 ** (-density)
    # noise relative to a nucleus, about half as bright as the near-white slide
    return _camera(_noisy(c, 0.9, 0.5, scene.snr, rng), light.astype(np.float32), rng)


def _fibres(config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Fibrous texture (the collagen of stroma): noise smoothed 2-4 times more along a random
    direction than across it; zero mean, unit spread."""
    fy = np.fft.fftfreq(config.height)[:, None]
    fx = np.fft.rfftfreq(config.width)[None, :]
    angle = rng.uniform(0, np.pi)
    along, across = fy * np.cos(angle) + fx * np.sin(angle), fx * np.cos(angle) - fy * np.sin(angle)
    sigma = config.texture_scale * np.array([rng.uniform(2, 4), 1.0])
    gain = np.exp(-2 * np.pi**2 * ((sigma[0] * along) ** 2 + (sigma[1] * across) ** 2))
    noise = np.fft.rfft2(rng.standard_normal((config.height, config.width)))
    fibres = np.fft.irfft2(noise * gain, s=(config.height, config.width))
    return (fibres / (fibres.std() + 1e-12)).astype(np.float32)


def _stain_colour(density: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """A stain's optical densities in R, G, B, varied as between slides and labs."""
    colour = np.array(density) * np.exp(0.15 * rng.standard_normal(3))
    return (colour / np.linalg.norm(colour)).astype(np.float32)


RENDERERS = {"fluorescence": _fluorescence, "brightfield": _brightfield, "histology": _histology}


def image_name(index: int) -> str:
    return f"synth_{index:05d}"


def write_image(out: Path, config: SynthConfig, seed: int, index: int) -> dict[str, Any]:
    """Generate image ``index`` and write it, its dots, labels and mask; return its manifest row."""
    synth = generate(config, seed, index)
    name = image_name(index)
    suffix = ".png" if synth.image.dtype == np.uint8 else ".tif"
    image = synth.image[:, :, 0] if synth.image.shape[2] == 1 else synth.image
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
        **synth.drawn,
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
    write_json(out / "synth.json", record)
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

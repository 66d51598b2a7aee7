"""A model's settings: ``Architecture`` (what the network is built from, frozen once it is
built) and ``ModelConfig`` (that, plus what training and calibration fit, the defaults of the
per-call options and the provenance), saved as ``config.json`` in those sections.
``celltally.train.TrainConfig`` holds an ``Architecture`` of the model it trains."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from celltally.targets import DEFAULT_SCALE, DEFAULT_SIGMA, WINDOW

MAX_DOWNSAMPLE = 8


@dataclass
class Architecture:
    """What a network is built from; changing any of these needs another network.

    Attributes:
        arch: registry name of the architecture (``fcrn_a``, ``fcrn_b``, ``countception``).
        in_channels: 1 (images are averaged over colour; fluorescence) or 3 (RGB; histology).
        batch_norm: add BatchNorm after each convolution (not in the FCRN paper; off by default;
            Count-ception always has it).
        frozen_bn: BatchNorm keeps its initial statistics (mean 0, variance 1) in training too,
            which makes it a learned affine layer (the original Count-ception training).
        window_stride: Count-ception reads every ``window_stride``-th pixel of its count map
            (1, 2, 4, 8, 16 or 32), where each cell is counted (32 / stride)^2 times.
        downsample: the network sees images reduced this many times (means of ``downsample`` x
            ``downsample`` blocks), in training and at inference; counts, centres, densities and
            region counts are given on the image's own pixels. For cells too large for the
            network's view: MBM's nuclei (~20 px wide, 27 px apart) fill Count-ception's 32x32
            window at 1, and at 2 its test MAE fell from 15.05 / 13.68 to 9.53 / 6.70 (draws 0
            and 2, N = 15).
        sigma: width in pixels of the Gaussian per dot in the training target.
        scale: the target is ``scale`` x the density; the count is the map's sum / ``scale``.
        variance_head: a second output channel predicts each pixel's log-variance (its
            additive share of a count's variance); with ``conformal_scores`` it gives count
            intervals (see ``celltally.uncertainty``).
    """

    arch: str = "fcrn_a"
    in_channels: int = 1
    batch_norm: bool = False
    frozen_bn: bool = False
    window_stride: int = 1
    downsample: int = 1
    variance_head: bool = False
    sigma: float = DEFAULT_SIGMA
    scale: float = DEFAULT_SCALE

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.sigma <= 0 or self.scale <= 0:
            raise ValueError(f"sigma and scale must be positive, got {self.sigma}, {self.scale}")
        if self.window_stride < 1 or WINDOW % self.window_stride:
            raise ValueError(
                f"window_stride must divide {WINDOW} (1, 2, 4, 8, 16, 32), got {self.window_stride}"
            )
        if not 1 <= self.downsample <= MAX_DOWNSAMPLE:
            raise ValueError(
                f"downsample must be a whole factor from 1 to {MAX_DOWNSAMPLE}, got"
                f" {self.downsample}"
            )


@dataclass
class ModelConfig(Architecture):
    """Everything needed to rebuild a model and read its output: its ``Architecture`` and the
    settings below. Saved as ``config.json`` (``to_sections``).

    Attributes:
        conformal_scores: calibration: |count - true| / predicted std on validation images,
            sorted; set by training or ``celltally calibrate``.
        log_variance_range: ``[low, high]``: a fitted variance head's log-variance is clipped to
            the 0.1% and 99.9% quantiles of its values on the pixels it was fitted on
            (``fit_variance_head`` sets it). The head is linear in its features and a few
            pixels barely move its likelihood: on MBM some reached 25 (a variance of e^25),
            against 2 for 99% of pixels, and decided their image's interval. ``None``: no
            clipping.
        count_gain, count_offset: the count calibration: the network's map becomes
            ``count_gain * map + count_offset`` (its log-variance follows), fitted on
            validation images by ``TrainConfig.calibrate_counts`` or ``celltally calibrate
            --counts`` (see ``celltally.uncertainty.calibrate_counts``); 1 and 0: none.
        peak_threshold: smallest map value of a detected centre; chosen on validation data.
        min_distance: smallest distance in pixels between two detected centres.
        tile_size: images larger than this (plus margins) are processed in tiles of this size.
        tta: test-time augmentation: the output is the mean over the image's 8 flips and
            quarter turns, each mapped back onto the image (8x slower; lowers the count error).
            The default of ``predict``'s ``tta``; ``tile_size`` likewise of its ``tile``.
        diameter: the cell diameter in pixels of the images the model was trained on (on the
            images' own pixels, before ``downsample``), measured by training from the training
            images' masks or dots (``celltally.diameter``). ``predict`` rescales an image whose
            cells are of another size to it. ``None``: unknown; images are never rescaled.
        diameter_range: ``[low, high]``: the cell diameters (px) the model counts reliably; an
            image whose estimated diameter lies outside gets a warning.
        auto_diameter: estimate each image's cell diameter when none is given and rescale the
            image to ``diameter``: for a model trained with scale jitter (the generalist),
            which tolerates the estimate's error. A model trained at one scale (the paper
            models) counts a VGG cells image 2.5x worse when rescaled by a 7% error of the
            estimate, so it is rescaled only to a diameter the user gives.
        pick_channel: the image's channel is chosen as ``celltally.data.images.pick_channel``
            chooses (the model was trained on such choices); else colours are averaged (one
            input channel) or kept (three), as the paper models were trained.
        max_relative_sigma: the largest predicted standard deviation of a count, relative to
            the count, on the calibration images; a far larger one on a new image gets a
            warning (``celltally.models.ood``).
        size_model: the weights of a linear regression of the cell size on the network's
            pooled features (``celltally.models.size``), which refines the blind diameter
            estimate; ``None``: the blind estimate alone.
        contrast_range: ``[low, high]``: the 1st and 99th percentiles of the training images'
            contrast over their noise (``celltally.models.ood.contrast``); an image outside
            gets a warning.
        training: provenance written by ``celltally train`` (data, split, settings, versions).
    """

    conformal_scores: list[float] = field(default_factory=list)
    log_variance_range: list[float] | None = None
    count_gain: float = 1.0
    count_offset: float = 0.0
    peak_threshold: float = 0.5
    min_distance: int = 3
    tile_size: int = 512
    tta: bool = False
    diameter: float | None = None
    diameter_range: list[float] | None = None
    auto_diameter: bool = False
    pick_channel: bool = False
    max_relative_sigma: float | None = None
    size_model: list[float] | None = None
    contrast_range: list[float] | None = None
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (np.isfinite(self.count_gain) and self.count_gain > 0):
            raise ValueError(f"count_gain must be positive, got {self.count_gain}")
        if not np.isfinite(self.count_offset):
            raise ValueError(f"count_offset must be finite, got {self.count_offset}")
        bounds = self.log_variance_range
        if bounds is not None and not (
            len(bounds) == 2 and np.isfinite(bounds).all() and bounds[0] <= bounds[1]
        ):
            raise ValueError(f"log_variance_range must be [low, high], got {bounds}")
        if self.min_distance < 1:
            raise ValueError(f"min_distance must be at least 1 pixel, got {self.min_distance}")
        if self.diameter is not None and not (np.isfinite(self.diameter) and self.diameter > 0):
            raise ValueError(f"diameter must be a positive number of pixels, got {self.diameter}")
        if self.tile_size < 64:
            raise ValueError(f"tile_size must be at least 64 pixels, got {self.tile_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_sections(self) -> dict[str, dict[str, Any]]:
        """The settings by what they are (``config.json``'s layout): ``architecture`` (frozen
        when the network is built), ``fitted`` (set by training and calibration: readout,
        thresholds, calibration, cell size), ``defaults`` (of the per-call options) and
        ``training`` (provenance)."""
        values = self.to_dict()
        sections = {name: {k: values[k] for k in keys} for name, keys in SECTIONS.items()}
        return {**sections, "training": values["training"]}

    @classmethod
    def from_sections(cls, record: dict[str, Any]) -> ModelConfig:
        """A config from ``to_sections``' layout, or from the flat ``{"config": {...}}`` of
        checkpoints saved before it."""
        if "config" in record:
            return cls.from_dict(record["config"])
        flat = {k: v for name in SECTIONS for k, v in record.get(name, {}).items()}
        return cls.from_dict({**flat, "training": record.get("training", {})})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(
                f"unknown model config keys {sorted(unknown)}; valid keys are {sorted(known)}"
            )
        return cls(**values)


# config.json's sections (see ``ModelConfig.to_sections``); ``training`` is the provenance.
SECTIONS = {
    "architecture": tuple(f.name for f in fields(Architecture)),  # what the network is built from
    "fitted": (
        "conformal_scores", "log_variance_range", "count_gain", "count_offset", "peak_threshold",
        "min_distance", "diameter", "diameter_range", "auto_diameter", "pick_channel",
        "max_relative_sigma", "size_model", "contrast_range",
    ),
    "defaults": ("tile_size", "tta"),
}  # fmt: skip

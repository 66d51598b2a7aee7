"""What every counting model shares: input normalisation, padding, readout, one inference pass
(its settings: ``celltally.models.config``).

A model maps a normalised image (zero-padded by ``pad`` pixels) to an output map whose sum,
divided by ``count_divisor``, is the count: a density map for the FCRNs, a count map ``2 * pad -
shrink`` pixels larger than the image for Count-ception. ``density`` turns an output into cells
per pixel at the image's resolution, ``centre_map`` into the map whose local maxima are the
cell centres. ``count``, ``points`` and ``predict_map`` take raw images (any dtype, ``(H, W)``
or ``(H, W, C)``) and apply the training normalisation themselves: each image is standardised
by its own mean and standard deviation over all pixels and channels, as the training patches
were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from skimage.feature import peak_local_max
from torch import nn

from celltally import diameter as cell_size
from celltally.data.images import (
    as_image,
    downsample,
    pick_channel,
    to_channels,
    to_grid_points,
    to_image_points,
    upsample,
)
from celltally.data.scale import (
    needs_rescaling,
    rescale_image,
    restore_density,
    to_rescaled_points,
)
from celltally.errors import InputError
from celltally.losses import LOSSES
from celltally.models.config import ModelConfig
from celltally.models.inference import predict_dihedral, predict_tiled
from celltally.models.ood import has_signal, image_contrast, out_of_distribution
from celltally.models.phases import MAP_PHASES, TrainingPhase
from celltally.models.prediction import NetworkPass, Prediction
from celltally.models.size import refine_diameter
from celltally.targets import density_map
from celltally.uncertainty import CountInterval, affine_output, check_intervals, interval


class CountingModel(nn.Module):
    """Base class: subclasses define the network in ``forward`` and the class attributes."""

    stride: ClassVar[int]  # input sides must be multiples of this; inputs are padded to it
    tile_margin: ClassVar[int]  # context around a tile that makes tiled == whole-image output
    min_size: ClassVar[int]  # the smallest image side the model accepts
    pad: ClassVar[int] = 0  # zeros added around every normalised image
    shrink: ClassVar[int] = 0  # the output is this much smaller than the (padded) input
    recipe: ClassVar[dict] = {}  # training settings that differ from TrainConfig's defaults
    # A mirrored output map lies this many pixels too far along the mirrored axis (see
    # ``celltally.dihedral.undo``).
    flip_shift: ClassVar[int] = 0

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # The 1x1 convolution that reads the log-variance from the features of the map's last
        # layer, if the model has one (``variance_head``; fitted after training by
        # ``celltally.train.fit_variance_head``); fpn_vgg11 learns its variance otherwise.
        self.log_variance: nn.Conv2d | None = None

    @property
    def size_layer(self) -> nn.Module | None:
        """The layer whose pooled output the size model reads (``celltally.models.size``)."""
        return None

    @property
    def readout(self) -> nn.Conv2d | None:
        """The final 1x1 convolution if the output is linear in its input features (then it can
        be refitted after training), else ``None``."""
        return None

    @torch.no_grad()
    def set_readout(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Make the map ``weight @ features + bias`` of the features that ``readout`` reads."""
        self.readout.weight.copy_(weight.reshape(self.readout.weight.shape))
        self.readout.bias.copy_(bias)

    @property
    def count_divisor(self) -> float:
        """What the map's sum is divided by to give the count."""
        return self.config.scale

    @property
    def out_channels(self) -> int:
        """1 (the map), or 2 with a variance head (the map and its log-variance)."""
        return 2 if self.config.variance_head else 1

    # ---- raw images in, counts and centres out -------------------------------------------
    def predict(self, image: np.ndarray, *, ci: float | None = None, **options: Any) -> Prediction:
        """Count ``image`` (any dtype, ``(H, W)`` or ``(H, W, C)``) in one network pass: the
        count, density, centres, the diameter counted at and warnings; with ``ci`` (a level,
        e.g. 0.95), also the count's calibrated interval at that level. ``options``: the
        cell ``diameter``, ``channel``, ``tile``, ``tta``, ``source`` and
        ``separate_channels``, as ``network_pass`` documents."""
        return self.read_out(self.network_pass(image, **options), ci)

    def network_pass(
        self,
        image: np.ndarray,
        *,
        diameter: float | None = None,
        channel: int | None = None,
        tile: int | None = None,
        tta: bool | None = None,
        source: str | None = None,
        separate_channels: bool = False,
    ) -> NetworkPass:
        """The first half of ``predict``: the channel chosen, the diameter given or estimated,
        the image rescaled to the model's and the network run on it (with a diameter estimated
        by a model with a size model, also the encoder's half of the network on the image's
        centre: ``celltally.models.size``).

        Args:
            diameter: the image's cell diameter in pixels; the image is rescaled so that its
                cells have the model's training ``diameter``. ``None``: estimated from the
                image (``celltally.diameter.measure_diameter``) for a model with
                ``auto_diameter``, else the image is not rescaled.
            channel: the channel holding the cells (0-based); ``None``: chosen as
                ``celltally.data.images.pick_channel`` documents.
            tile: tile side for large images (default ``config.tile_size``); tiled and whole
                predictions are equal.
            tta: test-time augmentation (default ``config.tta``).
            source: the file the image came from, named in errors.
            separate_channels: the image's channels are separate stains (a TIFF's C axis:
                ``read_stack``), not the colours of one picture.
        """
        image, notes = self._input(image, channel, source, separate_channels)
        used, estimated = self._diameter(image, diameter)
        scale = self._scale(used, image.shape[:2])
        network_image = rescale_image(image, scale) if scale != 1.0 else image
        signal = image_contrast(image)
        output = self.predict_output(
            network_image, source, tile=tile, tta=tta, chosen=True, empty=not has_signal(signal)
        )
        shape = network_image.shape[:2]
        return NetworkPass(image, output, shape, signal, used, estimated, scale, notes)

    def read_out(self, found: NetworkPass, ci: float | None = None) -> Prediction:
        """The second half of ``predict``: count, density and centres on the image's pixels,
        the interval at level ``ci`` (if given) and the warnings."""
        output, image = found.output, found.image
        grid_density, centre_map = self.density_and_centre_map(output[0])
        count = self.count_from_map(output[0])
        density = upsample(grid_density, self.config.downsample, found.network_shape)
        points = to_image_points(self.local_maxima(centre_map), self.config.downsample)
        if found.scale != 1.0:
            density = restore_density(density, image.shape)
            points = to_rescaled_points(points, found.network_shape, image.shape)
        bounds = None if ci is None else self.count_interval(output, ci)
        sigma = self.count_sigma(output[1]) if len(output) > 1 else None
        estimated = found.diameter if found.diameter_estimated else None
        notes = found.notes + out_of_distribution(
            self, image, estimated, count, sigma, found.contrast
        )
        return Prediction(
            count,
            density,
            points,
            bounds,
            sigma,
            found.diameter,
            found.diameter_estimated,
            found.scale,
            notes,
        )

    def count(self, image: np.ndarray, ci: float | None = None, **options) -> float | CountInterval:
        """The number of cells in ``image``; with ``ci`` (a level, e.g. 0.95), the count with
        its calibrated interval at that level. ``options`` as ``predict``'s."""
        prediction = self.predict(image, ci=ci, **options)
        return prediction.count if ci is None else prediction.interval

    def points(self, image: np.ndarray, **options) -> np.ndarray:
        """Cell centres ``(N, 2)`` (y, x) in ``image``: local maxima of the predicted map.
        ``options`` as ``predict``'s."""
        return self.predict(image, **options).points

    def _input(
        self, image: np.ndarray, channel: int | None, source: str | None, separate: bool = False
    ) -> tuple[np.ndarray, list[str]]:
        """The image as the network takes it (its channel or colours) and notes on the choice:
        ``pick_channel``'s choice for a model trained on its choices (``config.pick_channel``),
        a chosen ``channel``, or images of separate stains; else, as the paper models were
        trained, the colours averaged (one input channel) or kept (three)."""
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[2] > 4:  # many stains: as_image takes at most 4
            array, separate = array.astype(np.float32), True
        else:
            array = as_image(array, source)
        note = None
        if self.config.pick_channel or channel is not None or separate:
            array, note = pick_channel(array, channel, separate_channels=separate, source=source)
        return to_channels(array, self.config.in_channels), [note] if note else []

    def check_diameter(self, given: float) -> float:
        """``given``, a cell diameter to count at, if this model can rescale to it; else an
        ``InputError`` saying why not."""
        if not (np.isfinite(given) and given > 0):
            raise InputError(None, f"diameter must be a positive number of pixels, got {given}")
        if self.config.diameter is None:
            raise InputError(
                None,
                f"this {self.config.arch} model records no training cell diameter, so it"
                " cannot rescale images to a given one; count without --diameter",
            )
        return float(given)

    def _diameter(self, image: np.ndarray, given: float | None) -> tuple[float | None, bool]:
        """(the cell diameter to count at, whether it was estimated)."""
        if given is not None:
            return self.check_diameter(given), False
        if self.config.diameter is None or not self.config.auto_diameter:
            return None, False
        estimate = cell_size.measure_diameter(image)
        if not estimate.confidence > 0:
            return float("nan"), True
        if self.config.size_model is None:
            return estimate.diameter, True
        return refine_diameter(self, image, estimate.diameter), True

    def _scale(self, diameter: float | None, shape: tuple[int, ...]) -> float:
        """How much to rescale an image with cells of ``diameter`` so that they have the
        model's; 1 if either is unknown or they differ by less than ``SCALE_TOLERANCE``."""
        if diameter is None or self.config.diameter is None or not np.isfinite(diameter):
            return 1.0
        scale = self.config.diameter / diameter
        smallest = self.min_size * self.config.downsample / min(shape)
        scale = max(scale, smallest)  # never below the model's smallest input
        return scale if needs_rescaling(scale) else 1.0

    def count_from_map(self, output: np.ndarray) -> float:
        return float(output.sum(dtype=np.float64) / self.count_divisor)

    def count_sigma(self, log_variance: np.ndarray) -> float:
        """The predicted (uncalibrated) standard deviation of the count: the square root of the
        summed per-pixel variance shares, in cells."""
        variance = np.exp(log_variance.astype(np.float64)).sum()
        return float(np.sqrt(variance) / self.count_divisor)

    def count_interval(
        self, output: np.ndarray, level: float, region: np.ndarray | None = None
    ) -> CountInterval:
        """The count of a ``(2, H, W)`` output (map, log-variance) with its interval at
        ``level``, calibrated by the model's conformal scores; with ``region`` (an ``(H, W)``
        boolean mask), the count and interval of that region only."""
        check_intervals(self, level)
        if region is not None:
            if self.shrink:
                raise ValueError(
                    f"{self.config.arch} gives no region intervals: its map is not image-sized"
                )
            output = self._on_image_pixels(output, region.shape)
            if region.shape != output.shape[1:]:
                raise ValueError(
                    f"a region must be a mask of the image's {output.shape[1:]} pixels, got"
                    f" {region.shape}"
                )
            output = np.where(region, output, [[[0.0]], [[-np.inf]]])  # outside: no count
        count, sigma = self.count_from_map(output[0]), self.count_sigma(output[1])
        return interval(count, sigma, self.config.conformal_scores, level)

    def training_target(self, points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The map the network learns to output for an input of ``shape`` with ``points``
        (both on the network's grid: see ``image_target``)."""
        return density_map(points, shape, self.config.sigma, self.config.scale)

    # ---- training: what the loop in ``celltally.train`` asks of the model -------------------
    def training_phases(self) -> tuple[TrainingPhase, ...]:
        """The stages of this model's training, in order (``celltally.models.phases``)."""
        return MAP_PHASES

    def training_loss(
        self, phase: TrainingPhase, inputs: torch.Tensor, targets: torch.Tensor, loss: str
    ) -> torch.Tensor:
        """The loss of one batch of ``phase``: ``loss`` (``celltally.losses.LOSSES``) between the
        map (its first channel: a variance head is fitted after training) and the targets, on
        the pixels the model reads (every ``window_stride``-th row and column)."""
        stride = self.config.window_stride
        prediction = self.forward_padded(inputs).float()[:, :1, ::stride, ::stride]
        return LOSSES[loss](prediction, targets[..., ::stride, ::stride])

    def start_epoch(self, phase: TrainingPhase) -> None:
        """Set the modes of the model's parts for an epoch of ``phase``."""
        self.train()
        if phase.batches == "whole":
            # Inference normalises with the statistics gathered on patches; freezing them lets
            # the whole-image phase correct the count offset those statistics leave (batches
            # of one whole image would give poor statistics anyway).
            self.freeze_batch_norm()

    def end_epoch(self, phase: TrainingPhase, batches: list[torch.Tensor]) -> None:
        """After an epoch of ``phase`` over ``batches`` (its inputs): nothing to do here."""

    def own_mask(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's foreground mask of normalised images, for phases on ``own_masks``."""
        raise NotImplementedError(f"{self.config.arch} does not segment its images")

    def image_target(self, points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The training target of an image of ``shape`` with ``points``, on the pixels of the
        network's (``downsample``d) grid."""
        factor = self.config.downsample
        grid_shape = (-(-shape[0] // factor), -(-shape[1] // factor))
        return self.training_target(to_grid_points(points, factor), grid_shape)

    def density_and_centre_map(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The cells per pixel of an output map on the network's grid (summing to the count),
        and the map whose local maxima are the centres: the output itself here."""
        return output / np.float32(self.count_divisor), output

    def density(self, output: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Cells per pixel on the image's pixels (cropped to its ``shape``, needed when
        ``downsample`` does not divide it), summing to the count."""
        return upsample(self.density_and_centre_map(output)[0], self.config.downsample, shape)

    def centre_map(self, output: np.ndarray) -> np.ndarray:
        """The map whose local maxima are the centres, on the network's grid."""
        return self.density_and_centre_map(output)[1]

    def peaks(self, output: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Local maxima of ``centre_map(output)`` at least ``min_distance`` apart and above
        the threshold, in the image's pixel coordinates."""
        found = self.local_maxima(self.centre_map(output), threshold)
        return to_image_points(found, self.config.downsample)

    def local_maxima(self, centre_map: np.ndarray, threshold: float | None = None) -> np.ndarray:
        threshold = self.config.peak_threshold if threshold is None else threshold
        found = peak_local_max(
            centre_map,
            min_distance=self.config.min_distance,
            threshold_abs=threshold,
            exclude_border=False,
        )
        return found.astype(np.float64)

    def predict_map(self, image: np.ndarray, source: str | None = None) -> np.ndarray:
        """The output map (see the module docs), predicted in tiles if the image is large."""
        return self.predict_output(image, source)[0]

    @torch.no_grad()
    def predict_output(
        self,
        image: np.ndarray,
        source: str | None = None,
        tile: int | None = None,
        tta: bool | None = None,
        chosen: bool = False,
        empty: bool | None = None,
    ) -> np.ndarray:
        """The network's ``(out_channels, H, W)`` output for an image as it is (not rescaled):
        the map, never negative, then its log-variance if the model has a variance head; with
        the count calibration applied. ``tile`` and ``tta`` as ``predict``'s; ``chosen`` as
        ``prepare``'s.

        An image with no contrast above its noise (black, white, flat or pure noise) holds
        nothing to count: its map and variance are 0 (standardising it magnifies the noise, or
        divides by a zero deviation, and the network would count the noise's grain: a 512 x
        512 field of photon noise counted 4,808 cells). ``empty`` says whether it is
        (``predict`` judges the image before rescaling it, which would smooth the noise);
        ``None``: judged here (``ood.has_signal``)."""
        tensor = self.prepare(image, source, chosen)
        nothing = not has_signal(image_contrast(image)) if empty is None else empty
        was_training = self.training
        self.eval()
        run = predict_dihedral if (self.config.tta if tta is None else tta) else predict_tiled
        try:
            output = run(self, tensor, tile or self.config.tile_size, self.tile_margin)
        finally:
            self.train(was_training)
        if self.config.log_variance_range is not None:
            np.clip(output[1:], *self.config.log_variance_range, out=output[1:])
        if nothing:  # no cells, no uncertainty: a zero map with zero variance
            output[0], output[1:] = 0.0, -np.inf
        return affine_output(output, self.config.count_gain, self.config.count_offset)

    def prepare(
        self, image: np.ndarray, source: str | None = None, chosen: bool = False
    ) -> torch.Tensor:
        """Raw image -> ``downsample``d, normalised, zero-padded ``(C, h + 2 pad, w + 2 pad)``
        float tensor on the model's device. ``chosen``: the image's channels are already the
        network's (``predict`` chose them), so they are not chosen again."""
        image = as_image(image, source) if chosen else self._input(image, None, source)[0]
        height, width = image.shape[:2]
        factor = self.config.downsample
        if min(height, width) < self.min_size * factor:
            raise InputError(
                source,
                f"image of {height}x{width} pixels is smaller than the"
                f" {self.min_size * factor}x{self.min_size * factor} minimum of"
                f" {self.config.arch}" + (f" at downsample {factor}" if factor > 1 else ""),
            )
        image = downsample(image, factor)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return self.network_input(tensor).to(self.device)

    def _on_image_pixels(self, output: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """An image-sized ``(2, h, w)`` output (map, log-variance) of a ``downsample``d image on
        the image's ``shape`` pixels: each grid pixel's count and variance shared by its block."""
        factor = self.config.downsample
        if factor == 1:
            return output
        grid_map, log_variance = output
        log_share = upsample(log_variance, factor, shape, share=False) - np.float32(
            2 * np.log(factor)
        )
        return np.stack([upsample(grid_map, factor, shape), log_share])

    def network_input(self, image: torch.Tensor) -> torch.Tensor:
        """A ``(C, H, W)`` image normalised and zero-padded by ``pad``, as the network sees it."""
        return F.pad(normalise(image), (self.pad,) * 4)

    def train(self, mode: bool = True) -> CountingModel:
        """As ``nn.Module.train``, but with ``frozen_bn`` BatchNorm always uses its statistics."""
        super().train(mode)
        if self.config.frozen_bn:
            self.freeze_batch_norm()
        return self

    def freeze_batch_norm(self) -> None:
        """Put every BatchNorm layer in evaluation mode: it normalises with its statistics and
        no longer updates them."""
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()

    # ---- network plumbing -----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward_padded(self, batch: torch.Tensor) -> torch.Tensor:
        """Run the network on ``(B, C, H, W)`` of any size: zero-pad to the stride, crop back.

        Activations are kept channels-last, which oneDNN convolves about 1.4x faster on CPUs.
        """
        height, width = batch.shape[-2:]
        pad_h, pad_w = -height % self.stride, -width % self.stride
        padded = F.pad(batch, (0, pad_w, 0, pad_h)).contiguous(memory_format=torch.channels_last)
        output = self(padded)
        return output[..., : output.shape[-2] - pad_h, : output.shape[-1] - pad_w]

    def init_weights(self) -> None:
        """Orthogonal initialisation (Saxe et al. 2014), as in the FCRN paper; zero biases."""
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        for index, module in enumerate(convs):
            is_last = index == len(convs) - 1
            nn.init.orthogonal_(
                module.weight, gain=1.0 if is_last else nn.init.calculate_gain("relu")
            )
            nn.init.zeros_(module.bias)


@contextmanager
def averaging_batch_norm(module: nn.Module) -> Iterator[None]:
    """Within the block, ``module`` is in training mode and every BatchNorm in it restarts its
    statistics and averages them, unweighted, over the forward passes run (precise BatchNorm,
    Wu & Johnson 2021); afterwards the modes and momenta are restored.

    A count sums a map over many pixels, so the noise and lag that the running averages of
    training keep in the statistics (they follow the last few dozen steps) become count biases.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    was_training = module.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average
    module.train()
    try:
        yield
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        module.train(was_training)


def variance_head(config: ModelConfig, in_maps: int) -> nn.Conv2d | None:
    """With ``config.variance_head``, a 1x1 convolution from the ``in_maps`` features that the
    map's last layer reads to the log-variance; zero until it is fitted after training."""
    if not config.variance_head:
        return None
    layer = nn.Conv2d(in_maps, 1, 1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def map_and_variance(
    layers: nn.Sequential, head: nn.Conv2d | None, x: torch.Tensor
) -> torch.Tensor:
    """``relu(layers(x))``, a map that is never negative, so neither is any count read from it;
    with a variance ``head``, its log-variance as a second channel, read linearly from the input
    of the last layer (a nonlinearity there would clip it)."""
    if head is None:
        return F.relu(layers(x))
    features = layers[:-1](x)
    return torch.cat([F.relu(layers[-1](features)), head(features)], dim=1)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Standardise each image (``(C, H, W)`` or ``(B, C, H, W)``) by its own mean and std."""
    dims = tuple(range(images.ndim - 3, images.ndim))
    mean = images.mean(dim=dims, keepdim=True)
    std = images.std(dim=dims, keepdim=True)
    return (images - mean) / std.clamp_min(1e-6)

"""cellcount (Hernandez, Sultan & Pande 2018): segment with a feature pyramid network, then count
the predicted mask with VGG-11, each with its aleatoric uncertainty.

Segmenter (``FeaturePyramid``): an encoder of four stages (two 3x3 convolutions with BatchNorm and
LeakyReLU each; 32, 64, 128, 256 maps; max-pooling between), a top-down pathway (1x1 lateral
convolutions to 64 maps, nearest upsampling and addition, a 3x3 smoothing convolution) and, at
each of the 4 scales (1, 1/2, 1/4, 1/8), a 1x1 head to a foreground logit and its log-variance.
Trained on foreground masks by ``segmentation_loss``.

Counter (``VGG11Counter``): VGG-11 (configuration A: 64, M, 128, M, 256, 256, M, 512, 512, M, 512,
512, M) with BatchNorm and LeakyReLU, reading the finest predicted mask. In place of VGG's
fully connected layers, whose input size is fixed, 1x1 convolutions (512 -> 256 -> 2) give every
32x32 cell of the image a count (softplus: never negative) and a log-variance; the image's count
and variance are their sums. So it accepts any image size, and a region's count is the sum over
its cells. Trained by Gaussian likelihood on the counts of the frozen segmenter's masks of the
training images (whole, or random crops counting the dots inside).

The output, like every model's, is image-sized: each cell's count is spread over its pixels in
proportion to the predicted mask (so the density sums to the count and sits on the cells), and
its variance evenly (each pixel's additive share, see ``celltally.uncertainty``). Centres are
the local maxima of the smoothed density.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import nn

from celltally.losses import gaussian_nll, total_variation
from celltally.models.base import CountingModel, averaging_batch_norm
from celltally.models.config import ModelConfig
from celltally.models.phases import TrainingPhase
from celltally.models.registry import register_model

LEAK = 0.01
SCALES = 4
VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
CELL = 32  # the counter's output stride: one count per 32x32 cell
MASK_FLOOR = 0.05  # share of a cell's count every pixel keeps, so empty-looking cells spread it
CENTRE_SMOOTHING = 2.0  # pixels: Gaussian applied to the density before finding centres
# Batches of a counter epoch over which the counter's BatchNorm statistics are averaged after it.
STATISTICS_BATCHES = 32
# The mask's log-variance floor in the segmenter's loss: a standard deviation of 0.01 (of a mask
# in [0, 1]). Without it a tenth of the pixels of a trained segmenter's mask sat at the loss's
# -20, and its loss on whole images was dominated by a few pixels' errors times e^20.
MASK_MIN_LOG_VARIANCE = 2 * np.log(0.01)


def conv_bn(in_maps: int, out_maps: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_maps, out_maps, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_maps),
        nn.LeakyReLU(LEAK, inplace=True),
    )


class FeaturePyramid(nn.Module):
    """Image -> ``SCALES`` (mask logit, log-variance) pairs, finest first."""

    def __init__(self, in_maps: int, widths: tuple[int, ...] = (32, 64, 128, 256), top: int = 64):
        super().__init__()
        stages, previous = [], in_maps
        for width in widths:
            stages.append(nn.Sequential(conv_bn(previous, width), conv_bn(width, width)))
            previous = width
        self.stages = nn.ModuleList(stages)
        self.laterals = nn.ModuleList(nn.Conv2d(w, top, 1) for w in widths)
        self.smooth = nn.ModuleList(conv_bn(top, top) for _ in widths)
        self.heads = nn.ModuleList(nn.Conv2d(top, 2, 1) for _ in widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for index, stage in enumerate(self.stages):
            x = stage(x if index == 0 else F.max_pool2d(x, 2))
            features.append(x)
        outputs, merged = [], None
        for level in reversed(range(len(features))):
            lateral = self.laterals[level](features[level])
            merged = lateral if merged is None else lateral + F.interpolate(merged, scale_factor=2)
            outputs.append(self.heads[level](self.smooth[level](merged)))
        return outputs[::-1]


class VGG11Counter(nn.Module):
    """A mask -> per-cell (count, log-variance), ``(B, 2, H/32, W/32)``."""

    def __init__(self, in_maps: int = 1):
        super().__init__()
        layers, previous = [], in_maps
        for item in VGG11:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(conv_bn(previous, item))
                previous = item
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Conv2d(previous, 256, 1), nn.LeakyReLU(LEAK, inplace=True), nn.Conv2d(256, 2, 1)
        )

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        raw = self.head(self.features(mask))
        return torch.cat([F.softplus(raw[:, :1]), raw[:, 1:]], dim=1)


@register_model("fpn_vgg11")
class FPNVGG11(CountingModel):
    stride = 32
    tile_margin = 256  # the counter's receptive field is ~200 px; tiles are approximate
    min_size = 32
    # Patch epochs train the segmenter on 128x128 patches; "fine-tuning" epochs the counter on
    # the frozen segmenter's masks in batches, as 256x256 crops (``counter_crop``). The counter
    # learns from the masks of the images the segmenter was trained on, which are cleaner than
    # those of new images: on synthetic bbbc005 it counted 3.8 cells too many on new images
    # (mean), a bias the count calibration on the validation images removes (test MAE 4.19 ->
    # 1.92; benchmarks/RESULTS.md, "Count intervals").
    recipe: ClassVar[dict] = {
        "refit_readout": False,
        "per_patch_norm": False,
        "patch_size": 128,
        "batch_size": 8,
        "epochs": 10,
        "finetune_epochs": 20,
        "finetune_lr": 1e-4,
        "counter_crop": 256,
        "weight_decay": 0.0,
        "calibrate_counts": True,
    }

    def __init__(self, config: ModelConfig):
        # the model always predicts its variance (a copy: the caller's config is left alone)
        super().__init__(replace(config, variance_head=True))
        self.segmenter = FeaturePyramid(config.in_channels)
        self.counter = VGG11Counter()

    @property
    def count_divisor(self) -> float:
        return 1.0

    def segment(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(mask logit, log-variance) ``(B, 2, H/2^k, W/2^k)`` for k = 0..3."""
        return self.segmenter(x)

    def count_cells(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The finest predicted mask and the counter's ``(B, 2, H/32, W/32)`` cells."""
        mask = torch.sigmoid(self.segment(x)[0][:, :1])
        return mask, self.counter(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask, cells = self.count_cells(x)
        weights = mask + MASK_FLOOR
        share = weights / F.interpolate(
            F.avg_pool2d(weights, CELL) * CELL**2, scale_factor=CELL, mode="nearest"
        )
        counts = F.interpolate(cells[:, :1], scale_factor=CELL, mode="nearest")
        log_variance = F.interpolate(cells[:, 1:], scale_factor=CELL, mode="nearest")
        return torch.cat([counts * share, log_variance - 2 * np.log(CELL)], dim=1)

    def density_and_centre_map(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The map (cells per pixel), and it smoothed for its peaks: the counter's 32x32
        cells spread their counts over the mask's pixels, which are flat inside a cell."""
        return output, gaussian_filter(output, CENTRE_SMOOTHING)

    def training_target(self, points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        raise ValueError("fpn_vgg11 trains on foreground masks and counts, not on a target map")

    def training_phases(self) -> tuple[TrainingPhase, ...]:
        """The segmenter on patches and their foreground masks (not validated: the counter is
        not trained yet), then the counter on the frozen segmenter's masks."""
        return (
            TrainingPhase("patches", "patches", targets="masks", validated=False),
            TrainingPhase("finetune", "own_masks", required=True),
        )

    def training_loss(
        self, phase: TrainingPhase, inputs: torch.Tensor, targets: torch.Tensor, loss: str
    ) -> torch.Tensor:
        """The segmenter's ``segmentation_loss`` on image patches and their masks, or the
        counter's ``count_loss`` on predicted masks ``(B, 1, H, W)`` and their counts (its own
        losses, whatever ``loss`` says)."""
        if phase.batches == "own_masks":
            return count_loss(self.counter(_padded_to_cells(inputs)), targets)
        return segmentation_loss(self.segment(inputs), targets)

    def start_epoch(self, phase: TrainingPhase) -> None:
        self.train()
        if phase.batches == "own_masks":
            self.segmenter.eval()  # frozen: its masks are the counter's input

    @torch.no_grad()
    def end_epoch(self, phase: TrainingPhase, batches: list[torch.Tensor]) -> None:
        """After a counter epoch, set the counter's BatchNorm statistics to their plain average
        over (up to ``STATISTICS_BATCHES`` of) its ``batches`` of masks. The image count sums
        the counter's output over hundreds of cells: the running averages of training halved
        the counts at inference here."""
        if phase.batches != "own_masks":
            return
        with averaging_batch_norm(self.counter):
            for batch in batches[:: -(-len(batches) // STATISTICS_BATCHES)]:
                self.counter(_padded_to_cells(batch))

    @torch.no_grad()
    def own_mask(self, inputs: torch.Tensor) -> torch.Tensor:
        """The finest predicted mask of normalised images ``(B, C, H, W)``, what the counter
        reads: computed on the images padded to a multiple of 32, then cut back to ``H, W``."""
        height, width = inputs.shape[-2:]
        return torch.sigmoid(self.segment(_padded_to_cells(inputs))[0][:, :1])[..., :height, :width]


def _padded_to_cells(batch: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` zero-padded at the bottom and right to a multiple of the cell size."""
    height, width = batch.shape[-2:]
    return F.pad(batch, (0, -width % CELL, 0, -height % CELL))


def segmentation_loss(
    outputs: list[torch.Tensor], mask: torch.Tensor, smoothing: float = 0.1
) -> torch.Tensor:
    """Gaussian likelihood of the foreground mask (average-pooled to each scale) under the
    predicted mask (sigmoid of the logit) and log-variance, plus ``smoothing`` x the total
    variation of the predicted mask, summed over the scales."""
    total = mask.new_zeros(())
    for level, output in enumerate(outputs):
        target = F.avg_pool2d(mask, 2**level) if level else mask
        predicted = torch.sigmoid(output[:, :1])
        total = total + gaussian_nll(predicted, output[:, 1:], target, MASK_MIN_LOG_VARIANCE)
        total = total + smoothing * total_variation(predicted)
    return total


def count_loss(cells: torch.Tensor, true_counts: torch.Tensor) -> torch.Tensor:
    """Gaussian likelihood of the true image counts under the summed cell counts and
    variances."""
    count = cells[:, 0].sum(dim=(-2, -1))
    log_variance = torch.logsumexp(cells[:, 1].flatten(1), dim=1)
    return gaussian_nll(count, log_variance, true_counts)

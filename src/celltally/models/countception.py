"""Count-ception (Cohen, Boucher, Glastonbury, Lo & Bengio 2017): redundant counting.

The network counts the cells in every 32x32 window of the image zero-padded by 32 pixels, so its
output for an HxW image is a (H+32)x(W+32) count map in which every cell is counted 32 x 32 =
1024 times; the count is the map's sum / 1024. Read every ``s``-th pixel (``window_stride``) and
each cell is counted (32/s)^2 times instead.

Layers, as in the original Lasagne code: a 3x3 convolution to 64 maps; Inception-style blocks
that concatenate a 1x1 and a 3x3 ("same") convolution (16|16, 16|32); a 14x14 valid convolution
to 16 maps; blocks 112|48, 64|32, 40|40, 32|96; an 18x18 valid convolution to 32 maps; 1x1
convolutions to 64, 64 and 1 maps. Every convolution is followed by BatchNorm (so it has no bias)
and LeakyReLU(0.01), the output included. With the 32-pixel padding done on the image, the
network itself pads nothing but the 3x3 branches: 3 + 14 + 18 - 3 = 32 pixels are lost, and the
output is the image size + 32. 1,681,058 parameters for one input channel (1,679,488
convolution weights, 1,570 BatchNorm scales and shifts).

The 14x14 and 18x18 convolutions are nearly 90% of the arithmetic. ``FFTConv2d`` computes them
by FFT in 64x64 tiles (overlap-save): the same function to float32 rounding, and the training
step 3x faster (``benchmarks/RESULTS.md``).

The paper says a count map cannot give positions. It can: the count map is the dot map convolved
with a 32x32 box, so Richardson-Lucy deconvolution (non-negative by construction) recovers a
density whose local maxima are the centres (``centre_map``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import nn

from celltally.models.base import CountingModel, map_and_variance, variance_head
from celltally.models.config import ModelConfig
from celltally.models.registry import register_model
from celltally.targets import WINDOW, count_map, window_sums, window_sums_adjoint

LEAK = 0.01
FFT_BLOCK = 64  # overlap-save tile side: the fastest of 48, 64, 80, 96 and 128 measured
DECONVOLUTION_STEPS = 100  # F1 0.88 on ideal maps, 0.6 s per 256x256 image (RESULTS.md)
CENTRE_SMOOTHING = 1.0  # pixels: Gaussian applied to the deconvolved density before peaks


def fft_conv2d(x: torch.Tensor, weight: torch.Tensor, block: int = FFT_BLOCK) -> torch.Tensor:
    """Valid cross-correlation (``F.conv2d`` with no padding and no bias) by FFT, in ``block`` x
    ``block`` tiles, with its own exact backward pass.

    Overlap-save: each tile's circular correlation with the zero-padded kernel is exact in its
    first ``block - k + 1`` rows and columns, and the tiles overlap by ``k - 1``. Per frequency,
    mixing the channels is one small matrix product, batched over all frequencies.
    """
    return _FFTCorrelation.apply(x, weight, block)


class _FFTCorrelation(torch.autograd.Function):
    """The backward pass in the frequency domain too: the input gradient is the full
    convolution of each output-gradient tile with the kernel (overlap-added with ``fold``), the
    kernel gradient the correlation of the input tiles with the output-gradient tiles. Both
    reuse the forward's spectra; autograd through the FFTs would cost about 1.5x as much."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, block: int) -> torch.Tensor:
        batch, _, height, width = x.shape
        kernel = weight.shape[-1]
        step = block - kernel + 1
        tiles_y, tiles_x = -(-(height - kernel + 1) // step), -(-(width - kernel + 1) // step)
        padded = (tiles_y * step + kernel - 1, tiles_x * step + kernel - 1)
        x = F.pad(x, (0, padded[1] - width, 0, padded[0] - height))
        tiles = x.unfold(2, block, step).unfold(3, block, step)  # B C Ty Tx block block
        x_spectra = _spectra(tiles, block)  # (frequencies, tiles, channels)
        w_spectra = _spectra(weight[:, :, None, None], block).transpose(1, 2)  # (f, in, out)
        w_conj = w_spectra.conj().resolve_conj()  # bmm is ~3x slower on lazy conjugates
        out = _images(torch.bmm(x_spectra, w_conj), (batch, tiles_y, tiles_x), block)
        ctx.save_for_backward(x_spectra, w_spectra)
        ctx.sizes = (batch, height, width, kernel, block, padded)
        out = out[..., :step, :step].permute(0, 1, 2, 4, 3, 5)
        out = out.reshape(batch, -1, tiles_y * step, tiles_x * step)
        return out[..., : height - kernel + 1, : width - kernel + 1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x_spectra, w_spectra = ctx.saved_tensors
        batch, height, width, kernel, block, padded = ctx.sizes
        step = block - kernel + 1
        tiles_y, tiles_x = (padded[0] - kernel + 1) // step, (padded[1] - kernel + 1) // step
        grad = F.pad(grad, (0, tiles_x * step - grad.shape[-1], 0, tiles_y * step - grad.shape[-2]))
        grad = grad.reshape(batch, -1, tiles_y, step, tiles_x, step).permute(0, 1, 2, 4, 3, 5)
        g_spectra = _spectra(grad, block)  # (frequencies, tiles, out)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            mixed = torch.bmm(g_spectra, w_spectra.transpose(1, 2))
            tiles = _images(mixed, (batch, tiles_y, tiles_x), block)  # B C Ty Tx block block
            columns = tiles.permute(0, 1, 4, 5, 2, 3).reshape(batch, -1, tiles_y * tiles_x)
            grad_x = F.fold(columns, padded, block, stride=step)[..., :height, :width]
        if ctx.needs_input_grad[1]:
            g_conj = g_spectra.conj().resolve_conj()
            mixed = torch.bmm(x_spectra.transpose(1, 2), g_conj)  # (f, in, out)
            maps = mixed.shape[-1]
            grad_w = _images(mixed.transpose(1, 2), (maps, 1, 1), block)
            grad_w = grad_w[:, :, 0, 0, :kernel, :kernel]
        return grad_x, grad_w, None


def _spectra(tiles: torch.Tensor, block: int) -> torch.Tensor:
    """``(B, C, Ty, Tx, h, w)`` tiles -> their ``block``-point 2D spectra as ``(frequencies,
    B * Ty * Tx, C)``, contiguous: the layout of a matrix product per frequency. (The FFT leaves
    the frequencies innermost; on that layout ``bmm`` copies every small matrix, 3x slower.)"""
    batch, channels, tiles_y, tiles_x = tiles.shape[:4]
    spectra = torch.fft.rfft2(tiles, s=(block, block)).permute(4, 5, 0, 2, 3, 1)
    return spectra.reshape(-1, batch * tiles_y * tiles_x, channels).contiguous()


def _images(spectra: torch.Tensor, tiles: tuple[int, int, int], block: int) -> torch.Tensor:
    """The inverse of ``_spectra``: ``(frequencies, B * Ty * Tx, C)`` -> ``(B, C, Ty, Tx,
    block, block)``."""
    batch, tiles_y, tiles_x = tiles
    spectra = spectra.reshape(block, block // 2 + 1, batch, tiles_y, tiles_x, -1)
    return torch.fft.irfft2(spectra.permute(2, 5, 3, 4, 0, 1), s=(block, block))


class FFTConv2d(nn.Conv2d):
    """A valid convolution computed by ``fft_conv2d`` while ``fast`` (the default), else
    directly; the weights, and so the checkpoints, are those of ``nn.Conv2d``."""

    def __init__(self, in_maps: int, out_maps: int, kernel: int):
        super().__init__(in_maps, out_maps, kernel, bias=False)
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast:  # channels-last 18x18 backward is >20x slower in oneDNN: avoid it
            return F.conv2d(x.contiguous(), self.weight.contiguous())
        with torch.autocast(x.device.type, enabled=False):  # no half-precision FFTs
            return fft_conv2d(x.to(self.weight.dtype).contiguous(), self.weight)


def conv_block(in_maps: int, out_maps: int, kernel: int, padding: int = 0) -> nn.Sequential:
    """Convolution, BatchNorm, LeakyReLU; large kernels are FFT convolutions."""
    conv = (
        FFTConv2d(in_maps, out_maps, kernel)
        if kernel > 3
        else nn.Conv2d(in_maps, out_maps, kernel, padding=padding, bias=False)
    )
    return nn.Sequential(conv, nn.BatchNorm2d(out_maps), nn.LeakyReLU(LEAK, inplace=True))


class Inception(nn.Module):
    """A 1x1 and a 3x3 convolution of the same input, concatenated."""

    def __init__(self, in_maps: int, maps_1x1: int, maps_3x3: int):
        super().__init__()
        self.branch_1x1 = conv_block(in_maps, maps_1x1, 1)
        self.branch_3x3 = conv_block(in_maps, maps_3x3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch_1x1(x), self.branch_3x3(x)], dim=1)


@register_model("countception")
class CountCeption(CountingModel):
    stride = 1
    pad = WINDOW
    shrink = WINDOW
    # A count-map pixel i counts the 32 image rows ending at row i (see ``count_map``); in the
    # mirrored image they end at row H + 30 - i, one before the reversed index H + 31 - i of its
    # H + 32 rows. The row rolled in from the other end is the window past the image, always
    # empty.
    flip_shift = 1
    tile_margin = 16  # > the reach of the six 3x3 "same" convolutions after the first layer
    min_size = 1
    # L1, Adam at 5e-3 and batches of 4 as in the paper, with BatchNorm's batch statistics. The
    # original froze BatchNorm (an affine layer); frozen, 5e-3 makes the loss explode in the
    # first steps (233 in epoch 1) and 3e-4 learns fastest in 300 steps, but over the whole
    # recipe batch statistics at 5e-3 ended better on VGG cells draw 0: test MAE 3.12 against
    # 4.84, one run each (the tables "BatchNorm and learning rate" in benchmarks/RESULTS.md).
    # Refitting the readout after each epoch steadies the validation curve but ended at 3.46.
    # Its counts regress towards the mean (slope 0.96 against the true counts on VGG cells);
    # the count calibration fitted on the validation images removes that.
    recipe: ClassVar[dict] = {
        "loss": "l1",
        "optimizer": "adam",
        "lr": 5e-3,
        "batch_size": 4,
        "weight_decay": 0.0,
        "per_patch_norm": False,
        "refit_readout": False,
        "calibrate_counts": True,
        "frozen_bn": False,
        "patch_size": 128,
        "epochs": 20,
        "lr_step": 14,
        "finetune_epochs": 2,
    }

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.layers = nn.Sequential(
            conv_block(config.in_channels, 64, 3),
            Inception(64, 16, 16),
            Inception(32, 16, 32),
            conv_block(48, 16, 14),
            Inception(16, 112, 48),
            Inception(160, 64, 32),
            Inception(96, 40, 40),
            Inception(80, 32, 96),
            conv_block(128, 32, 18),
            conv_block(32, 64, 1),
            conv_block(64, 64, 1),
            conv_block(64, 1, 1),
        )
        self.init_weights()
        self.log_variance = variance_head(config, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return map_and_variance(self.layers, self.log_variance, x)

    def init_weights(self) -> None:
        """Glorot-uniform weights with the LeakyReLU gain, as in the original code."""
        gain = nn.init.calculate_gain("leaky_relu", LEAK)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight, gain=gain)

    def use_fft(self, fast: bool) -> CountCeption:
        """Compute the large convolutions by FFT (``True``, the default) or directly."""
        for module in self.modules():
            if isinstance(module, FFTConv2d):
                module.fast = fast
        return self

    # ---- readout ----------------------------------------------------------------------------
    @property
    def readout(self) -> nn.Conv2d:
        """The last 1x1 convolution: BatchNorm at inference is affine and LeakyReLU is the
        identity on the non-negative count map, so the output is linear in its features where
        the map is positive."""
        return self.layers[-1][0]

    @torch.no_grad()
    def set_readout(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Folded through the BatchNorm's inference statistics (which stay as they are): the
        convolution has no bias, so the BatchNorm's shift takes it."""
        norm = self.layers[-1][1]
        std = torch.sqrt(norm.running_var.double() + norm.eps)
        gain = norm.weight.double()
        shape = self.readout.weight.shape
        self.readout.weight.copy_((weight.double() * std / gain).reshape(shape))
        norm.bias.copy_(bias.double() + gain * norm.running_mean.double() / std)

    @property
    def count_divisor(self) -> float:
        return (WINDOW / self.config.window_stride) ** 2

    def count_from_map(self, output: np.ndarray) -> float:
        """Sum of every ``window_stride``-th pixel / the times each cell is counted there."""
        step = self.config.window_stride
        return float(output[::step, ::step].sum(dtype=np.float64) / self.count_divisor)

    def count_sigma(self, log_variance: np.ndarray) -> float:
        step = self.config.window_stride
        return super().count_sigma(log_variance[::step, ::step])

    def training_target(self, points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        return count_map(points, shape)

    def density_and_centre_map(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The dot density the count map is the window sums of (Richardson-Lucy
        deconvolution), scaled to sum to the count, and it lightly smoothed for its peaks."""
        density = recover_density(output)
        total = density.sum(dtype=np.float64)
        if total > 0:
            density = density * np.float32(self.count_from_map(output) / total)
        return density, gaussian_filter(density, CENTRE_SMOOTHING)


def recover_density(output: np.ndarray, steps: int = DECONVOLUTION_STEPS) -> np.ndarray:
    """Richardson-Lucy: the non-negative ``(H, W)`` density whose 32x32 window sums best explain
    the ``(H + 32, W + 32)`` count map (negative predictions are read as 0)."""
    observed = np.clip(output.astype(np.float64), 0.0, None)
    height, width = observed.shape[0] - WINDOW, observed.shape[1] - WINDOW
    total = observed.sum() / WINDOW**2
    density = np.full((height, width), total / (height * width))
    if total <= 0:
        return density.astype(np.float32)
    for _ in range(steps):  # every pixel lies in WINDOW**2 windows: the adjoint of 1 is that
        ratio = observed / np.maximum(window_sums(density), 1e-12)
        density *= window_sums_adjoint(ratio) / WINDOW**2
    return density.astype(np.float32)

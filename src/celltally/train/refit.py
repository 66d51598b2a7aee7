"""What is fitted in closed form (or by a convex fit) on whole training images once the network is
trained or between epochs: the linear readout, BatchNorm statistics, the variance head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from celltally.losses import gaussian_nll
from celltally.models import CountingModel, ModelConfig
from celltally.models.base import averaging_batch_norm
from celltally.models.registry import build_model

# Random pixels per image for fitting the variance head (its ~33-65 unknowns): enough, and
# the fit stays within a few hundred MB on 64 Count-ception images.
VARIANCE_PIXELS = 2**15


# Training images the variance head is fitted on, at most (every image of the paper recipes):
# the generalist's 1,100 ran this machine's 24 GB out of memory.
VARIANCE_IMAGES = 128


# A fitted variance head is clipped to these quantiles of its values on the pixels it was fitted on.
LOG_VARIANCE_QUANTILES = (0.001, 0.999)


# Gauss-Newton steps of the readout's fit through the ReLU. On VGG cells (the retrained bundled
# FCRN-A, 80 training images) they brought the test MAE from 15.0 (one refit on the pixels the
# first fit left positive or that have a target) to 2.53, 2.44 and 2.35 after 1, 2 and 3
# steps and the gain; each step is one more pass over the images.
ACTIVE_SET_STEPS = 2


@torch.no_grad()
def refit_readout(model: CountingModel, images: list[np.ndarray], points: list[np.ndarray]) -> None:
    """Refit the final 1x1 convolution on whole training images: least squares through the
    model's ReLU output stage, then a gain that makes their summed count exact.

    The count is the sum of the map over tens of thousands of pixels, so a per-pixel offset far
    below the MSE's noise level still shifts counts by several cells, and SGD noise on the last
    bias keeps moving it. The readout is linear in its input features, so a fit on the whole
    images is cheap. The map is ``relu(readout)``: a linear least-squares fit lets pixels it
    puts below zero offset the ones above, and the ReLU then clips them, so counts come out too
    high (8% on VGG cells). So the linear fit on every pixel is only the start: each
    Gauss-Newton step of the fit through the ReLU refits on the pixels the map is positive at
    (elsewhere the ReLU passes no gradient). A gain, which commutes with the ReLU, then makes
    the summed count over the images exact.
    """
    layer = model.readout
    solution = None
    for step in range(ACTIVE_SET_STEPS + 2):
        fit = _readout_fit(model, layer, images, points, solution)
        if step > ACTIVE_SET_STEPS:
            break
        solution = fit.solve()
    gain = fit.target_sum / fit.mapped_sum if fit.target_sum > 0 and fit.mapped_sum > 0 else 1.0
    model.set_readout(gain * solution[:-1], gain * solution[-1])


@dataclass
class _ReadoutFit:
    """The normal equations of a readout's least-squares fit on the pixels a solution maps
    above zero, and the summed map (through the ReLU) and target over every pixel."""

    gram: torch.Tensor
    moment: torch.Tensor
    mapped_sum: float = 0.0
    target_sum: float = 0.0

    def solve(self) -> torch.Tensor:
        n = len(self.moment)
        ridge = 1e-6 * self.gram.diagonal().mean() * torch.eye(n, dtype=torch.float64)
        return torch.linalg.solve(self.gram + ridge, self.moment)


def _readout_fit(model, layer, images, points, solution: torch.Tensor | None) -> _ReadoutFit:
    """One pass over the images: the fit on every pixel (no ``solution`` yet) or on those
    ``solution`` maps above zero, with its summed map and target."""
    n = layer.in_channels + 1
    fit = _ReadoutFit(torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64))
    for x, target, _ in _layer_inputs(model, layer, images, points):
        fit.target_sum += float(target.sum())
        if solution is not None:
            mapped = solution @ x
            fit.mapped_sum += float(mapped.clamp_min(0).sum())
            x, target = x[:, mapped > 0], target[mapped > 0]
        fit.gram += x @ x.T
        fit.moment += x @ target
    return fit


@torch.no_grad()
def refit_batch_norm(model: CountingModel, images: list[np.ndarray]) -> None:
    """Set every BatchNorm's statistics to their average over ``images``, each run whole, as at
    inference: a weight average has no statistics of its own (those of training belong to other
    weights)."""
    with averaging_batch_norm(model):
        for image in images:
            model.forward_padded(model.prepare(image)[None])


def fit_variance_head(
    model: CountingModel,
    images: list[np.ndarray],
    points: list[np.ndarray],
    pixels_per_image: int = VARIANCE_PIXELS,
) -> None:
    """Fit the log-variance head by maximum likelihood on whole training images, the rest of
    the model fixed.

    The head is linear in its features, ``log v = w.f + b``, so the Gaussian negative
    log-likelihood of the map's residuals ``r``, ``(r^2 exp(-log v) + log v) / 2``, is convex
    in ``(w, b)``: one optimum, found by L-BFGS in seconds. Learning the variance together with
    the map (Kendall & Gal 2017) instead lets it discount the pixels the map gets wrong, which
    cost FCRN-A 2 cells of MAE on VGG cells (4.80 against 2.64, N = 32, first draw). The fit uses
    ``pixels_per_image`` random pixels of each image.
    """
    layer = model.log_variance
    if layer is None:
        raise ValueError(
            f"this {model.config.arch} model has no variance head to fit; build it with"
            " variance_head=True (with_variance_head adds one to a trained model)"
        )
    rng = np.random.default_rng(0)
    features, residuals = [], []
    with torch.no_grad():
        for x, target, predicted in _layer_inputs(model, layer, images, points):
            keep = torch.from_numpy(rng.permutation(x.shape[1])[:pixels_per_image])
            features.append(x[:-1, keep])
            residuals.append((target - predicted)[keep])
    x, residual = torch.cat(features, 1), torch.cat(residuals)
    mean, std = x.mean(1, keepdim=True), x.std(1, keepdim=True).clamp_min(1e-6)
    z = (x - mean) / std  # standardised: L-BFGS converges in a few dozen steps
    weight = torch.zeros(len(z), dtype=torch.float64, requires_grad=True)
    bias = torch.log(residual.square().mean()).clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        loss = gaussian_nll(torch.zeros_like(residual), weight @ z + bias, residual)
        loss.backward()
        return loss

    optimizer.step(nll)
    with torch.no_grad():
        scaled = weight / std[:, 0]
        layer.weight.copy_(scaled.reshape(layer.weight.shape))
        layer.bias.copy_((bias - scaled @ mean[:, 0]).reshape(1))
        fitted = (weight @ z + bias).numpy()
    model.config.log_variance_range = np.quantile(fitted, LOG_VARIANCE_QUANTILES).tolist()


def with_variance_head(
    model: CountingModel, images: list[np.ndarray], points: list[np.ndarray]
) -> CountingModel:
    """A copy of a trained ``model`` with a variance head fitted on ``images`` and ``points``
    (its training images), to give intervals once calibrated (``celltally.uncertainty``)."""
    config = ModelConfig.from_dict(
        {**model.config.to_dict(), "variance_head": True, "conformal_scores": []}
    )
    copied = build_model(config)
    missing, _ = copied.load_state_dict(model.state_dict(), strict=False)
    if missing and not all(name.startswith("log_variance.") for name in missing):
        raise ValueError(f"{model.config.arch} cannot take a fitted variance head")
    fit_variance_head(copied, images, points)
    return copied


def _layer_inputs(model: CountingModel, layer: torch.nn.Module, images, points):
    """Per whole image: the features ``layer`` reads, ``(maps + 1, pixels)`` in float64 with a
    last row of ones, the target map and the predicted map, flattened at the target's size."""
    features: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda module, inputs, output: features.append(inputs[0]))
    model.eval()
    try:
        for image, dots in zip(images, points, strict=True):
            features.clear()
            output = model.forward_padded(model.prepare(image)[None])
            target = model.image_target(dots, image.shape[:2])
            height, width = target.shape
            x = features[0][0, :, :height, :width].reshape(layer.in_channels, -1).double()
            ones = torch.ones(1, x.shape[1], dtype=torch.float64)
            predicted = output[0, 0, :height, :width].reshape(-1).double()
            yield torch.cat([x, ones]), torch.from_numpy(target.reshape(-1)).double(), predicted
    finally:
        hook.remove()

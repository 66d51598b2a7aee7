"""What a model looked at and what its layers keep: saliency maps and feature inversion.

``saliency`` is |d count / d pixel| (Simonyan et al. 2014), the largest over colour channels; with
``samples`` > 0 it is SmoothGrad (Smilkov et al. 2017): the mean over copies of the normalised
image with Gaussian noise added, which removes the speckle of a single gradient. The gradient is
taken with respect to the normalised image the network sees, so it does not depend on the
image's intensity units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from celltally.data.images import upsample
from celltally.models.base import CountingModel

SMOOTHGRAD_NOISE = 0.15  # noise std, a fraction of the normalised image's range


def saliency(
    model: CountingModel,
    image: np.ndarray,
    samples: int = 0,
    noise: float = SMOOTHGRAD_NOISE,
    seed: int = 0,
    source: str | None = None,
) -> np.ndarray:
    """``(H, W)`` saliency of ``model``'s count of ``image`` (SmoothGrad with ``samples`` noisy
    copies if ``samples`` > 0). A bad image raises ``InputError`` naming ``source``."""
    model.eval()
    tensor = model.prepare(image, source)[None]
    pad = model.pad
    height, width = tensor.shape[-2] - 2 * pad, tensor.shape[-1] - 2 * pad
    unpadded = tensor[..., pad : pad + height, pad : pad + width]
    spread = float(unpadded.max() - unpadded.min())
    generator = torch.Generator().manual_seed(seed)
    copies = [
        tensor + noise * spread * torch.randn(tensor.shape, generator=generator)
        for _ in range(samples)
    ] or [tensor]
    total = sum(_count_gradient(model, copy) for copy in copies)
    grid = (total[pad : pad + height, pad : pad + width] / len(copies)).numpy()
    return upsample(grid, model.config.downsample, image.shape[:2])  # per image pixel


def _count_gradient(model: CountingModel, tensor: torch.Tensor) -> torch.Tensor:
    """|d count / d input| at every pixel, the largest over channels."""
    tensor = tensor.clone().requires_grad_(True)
    output = model.forward_padded(tensor)[:, 0]
    step = model.config.window_stride
    count = model.config.count_gain * output[..., ::step, ::step].sum() / model.count_divisor
    (gradient,) = torch.autograd.grad(count, tensor)
    return gradient[0].abs().amax(dim=0)


def layer_names(model: CountingModel) -> list[str]:
    """Names of the model's layers that ``invert`` accepts: every named submodule, in order."""
    return [name for name, _ in model.named_modules() if name]


@torch.no_grad()
def layer_table(model: CountingModel, side: int = 64) -> list[tuple[str, str, str]]:
    """(name, type, output shape for a ``side`` x ``side`` image) of every layer."""
    shapes: dict[str, str] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:
            tensor = output if torch.is_tensor(output) else output[0]
            shapes.setdefault(name, str(tuple(tensor.shape[1:])))

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        model.eval().forward_padded(
            torch.zeros(1, model.config.in_channels, side + 2 * model.pad, side + 2 * model.pad)
        )
    finally:
        for hook in hooks:
            hook.remove()
    return [(n, type(m).__name__, shapes.get(n, "-")) for n, m in model.named_modules() if n]


@dataclass
class Inversion:
    """A reconstruction from one layer's features, and the objective at every step."""

    layer: str
    image: np.ndarray  # (H, W, C), in the normalised units the network sees
    objective: list[float]
    correlation: float  # Pearson correlation with the normalised input


def invert(
    model: CountingModel,
    image: np.ndarray,
    layer: str,
    steps: int = 300,
    step_size: float = 100.0,
    decay: float = 0.99,
    weight_decay: float = 1e-3,
    seed: int = 0,
    source: str | None = None,
) -> Inversion:
    """Reconstruct an image from the features ``phi`` of ``layer`` (Mahendran & Vedaldi 2015,
    as in the FCRN paper's section 5): minimise ``||phi(x) - phi(x0)||^2 / ||phi(x0)||^2 +
    weight_decay * mean(x^2)`` from random noise by gradient descent with momentum 0.9 and a step
    that decays by ``decay`` each step. The feature term is normalised so that one step size
    suits every layer (100: for every layer of the bundled FCRN-A the objective falls at 85-100% of
    the steps, to 0.01-10% of its start; the rises are momentum's overshoots).
    A bad image raises ``InputError`` naming ``source``."""
    if layer not in layer_names(model):
        raise ValueError(
            f"no layer '{layer}' in {model.config.arch}; see celltally explain layers"
            f" (e.g. {', '.join(layer_names(model)[:4])})"
        )
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    target_input = unpadded(model, model.prepare(image, source))
    features = _features(model, layer)
    target = features(target_input).detach()
    norm = target.pow(2).sum().clamp_min(1e-12)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(target_input.shape, generator=generator).requires_grad_(True)
    velocity = torch.zeros_like(x)
    objective = []
    for step in range(steps):
        loss = (features(x) - target).pow(2).sum() / norm + weight_decay * x.pow(2).mean()
        (gradient,) = torch.autograd.grad(loss, x)
        objective.append(loss.item())
        with torch.no_grad():
            velocity.mul_(0.9).add_(gradient, alpha=-step_size * decay**step)
            x.add_(velocity)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    result = x.detach()[0].permute(1, 2, 0).numpy()
    reference = target_input[0].permute(1, 2, 0).numpy()
    correlation = float(np.corrcoef(result.ravel(), reference.ravel())[0, 1])
    return Inversion(layer, result, objective, correlation)


def unpadded(model: CountingModel, tensor: torch.Tensor) -> torch.Tensor:
    pad = model.pad
    return tensor[None, :, pad : tensor.shape[1] - pad, pad : tensor.shape[2] - pad]


def _features(model: CountingModel, layer: str):
    """``x`` (normalised, unpadded) -> the output of ``layer`` for it."""
    module = model.get_submodule(layer)
    captured: list[torch.Tensor] = []

    def features(x: torch.Tensor) -> torch.Tensor:
        captured.clear()
        hook = module.register_forward_hook(lambda m, i, output: captured.append(output))
        try:
            model.forward_padded(torch.nn.functional.pad(x, (model.pad,) * 4))
        finally:
            hook.remove()
        return captured[0] if torch.is_tensor(captured[0]) else captured[0][0]

    return features

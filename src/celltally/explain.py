"""What a model looked at: saliency maps (the gradient of the count with respect to the image).

``saliency`` is |d count / d pixel| (Simonyan et al. 2014), the largest over colour channels; with
``samples`` > 0 it is SmoothGrad (Smilkov et al. 2017): the mean over copies of the normalised
image with Gaussian noise added, which removes the speckle of a single gradient. The gradient is
taken with respect to the normalised image the network sees, so it does not depend on the
image's intensity units.
"""

from __future__ import annotations

import numpy as np
import torch

from celltally.models.base import CountingModel

SMOOTHGRAD_NOISE = 0.15  # noise std, a fraction of the normalised image's range


def saliency(
    model: CountingModel,
    image: np.ndarray,
    samples: int = 0,
    noise: float = SMOOTHGRAD_NOISE,
    seed: int = 0,
) -> np.ndarray:
    """``(H, W)`` saliency of ``model``'s count of ``image`` (SmoothGrad with ``samples`` noisy
    copies if ``samples`` > 0)."""
    model.eval()
    tensor = model.prepare(image)[None]
    height, width = image.shape[:2]
    pad = model.pad
    unpadded = tensor[..., pad : pad + height, pad : pad + width]
    spread = float(unpadded.max() - unpadded.min())
    generator = torch.Generator().manual_seed(seed)
    copies = [
        tensor + noise * spread * torch.randn(tensor.shape, generator=generator)
        for _ in range(samples)
    ] or [tensor]
    total = sum(_count_gradient(model, copy) for copy in copies)
    return (total[pad : pad + height, pad : pad + width] / len(copies)).numpy()


def _count_gradient(model: CountingModel, tensor: torch.Tensor) -> torch.Tensor:
    """|d count / d input| at every pixel, the largest over channels."""
    tensor = tensor.clone().requires_grad_(True)
    output = model.forward_padded(tensor)[:, 0]
    step = model.config.window_stride
    count = output[..., ::step, ::step].sum() / model.count_divisor
    (gradient,) = torch.autograd.grad(count, tensor)
    return gradient[0].abs().amax(dim=0)

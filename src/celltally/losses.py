"""Training losses: pixel-wise regression, and the Gaussian likelihood of a map with its variance.

``gaussian_nll`` is the aleatoric loss of Kendall & Gal (2017) used by cellcount (Hernandez et
al. 2018): a network that predicts a mean and a log-variance is trained to maximise the Gaussian
likelihood of the target, so it learns a large variance where it cannot be accurate instead of
being pulled towards those pixels. cellcount writes the loss as ``r^2 / (2 sigma^2) + log
sigma^2``; that is minimised by ``sigma^2 = r^2 / 2``, variances half as large as the errors',
which is one reason its 95% intervals covered only ~80% of true counts. Here the log-variance
has the likelihood's weight, 1/2, so the minimiser is ``sigma^2 = r^2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOG_VARIANCE_LIMIT = 20.0  # |log sigma^2| is clamped here: exp(20) ~ 5e8 keeps float32 finite


def gaussian_nll(
    prediction: torch.Tensor,
    log_variance: torch.Tensor,
    target: torch.Tensor,
    min_log_variance: float = -LOG_VARIANCE_LIMIT,
) -> torch.Tensor:
    """Mean over elements of ``(target - prediction)^2 / (2 sigma^2) + log(sigma^2) / 2``, with
    ``log sigma^2`` clamped to ``[min_log_variance, LOG_VARIANCE_LIMIT]`` (the constant log(2 pi)
    / 2 omitted). Where targets can be matched exactly (a sigmoid saturating on a binary mask)
    the likelihood pushes the variance towards 0 there, and one later error costs ``r^2 /
    (2 sigma^2)``: ``min_log_variance`` bounds that."""
    log_variance = log_variance.clamp(min_log_variance, LOG_VARIANCE_LIMIT)
    squared = (target - prediction) ** 2
    return (0.5 * squared * torch.exp(-log_variance) + 0.5 * log_variance).mean()


def total_variation(maps: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertically and horizontally adjacent pixels of
    ``(B, C, H, W)`` maps (anisotropic total variation, per pixel pair; 0 along a side of one
    pixel)."""
    vertical = (maps[..., 1:, :] - maps[..., :-1, :]).abs()
    horizontal = (maps[..., :, 1:] - maps[..., :, :-1]).abs()
    return sum((d.mean() for d in (vertical, horizontal) if d.numel()), maps.new_zeros(()))


LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}

"""What one inference pass over an image gives: ``CountingModel.network_pass`` returns a
``NetworkPass`` (the network's raw output), ``CountingModel.predict`` reads it out into a
``Prediction``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from celltally.uncertainty import CountInterval


@dataclass
class Prediction:
    """Everything a model says about one image, on the image's own pixels.

    Attributes:
        count: the number of cells (never negative): the density's sum.
        density: ``(H, W)`` cells per pixel of the image; sums to ``count``.
        points: ``(N, 2)`` y,x cell centres in the image's pixels.
        interval: the count's calibrated interval, if one was asked for (``ci``).
        sigma: the model's own, uncalibrated standard deviation of the count, if it has a
            variance head (what its intervals are calibrated from).
        diameter: the cell diameter in pixels the image was counted at (given or estimated);
            ``None`` if the model records no training diameter and none was given.
        diameter_estimated: whether ``diameter`` was estimated from the image.
        scale: how much the image was rescaled before the network saw it (1: not at all).
        warnings: one-line notes on why the count may be less trustworthy than the model's
            test figures (an image unlike the model's training images, a channel chosen for
            the user, ...).
    """

    count: float
    density: np.ndarray
    points: np.ndarray
    interval: CountInterval | None = None
    sigma: float | None = None
    diameter: float | None = None
    diameter_estimated: bool = False
    scale: float = 1.0
    warnings: list[str] = field(default_factory=list)

    @property
    def n_points(self) -> int:
        return len(self.points)


@dataclass
class NetworkPass:
    """The network's output for one image, before it is read out into a ``Prediction``.

    Attributes:
        image: the image as the network takes it (its channel chosen), on its own pixels.
        output: ``(out_channels, h, w)``: the network's output for ``image`` rescaled by
            ``scale`` (see ``CountingModel.predict_output``).
        network_shape: the ``(h, w)`` of the rescaled image the network saw.
        contrast: the image's contrast over its noise (``ood.image_contrast``); at most
            ``ood.MIN_CONTRAST``, the image was counted 0.
        diameter, diameter_estimated, scale: as ``Prediction``'s.
        notes: the warnings gathered so far (on the channel chosen).
    """

    image: np.ndarray
    output: np.ndarray
    network_shape: tuple[int, int]
    contrast: float
    diameter: float | None
    diameter_estimated: bool
    scale: float
    notes: list[str]

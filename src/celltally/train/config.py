"""Settings of a training run: ``TrainConfig``, validated, on top of an architecture's recipe;
it holds the ``Architecture`` of the model it trains."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from celltally.config import from_dict as config_from_dict
from celltally.config import parse_assignments, read_settings_file
from celltally.losses import LOSSES
from celltally.metrics import DETECTION_RADIUS
from celltally.models.config import SECTIONS, Architecture
from celltally.models.registry import architecture


def training_architecture(**settings: Any) -> Architecture:
    """The network a training run builds: ``settings`` over training's defaults (BatchNorm
    on)."""
    return Architecture(**{"batch_norm": True, **settings})


@dataclass
class TrainConfig:
    """Settings of one training run. The defaults are the recipe measured in
    ``benchmarks/RESULTS.md``: the paper's (100x100 patches, MSE to the x100 density, learning
    rate cut tenfold in steps, weight decay 5e-4, then whole images) with BatchNorm and Adam.
    The paper's SGD (``optimizer="sgd", lr=1e-2``, momentum 0.9) reached a higher loss in the
    same time here; the paper's networks have no BatchNorm, and without it SGD at 1e-2 diverges
    (use ``lr=1e-3`` with ``batch_norm=False``). An architecture's ``recipe`` replaces some of
    these defaults, however the config is built (Count-ception: L1 loss, Adam at
    5e-3, batches of 4 128x128 patches, 20 + 2 epochs, no weight decay, whole-image
    normalisation).

    Attributes:
        model: the network to train: an ``Architecture`` (``celltally.models``: ``arch``,
            ``in_channels``, ``batch_norm``, ``frozen_bn``, ``window_stride``, ``downsample``,
            ``variance_head``, ``sigma``, ``scale``; documented there), whose settings are given
            flat like every other one: ``TrainConfig(arch="fcrn_b", in_channels=3)``, ``--set
            batch_norm=false``, a settings file. Training's default turns BatchNorm on (not in
            the FCRN paper). With ``variance_head``, after training a head is fitted on the
            training images (``fit_variance_head``; ``fpn_vgg11`` learns its own) and its
            intervals calibrated on the validation images (``celltally.uncertainty``); with
            ``downsample``, the training patches are taken from the reduced images.
        loss: ``mse`` or ``l1`` between the output and the target map.
        counter_crop: ``fpn_vgg11``: train the counter on random ``counter_crop`` x
            ``counter_crop`` crops of the frozen segmenter's masks (each counting the dots
            inside it) instead of whole masks: as many times cheaper per image as the crop is
            smaller. ``None``: whole masks.
        patch_size: side of the square training input patches, in pixels (of the padded image,
            ``downsample``d).
        per_patch_norm: normalise each patch by its own mean and std (the paper); if false,
            patches keep the normalisation of their whole image, as at inference.
        batch_size: patches per optimiser step.
        steps_per_epoch: optimiser steps per patch epoch.
        epochs: patch epochs.
        finetune_epochs: epochs of whole-image fine-tuning after the patch epochs.
        optimizer: ``adam`` or ``sgd`` (the paper's, with momentum).
        lr: learning rate of the patch epochs; ``finetune_lr`` that of fine-tuning.
        momentum, weight_decay: SGD settings (weight decay also applies to Adam).
        lr_step, lr_gamma: multiply the learning rate by ``lr_gamma`` every ``lr_step`` epochs
            (``finetune_lr`` is used as it is).
        bf16: run the training forward pass in bfloat16 autocast (weights and loss stay float32):
            about 2x faster on CPUs with AVX512-BF16 or AMX, but many times slower where
            bfloat16 is emulated (an AVX2 CPU). ``None`` (the default): on exactly where the
            CPU has native bfloat16 (``native_bf16``); the run records the value used.
            Inference is always float32.
        refit_readout: after every epoch, validate (and keep as best) a copy of the model whose
            final 1x1 convolution is refitted by least squares on the whole training images
            (the first ``REFIT_IMAGES``; see ``refit_readout``); training itself goes on with
            the unchanged model.
        ema_decay: if > 0, validate (and keep as best) an exponential moving average of the
            weights, updated after every optimiser step with this decay (0.99 averages about
            the last 100 steps), its BatchNorm statistics re-estimated on the whole training
            images; training itself goes on with the unaveraged weights. On Count-ception
            it did not steady the validation counts (their swings are a count bias that moves
            from epoch to epoch, which ``refit_readout`` removes).
        calibrate_counts: after training, fit the count calibration (``gain * map + offset``,
            ``celltally.uncertainty.calibrate_counts``) on the validation images, before the
            peak threshold and the intervals are chosen there; the epoch kept is then the one
            with the lowest validation MAE after the calibration (left-one-out). On
            Count-ception, whose counts regress towards the mean (too many on sparse images,
            too few on crowded ones), it lowered the test MAE of a VGG cells model from 3.46
            to 2.36.
        seed: seeds patch sampling and initialisation.
        detection_radius: pixels; used to choose the peak threshold on validation data.
        time_budget: seconds; stop starting new epochs once spent (``None``: no limit).
        init: start from the weights of this trained model (bundled name, checkpoint or run
            folder) instead of a random initialisation, to fine-tune it on new data; it must
            have the same ``arch``, ``in_channels`` and ``batch_norm``.
    """

    model: Architecture = field(default_factory=training_architecture)
    loss: str = "mse"
    counter_crop: int | None = None
    patch_size: int = 100
    per_patch_norm: bool = True
    batch_size: int = 16
    steps_per_epoch: int = 100
    epochs: int = 24
    finetune_epochs: int = 6
    optimizer: str = "adam"
    lr: float = 1e-3
    finetune_lr: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int = 10
    lr_gamma: float = 0.1
    bf16: bool | None = None
    refit_readout: bool = True
    ema_decay: float = 0.0
    calibrate_counts: bool = False
    seed: int = 0
    detection_radius: float = DETECTION_RADIUS
    time_budget: float | None = None
    init: str | None = None

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = native_bf16()
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got '{self.optimizer}'")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got '{self.loss}'")
        positive = ("patch_size", "batch_size", "steps_per_epoch", "lr", "finetune_lr", "lr_step")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.counter_crop is not None and (self.counter_crop <= 0 or self.counter_crop % 32):
            raise ValueError(
                f"counter_crop must be a positive multiple of 32, got {self.counter_crop}"
            )
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.epochs < 0 or self.finetune_epochs < 0 or self.epochs + self.finetune_epochs == 0:
            raise ValueError("need at least one epoch: set epochs and/or finetune_epochs")

    def to_dict(self) -> dict[str, Any]:
        """Every setting, flat (the model's beside the others), as ``from_dict`` reads them."""
        rest = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        return {**asdict(self.model), **rest}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict (JSON settings), checking names and types."""
        return config_from_dict(cls, values)

    @classmethod
    def from_settings(
        cls, file: str | Path | None, assignments: list[str], defaults: dict, given: dict
    ) -> TrainConfig:
        """Build from, by rising priority: ``defaults``, a JSON ``file`` of settings,
        ``name=value`` ``assignments`` (``--set``) and the ``given`` command-line options."""
        values = read_settings_file(file) | parse_assignments(cls, assignments)
        return cls.from_dict({**defaults, **values, **given})


def _on_the_recipe(init: Callable[..., None]) -> Callable[..., None]:
    """``TrainConfig.__init__`` taking the model's settings flat, on top of the architecture's
    ``recipe``: the settings given replace the recipe's, which replace the defaults, however
    the config is built."""

    @functools.wraps(init)
    def merged(self, model: Architecture | None = None, **given: Any) -> None:
        given = {**(asdict(model) if model is not None else {}), **given}
        values = {**architecture(given.get("arch", Architecture.arch)).recipe, **given}
        shape = {name: values.pop(name) for name in SECTIONS["architecture"] if name in values}
        init(self, model=training_architecture(**shape), **values)

    return merged


TrainConfig.__init__ = _on_the_recipe(TrainConfig.__init__)  # type: ignore[method-assign]


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()

"""Training a counting model: random patches, then whole images, with checkpoints that resume.

The FCRN recipe follows Xie et al. (2016): random 100x100 patches, each normalised by its own mean
and std, flips and 90-degree rotations, MSE to the x100 density, SGD with momentum 0.9 and weight
decay 5e-4, the learning rate cut by ``lr_gamma`` every ``lr_step`` epochs; then fine-tuning on
whole images. Count-ception's (Cohen et al. 2017) differs where its ``recipe`` says: L1 to the
window count map, Adam at 5e-3, batches of 4, BatchNorm's batch statistics. The count MAE on the
validation images is measured after every epoch and the best model kept.

A run folder holds ``model/`` (the best checkpoint, loadable by ``load_model``), ``last/`` (the
latest epoch with optimiser and random state, from which an interrupted run resumes),
``history.csv`` and ``split.json``.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from math import nan
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from celltally.config import from_dict as config_from_dict
from celltally.data.datasets import Sample
from celltally.data.images import downsample, to_channels, to_grid_points
from celltally.data.patches import N_AUGMENTATIONS, PatchSampler, augment
from celltally.data.points import atomic_write
from celltally.losses import LOSSES, gaussian_nll
from celltally.metrics import DETECTION_RADIUS, count_metrics
from celltally.models import CountingModel, ModelConfig, create_model, load_model, save_model
from celltally.models.base import averaging_batch_norm
from celltally.models.io import WEIGHTS_FILE, read_config, versions
from celltally.models.registry import architecture, build_model
from celltally.predict import choose_peak_threshold
from celltally.targets import DEFAULT_SCALE, DEFAULT_SIGMA
from celltally.uncertainty import (
    MIN_COUNT_CALIBRATION_IMAGES,
    calibrate_counts,
    calibrated_mae,
    count_terms,
    set_interval_calibration,
)

# The readout refit has ~33 unknowns: a few dozen whole images (millions of pixels) fit it, and
# more only slow every epoch down (most of each 170 s epoch on 800 synthetic images).
REFIT_IMAGES = 64
# Random pixels per image for fitting the variance head (its ~33-65 unknowns): enough, and
# the fit stays within a few hundred MB on 64 Count-ception images.
VARIANCE_PIXELS = 2**15
# Training images the variance head is fitted on, at most (every image of the paper recipes):
# the generalist's 1,100 ran this machine's 24 GB out of memory.
VARIANCE_IMAGES = 128
# A fitted variance head is clipped to these quantiles of its values on the pixels it was fitted on.
LOG_VARIANCE_QUANTILES = (0.001, 0.999)
# Batches of an epoch over which a counter's BatchNorm statistics are averaged after it.
STATISTICS_BATCHES = 32


@dataclass
class TrainConfig:
    """Settings of one training run. The defaults are the recipe measured in
    ``benchmarks/RESULTS.md``: the paper's (100x100 patches, MSE to the x100 density, learning
    rate cut tenfold in steps, weight decay 5e-4, then whole images) with BatchNorm and Adam.
    The paper's SGD (``optimizer="sgd", lr=1e-2``, momentum 0.9) reached a higher loss in the
    same time here; the paper's networks have no BatchNorm, and without it SGD at 1e-2 diverges
    (use ``lr=1e-3`` with ``batch_norm=False``). An architecture's ``recipe`` replaces some of
    these defaults when the config is built with ``from_dict`` (Count-ception: L1 loss, Adam at
    5e-3, batches of 4 128x128 patches, 20 + 2 epochs, no weight decay, whole-image
    normalisation).

    Attributes:
        arch: registry name of the model (``fcrn_a``, ``fcrn_b``, ``countception``).
        in_channels: 1 for fluorescence (colours averaged), 3 for colour histology.
        batch_norm: BatchNorm after each convolution (not in the FCRN paper).
        frozen_bn: BatchNorm keeps its initial statistics: an affine layer (see ``ModelConfig``).
        sigma, scale: the density target (Gaussian width in pixels, multiplier).
        loss: ``mse`` or ``l1`` between the output and the target map.
        variance_head: also predict each pixel's log-variance: after training, a head fitted
            on the training images (``fit_variance_head``; ``fpn_vgg11`` learns its own), whose
            intervals are calibrated on the validation images (``celltally.uncertainty``).
        counter_crop: ``fpn_vgg11``: train the counter on random ``counter_crop`` x
            ``counter_crop`` crops of the frozen segmenter's masks (each counting the dots
            inside it) instead of whole masks: as many times cheaper per image as the crop is
            smaller. ``None``: whole masks.
        window_stride: Count-ception: train on (and read) every ``window_stride``-th pixel of the
            count map (1, 2, 4, 8, 16 or 32).
        downsample: the network sees the images reduced this many times, in training and at
            inference (see ``ModelConfig.downsample``: for cells too large for its view).
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

    arch: str = "fcrn_a"
    in_channels: int = 1
    batch_norm: bool = True
    frozen_bn: bool = False
    sigma: float = DEFAULT_SIGMA
    scale: float = DEFAULT_SCALE
    loss: str = "mse"
    variance_head: bool = False
    window_stride: int = 1
    downsample: int = 1
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

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict (JSON settings), checking names and types, on top of the
        architecture's recipe."""
        recipe = architecture(values.get("arch", cls.arch)).recipe
        return config_from_dict(cls, {**recipe, **values})


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@dataclass
class TrainState:
    """What ``last/state.pt`` holds besides the weights: enough to resume exactly."""

    epoch: int = 0
    best_mae: float = float("inf")
    elapsed: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def train(
    config: TrainConfig,
    train_samples: list[Sample],
    val_samples: list[Sample],
    out: str | Path,
    provenance: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> CountingModel:
    """Train, keep the best model in ``out/model`` and return it. Resumes from ``out/last``."""
    out = Path(out)
    torch.manual_seed(config.seed)
    model = create_model(
        config.arch,
        in_channels=config.in_channels,
        batch_norm=config.batch_norm,
        frozen_bn=config.frozen_bn,
        variance_head=config.variance_head,
        window_stride=config.window_stride,
        downsample=config.downsample,
        sigma=config.sigma,
        scale=config.scale,
    )
    if config.refit_readout and model.readout is None:
        raise ValueError(f"{config.arch} has no linear readout to refit; set refit_readout=false")
    if model.trains_on_masks and config.finetune_epochs == 0:
        raise ValueError(
            f"{config.arch} trains its counter in the finetune epochs; set finetune_epochs >= 1"
        )
    if config.calibrate_counts and len(val_samples) < MIN_COUNT_CALIBRATION_IMAGES:
        raise ValueError(
            f"calibrate_counts needs at least {MIN_COUNT_CALIBRATION_IMAGES} validation images,"
            f" got {len(val_samples)}; add some or set calibrate_counts=false"
        )
    if config.init is not None:
        _start_from(model, config.init)
    train_data = _load(train_samples, config.in_channels)
    val_images, val_points = _load(val_samples, config.in_channels)
    grid_images, grid_points = _on_grid(*train_data, config.downsample)
    smallest = min(min(im.shape[:2]) for im in grid_images) + 2 * model.pad
    patch = min(config.patch_size, smallest)
    if patch <= model.shrink:
        raise ValueError(f"{config.arch} needs patch_size > {model.shrink}, got {patch}")
    rng = np.random.default_rng(config.seed)
    masks = None
    if model.trains_on_masks:
        masks = [
            downsample(s.load_mask().astype(np.float32), config.downsample) for s in train_samples
        ]
    weights = [sample.weight for sample in train_samples]
    sampler = PatchSampler(
        grid_images, grid_points, model, rng, config.per_patch_norm, masks, weights
    )
    optimizer = _optimizer(config, model)
    averaged = _weight_average(model, optimizer, config)
    state = _resume(out, model, optimizer, rng, config, averaged)
    _write_json(
        out / "split.json",
        {"train": [s.name for s in train_samples], "val": [s.name for s in val_samples]},
    )

    total = config.epochs + config.finetune_epochs
    counter_masks = None  # the frozen segmenter's masks of the training images
    with _progress(progress) as bar:
        task = bar.add_task("training", total=total, completed=state.epoch, status="")
        while state.epoch < total and not _out_of_time(config, state):
            started = time.perf_counter()
            finetune = state.epoch >= config.epochs
            _set_lr(optimizer, _lr(config, state.epoch))
            if not finetune:
                loss = _patch_epoch(model, sampler, optimizer, config, patch)
            elif model.trains_on_masks:
                if counter_masks is None:
                    counter_masks = _predicted_masks(model, train_data[0])
                loss = _counter_epoch(model, counter_masks, grid_points, rng, optimizer, config)
            else:
                loss = _finetune_epoch(model, sampler, optimizer, config)
            if not np.isfinite(loss):
                raise ValueError(
                    f"training diverged in epoch {state.epoch} (loss {loss}); lower the learning"
                    f" rate (now {_lr(config, state.epoch):g}, e.g. --set lr=...)"
                )
            candidate = _candidate(model, averaged, train_data, config)
            untrained_counter = model.trains_on_masks and not finetune
            scores = {"val_mae": nan}
            if not untrained_counter:
                scores = _validate(candidate, val_images, val_points, config.calibrate_counts)
            state.elapsed += time.perf_counter() - started
            record = {
                "epoch": state.epoch,
                "phase": "finetune" if finetune else "patches",
                "lr": _lr(config, state.epoch),
                "loss": loss,
                **scores,
                "elapsed_s": state.elapsed,
            }
            state.history.append(record)
            state.epoch += 1
            selection = scores.get("val_mae_calibrated", scores["val_mae"])
            if selection < state.best_mae:
                state.best_mae = selection
                save_model(candidate, out / "model")
            _checkpoint(out, model, optimizer, rng, state, averaged)
            bar.update(task, advance=1, status=f"loss {loss:.4f}  val MAE {selection:.2f}")
            if on_epoch_end is not None:
                on_epoch_end(state.epoch, record)
    return _finish(out, config, train_data, (val_images, val_points), state, provenance or {})


def _start_from(model: CountingModel, source: str) -> None:
    """Copy the weights of a trained model with the same architecture into ``model``."""
    trained = load_model(source)
    differ = [
        name
        for name in ("arch", "in_channels", "batch_norm", "variance_head", "downsample")
        if getattr(trained.config, name) != getattr(model.config, name)
    ]
    if differ:
        found = ", ".join(f"{name}={getattr(trained.config, name)}" for name in differ)
        raise ValueError(f"init model {source} has {found}; train with the same settings")
    model.load_state_dict(trained.state_dict())


def _finish(out, config, train_data, val_data, state, provenance) -> CountingModel:
    """Reload the best model, fit its variance head (if any) on the training images; on the
    validation images calibrate its counts (with ``calibrate_counts``), choose its peak
    threshold and calibrate its intervals; record provenance."""
    started = time.perf_counter()
    model = load_model(out / "model")
    if model.log_variance is not None:
        fit_variance_head(model, *(part[:VARIANCE_IMAGES] for part in train_data))
    val_images, val_points = val_data
    outputs = [model.predict_output(image) for image in val_images]
    if config.calibrate_counts:
        outputs = calibrate_counts(model, outputs, [len(p) for p in val_points])
    model.config.peak_threshold = choose_peak_threshold(
        model, [output[0] for output in outputs], val_points, config.detection_radius
    )
    if model.config.variance_head:
        set_interval_calibration(model, outputs, [len(p) for p in val_points])
    model.config.training = {
        **provenance,
        "settings": asdict(config),
        "best_val_mae": state.best_mae,
        "epochs_run": state.epoch,
        "train_time_s": round(state.elapsed + time.perf_counter() - started, 1),
        "versions": versions(),
    }
    save_model(model, out / "model")
    pd.DataFrame(state.history).to_csv(out / "history.csv", index=False)
    return model


def _weight_average(model: CountingModel, optimizer, config: TrainConfig) -> AveragedModel | None:
    """With ``config.ema_decay``, the moving average of ``model``'s weights, updated by a hook
    after every step of ``optimizer``."""
    if not config.ema_decay:
        return None
    if model.trains_on_masks:
        raise ValueError(f"{config.arch} cannot average its weights; set ema_decay=0")
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
    optimizer.register_step_post_hook(lambda *_: averaged.update_parameters(model))
    return averaged


def _candidate(
    model: CountingModel, averaged: AveragedModel | None, train_data, config: TrainConfig
) -> CountingModel:
    """The model to validate and keep if best: ``model`` or a copy of its weight average (with
    BatchNorm statistics refitted to those weights), its readout refitted with
    ``config.refit_readout``, on (at most ``REFIT_IMAGES`` of) the training images. Training
    goes on with ``model``."""
    if averaged is None and not config.refit_readout:
        return model
    candidate = copy.deepcopy(model if averaged is None else averaged.module)
    images, points = train_data[0][:REFIT_IMAGES], train_data[1][:REFIT_IMAGES]
    if averaged is not None and config.batch_norm and not config.frozen_bn:
        refit_batch_norm(candidate, images)
    if config.refit_readout:
        refit_readout(candidate, images, points)
    return candidate


@torch.no_grad()
def refit_readout(model: CountingModel, images: list[np.ndarray], points: list[np.ndarray]) -> None:
    """Refit the final 1x1 convolution by linear least squares on whole training images.

    The count is the sum of the map over tens of thousands of pixels, so a per-pixel offset far
    below the MSE's noise level still shifts counts by several cells, and SGD noise on the last
    bias keeps moving it. The readout is linear in its input features, so its exact least-squares
    fit on the whole images is cheap; with its intercept, the residuals sum to zero and the
    summed count over the training images is exact before the output stage (within 1% after
    it, in the tests).

    The map is the readout through a ReLU (never negative), which is the identity where the map
    is positive. So a second fit leaves out the pixels the first one puts below zero where the
    target is zero too (the ReLU already gives them exactly their target), and fits the rest.
    """
    layer = model.readout
    solution = _least_squares_readout(model, layer, images, points, None)
    _least_squares_readout(model, layer, images, points, solution)


def _least_squares_readout(model, layer, images, points, previous) -> torch.Tensor:
    """Fit and set the readout on every pixel, or, given the ``previous`` solution, on those
    it does not already fit through the ReLU; return the solution."""
    n = layer.in_channels + 1
    gram = torch.zeros(n, n, dtype=torch.float64)
    moment = torch.zeros(n, dtype=torch.float64)
    for x, target, _ in _layer_inputs(model, layer, images, points):
        if previous is not None:
            keep = (previous @ x > 0) | (target > 0)
            x, target = x[:, keep], target[keep]
        gram += x @ x.T
        moment += x @ target
    ridge = 1e-6 * gram.diagonal().mean() * torch.eye(n, dtype=torch.float64)
    solution = torch.linalg.solve(gram + ridge, moment)
    model.set_readout(solution[:-1], solution[-1])
    return solution


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


def _load(samples: list[Sample], channels: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    loaded = [sample.load() for sample in samples]
    return [to_channels(image, channels) for image, _ in loaded], [points for _, points in loaded]


def _on_grid(images: list[np.ndarray], points: list[np.ndarray], factor: int):
    """The images and their dots on the network's grid (``downsample``d ``factor`` times)."""
    return [downsample(im, factor) for im in images], [to_grid_points(p, factor) for p in points]


def _patch_epoch(model, sampler: PatchSampler, optimizer, config: TrainConfig, patch: int) -> float:
    model.train()
    losses = []
    for _ in range(config.steps_per_epoch):
        inputs, targets = sampler.patches(config.batch_size, patch)
        losses.append(_step(model, optimizer, inputs, targets, config))
    return float(np.mean(losses))


def _finetune_epoch(model, sampler: PatchSampler, optimizer, config: TrainConfig) -> float:
    """One pass over the whole training images, BatchNorm statistics frozen.

    Inference normalises with the statistics gathered on patches; freezing them here lets the
    whole-image phase correct the count offset those statistics leave (batches of one whole
    image would give poor statistics anyway).
    """
    model.train()
    model.freeze_batch_norm()
    order = sampler.rng.permutation(len(sampler.images))
    return float(np.mean([_step(model, optimizer, *sampler.whole(int(i)), config) for i in order]))


@torch.no_grad()
def _predicted_masks(model, images: list[np.ndarray]) -> list[np.ndarray]:
    """The segmenter's finest mask of every (whole, normalised) image, in evaluation mode."""
    model.eval()
    return [model.predicted_mask(model.prepare(image)[None])[0, 0].numpy() for image in images]


def _counter_epoch(model, masks, points, rng: np.random.Generator, optimizer, config) -> float:
    """One pass over the training images' predicted masks, ``batch_size`` at a time, each
    randomly turned, training the counter of a model trained on masks (its segmenter frozen, in
    evaluation mode). With ``counter_crop``, random crops instead, as many per mask as it has
    crops' worth of pixels, so an epoch still covers about the whole training set. Then the
    counter's BatchNorm statistics are recomputed on (up to ``STATISTICS_BATCHES`` of) the
    epoch's batches."""
    model.train()
    model.segmenter.eval()
    crop = config.counter_crop
    repeats = [1 if crop is None else max(1, round(mask.size / crop**2)) for mask in masks]
    order = [int(i) for i in rng.permutation(np.repeat(np.arange(len(masks)), repeats))]
    losses, seen = [], []
    for start in range(0, len(order), config.batch_size):
        by_shape: dict[tuple, list[tuple[np.ndarray, int]]] = {}
        for index in order[start : start + config.batch_size]:
            mask, count = _counter_example(masks[index], points[index], rng, crop)
            by_shape.setdefault(mask.shape, []).append((mask, count))
        for batch in by_shape.values():
            inputs = torch.from_numpy(np.stack([mask for mask, _ in batch])[:, None])
            counts = torch.tensor([float(count) for _, count in batch])
            losses.append(_step(model, optimizer, inputs, counts, config, "counter"))
            seen.append(inputs)
    model.recompute_counter_statistics(seen[:: -(-len(seen) // STATISTICS_BATCHES)])
    return float(np.mean(losses))


def _counter_example(
    mask: np.ndarray, points: np.ndarray, rng: np.random.Generator, crop: int | None
) -> tuple[np.ndarray, int]:
    """``mask`` randomly turned and, with ``crop``, a random crop of it (at most ``crop`` on a
    side); with the number of ``points`` inside (a dot belongs to its nearest pixel centre:
    the convention under which turns and flips move dots exactly with the pixels)."""
    turned, points = augment(mask[:, :, None], points, int(rng.integers(N_AUGMENTATIONS)))
    turned = turned[:, :, 0]
    if crop is None:
        return turned, len(points)
    height, width = min(crop, turned.shape[0]), min(crop, turned.shape[1])
    top = int(rng.integers(turned.shape[0] - height + 1))
    left = int(rng.integers(turned.shape[1] - width + 1))
    rows, cols = np.floor(points[:, 0] + 0.5), np.floor(points[:, 1] + 0.5)
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return np.ascontiguousarray(turned[top : top + height, left : left + width]), int(inside.sum())


def _step(
    model,
    optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    config: TrainConfig,
    phase: str = "patches",
) -> float:
    """One optimiser step: on the target pixels every ``window_stride``-th row and column, or,
    for models trained on masks, of their segmenter (``patches``) or counter (``counter``)."""
    if model.trains_on_masks:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            if phase == "counter":
                loss = model.counter_loss(inputs, targets)
            else:
                loss = model.segmenter_loss(inputs, targets)
        return _descend(optimizer, loss.float())
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
        prediction = model.forward_padded(inputs)
    step = config.window_stride
    prediction, targets = prediction.float()[..., ::step, ::step], targets[..., ::step, ::step]
    loss = LOSSES[config.loss](prediction[:, :1], targets)  # a variance head is fitted after
    return _descend(optimizer, loss)


def _descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _validate(model: CountingModel, images, points, calibrated: bool) -> dict[str, float]:
    """The validation MAE; if the counts are to be calibrated, also the MAE after the
    calibration (``val_mae_calibrated``, left-one-out), which then chooses the epoch kept: an
    epoch's count bias, which the calibration removes, must not decide."""
    outputs = [model.predict_output(image) for image in images]
    counts, pixels = count_terms(model, outputs)
    truth = [len(p) for p in points]
    scores = {"val_mae": count_metrics(truth, counts)["mae"]}
    if calibrated:
        scores["val_mae_calibrated"] = calibrated_mae(counts, pixels, truth)
    return scores


def _optimizer(config: TrainConfig, model: CountingModel) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _lr(config: TrainConfig, epoch: int) -> float:
    if epoch >= config.epochs:
        return config.finetune_lr
    return config.lr * config.lr_gamma ** (epoch // config.lr_step)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _out_of_time(config: TrainConfig, state: TrainState) -> bool:
    return config.time_budget is not None and state.elapsed >= config.time_budget


def _checkpoint(
    out: Path, model, optimizer, rng: np.random.Generator, state: TrainState, averaged
) -> None:
    """Save the resumable state: weights (``last/``) and optimiser + random state + history
    (+ weight average)."""
    save_model(model, out / "last")
    payload = {
        "optimizer": optimizer.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "state": asdict(state),
        "averaged": None if averaged is None else averaged.state_dict(),
    }
    atomic_write(out / "last" / "state.pt", lambda tmp: torch.save(payload, tmp))


def _resume(
    out: Path, model, optimizer, rng: np.random.Generator, config: TrainConfig, averaged
) -> TrainState:
    state_file = out / "last" / "state.pt"
    if not state_file.exists():
        return TrainState()
    saved = read_config(out / "last")
    if saved.arch != config.arch:
        raise ValueError(
            f"{out} holds a {saved.arch} run; use another --out to train {config.arch}"
        )
    payload = torch.load(state_file, weights_only=False)
    model.load_state_dict(load_file(out / "last" / WEIGHTS_FILE))
    optimizer.load_state_dict(payload["optimizer"])
    rng.bit_generator.state = payload["numpy_rng"]
    torch.set_rng_state(payload["torch_rng"])
    if averaged is not None:
        if payload.get("averaged") is None:
            raise ValueError(f"{out} was trained without ema_decay; resume it with ema_decay=0")
        averaged.load_state_dict(payload["averaged"])
    return TrainState(**payload["state"])


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2)))


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        disable=not enabled,
    )

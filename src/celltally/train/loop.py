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
import time
from collections.abc import Callable
from dataclasses import asdict
from math import nan
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from celltally.data.datasets import Sample
from celltally.data.images import downsample, to_channels, to_grid_points
from celltally.io import write_json
from celltally.metrics import count_metrics
from celltally.models import CountingModel, ModelConfig, load_model, save_model
from celltally.models.io import versions
from celltally.models.phases import TrainingPhase
from celltally.models.registry import build_model
from celltally.predict import choose_peak_threshold
from celltally.train.checkpoint import TrainState, resume_state, save_checkpoint
from celltally.train.config import TrainConfig
from celltally.train.epochs import EpochData, run_epoch
from celltally.train.patches import PatchSampler
from celltally.train.refit import (
    VARIANCE_IMAGES,
    fit_variance_head,
    refit_batch_norm,
    refit_readout,
)
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


def train(
    config: TrainConfig,
    train_samples: list[Sample],
    val_samples: list[Sample],
    out: str | Path,
    provenance: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> CountingModel:
    """Train, keep the best model in ``out/model`` and return it. Resumes from ``out/last``.
    The model's ``training_phases`` say what each epoch trains, on which batches."""
    out = Path(out)
    torch.manual_seed(config.seed)
    model = _model(config, len(val_samples))
    train_data = _load(train_samples, config.model.in_channels)
    val_data = _load(val_samples, config.model.in_channels)
    rng = np.random.default_rng(config.seed)
    data = _epoch_data(model, config, train_samples, train_data, rng)
    optimizer = _optimizer(config, model)
    averaged = _weight_average(model, optimizer, config)
    state = resume_state(out, model, optimizer, rng, config, averaged)
    names = {"train": [s.name for s in train_samples], "val": [s.name for s in val_samples]}
    write_json(out / "split.json", names)
    schedule = _schedule(model, config)
    with _progress(progress) as bar:
        task = bar.add_task("training", total=len(schedule), completed=state.epoch, status="")
        while state.epoch < len(schedule) and not _out_of_time(config, state):
            started = time.perf_counter()
            phase = schedule[state.epoch]
            _set_lr(optimizer, _lr(config, state.epoch))
            loss = run_epoch(model, phase, data, optimizer, config)
            if not np.isfinite(loss):
                raise ValueError(
                    f"training diverged in epoch {state.epoch} (loss {loss}); lower the learning"
                    f" rate (now {_lr(config, state.epoch):g}, e.g. --set lr=...)"
                )
            candidate = _candidate(model, averaged, train_data, config)
            scores = {"val_mae": nan}
            if phase.validated:
                scores = _validate(candidate, *val_data, config.calibrate_counts)
            state.elapsed += time.perf_counter() - started
            record = _record(state, phase, _lr(config, state.epoch), loss, scores)
            selection = scores.get("val_mae_calibrated", scores["val_mae"])
            if selection < state.best_mae:
                state.best_mae = selection
                save_model(candidate, out / "model")
            save_checkpoint(out, model, optimizer, rng, state, averaged)
            bar.update(task, advance=1, status=f"loss {loss:.4f}  val MAE {selection:.2f}")
            if on_epoch_end is not None:
                on_epoch_end(state.epoch, record)
    return _finish(out, config, train_data, val_data, state, provenance or {})


def _model(config: TrainConfig, n_val: int) -> CountingModel:
    """The model to train, checked against ``config`` (and started from ``config.init``)."""
    model = build_model(ModelConfig(**asdict(config.model)))
    if config.refit_readout and model.readout is None:
        raise ValueError(
            f"{config.model.arch} has no linear readout to refit; set refit_readout=false"
        )
    for phase in model.training_phases():
        field = _EPOCH_FIELDS[phase.name]
        if phase.required and getattr(config, field) == 0:
            raise ValueError(
                f"{config.model.arch} trains in its {phase.name} phase ({phase.batches});"
                f" set {field} >= 1"
            )
    if config.calibrate_counts and n_val < MIN_COUNT_CALIBRATION_IMAGES:
        raise ValueError(
            f"calibrate_counts needs at least {MIN_COUNT_CALIBRATION_IMAGES} validation images,"
            f" got {n_val}; add some or set calibrate_counts=false"
        )
    if config.init is not None:
        _start_from(model, config.init)
    return model


_EPOCH_FIELDS = {"patches": "epochs", "finetune": "finetune_epochs"}


def _schedule(model: CountingModel, config: TrainConfig) -> list[TrainingPhase]:
    """The phase of every epoch: each of the model's phases for its config's epochs."""
    phases = model.training_phases()
    return [p for p in phases for _ in range(getattr(config, _EPOCH_FIELDS[p.name]))]


def _epoch_data(model, config: TrainConfig, samples, train_data, rng) -> EpochData:
    """The patch sampler over the training images on the network's grid (with their
    foreground masks where a phase trains on them), and the patch side."""
    grid_images, grid_points = _on_grid(*train_data, config.model.downsample)
    smallest = min(min(im.shape[:2]) for im in grid_images) + 2 * model.pad
    patch = min(config.patch_size, smallest)
    if patch <= model.shrink:
        raise ValueError(f"{config.model.arch} needs patch_size > {model.shrink}, got {patch}")
    masks = None
    if any(phase.targets == "masks" for phase in model.training_phases()):
        masks = [
            downsample(s.load_mask().astype(np.float32), config.model.downsample) for s in samples
        ]
    weights = [sample.weight for sample in samples]
    sampler = PatchSampler(
        grid_images, grid_points, model, rng, config.per_patch_norm, masks, weights
    )
    return EpochData(sampler, patch)


def _record(state: TrainState, phase: TrainingPhase, lr: float, loss: float, scores) -> dict:
    """Append the epoch's line of ``history.csv`` to ``state`` (and count the epoch)."""
    record = {
        "epoch": state.epoch,
        "phase": phase.name,
        "lr": lr,
        "loss": loss,
        **scores,
        "elapsed_s": state.elapsed,
    }
    state.history.append(record)
    state.epoch += 1
    return record


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
        "settings": config.to_dict(),
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
    if any(phase.batches == "own_masks" for phase in model.training_phases()):
        # its parts are trained in turn, the counter's statistics recomputed after each epoch
        raise ValueError(f"{config.model.arch} cannot average its weights; set ema_decay=0")
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
    if averaged is not None and config.model.batch_norm and not config.model.frozen_bn:
        refit_batch_norm(candidate, images)
    if config.refit_readout:
        refit_readout(candidate, images, points)
    return candidate


def _load(samples: list[Sample], channels: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    loaded = [sample.load() for sample in samples]
    return [to_channels(image, channels) for image, _ in loaded], [points for _, points in loaded]


def _on_grid(images: list[np.ndarray], points: list[np.ndarray], factor: int):
    """The images and their dots on the network's grid (``downsample``d ``factor`` times)."""
    return [downsample(im, factor) for im in images], [to_grid_points(p, factor) for p in points]


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


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        disable=not enabled,
    )

"""The generalist model: one network for users' own images, trained on every real annotated set
(train splits only) and on domain-randomised simulated images, all rescaled so that their cells
are ``CANONICAL_DIAMETER`` pixels across.

At inference ``CountingModel.predict`` estimates each image's cell diameter and rescales the
image to the canonical one, so a single network sees cells of one size whatever the
magnification. Training images are rescaled by their true diameters (from instance masks where
a set has them, else from the dots: ``celltally.diameter.diameter_at_points``, one median per
set since a set is imaged at one magnification) times a random jitter of up to
``SCALE_JITTER``, so that the network tolerates the estimator's error.

Each set (and the simulated images) gets the same share of the training patches, spread over
its images by their area; leaving sets out (``exclude``) makes the leave-one-set-out models
that measure how the generalist counts a kind of image it has never seen.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from celltally.data.collection import REAL_SETS, RealSet, labels_path
from celltally.data.datasets import Sample
from celltally.data.images import pick_channel, read_image
from celltally.data.scale import rescaled
from celltally.data.synth import SynthSample, generate, preset, synth_samples
from celltally.diameter import diameter_at_points, mask_diameter
from celltally.models import CountingModel, load_model, save_model
from celltally.models.ood import image_contrast
from celltally.models.size import (
    MIN_VIEW_SIDE,
    SIZE_RANGE,
    VIEWS_PER_IMAGE,
    fit_size_model,
    view_at,
)
from celltally.predict import agreeing_peak_threshold
from celltally.train import TrainConfig, train
from celltally.uncertainty import affine_output, set_interval_calibration

CANONICAL_DIAMETER = 12.0
SCALE_JITTER = 1.25  # training images are drawn at the canonical diameter x [1/1.25, 1.25]
MIN_SIDE = 112  # rescaled images are padded to at least this side (the patch is 100)
DOT_DIAMETER_IMAGES = 24  # images of a dot-only set whose median diameter stands for the set
SYNTH_PRESET = "generalist"
SYNTH_IMAGES = 400  # simulated images in the recipe (90% train, 10% validation)
SYNTH_SHARE = 1.0  # the simulated images' share of the patches, relative to one real set
SIZE_IMAGES_PER_SET = 100  # training images per set that fit the size model
MIN_GAIN_CELLS = 5  # validation images with fewer cells do not set the count gain

# The generalist recipe: FCRN-A on RGB (grey images are repeated), with a variance head. No
# whole-image epochs: over a thousand images of every size they cost more than the patch
# epochs, and the readout refit after each epoch removes the count offset they were for.
# Sized for a 2-core CPU without native bfloat16 (about 1.2 s a step, 5-6 min an epoch with
# its validation): 800 steps. A 3000-step run (8 epochs of 375, the rate cut after 6) reached a
# lower training loss (0.17 against 0.19) but counted fluorescence 20-28% high where this one
# is within 8% (zero-shot ctc 29% against 10%), and was not shipped (benchmarks/RESULTS.md,
# "Real images, zero-shot").
RECIPE: dict[str, Any] = {
    "arch": "fcrn_a",
    "in_channels": 3,
    "variance_head": True,
    "epochs": 8,
    "steps_per_epoch": 100,
    "lr_step": 5,
    "finetune_epochs": 0,
}


@dataclass
class GeneralistData:
    """Rescaled training and validation samples, with where they came from."""

    train: list[Sample]
    val: list[Sample]
    sets: list[str]
    diameters: dict[str, list[float]] = field(default_factory=dict)  # set -> per-image, px
    # set -> its training images as they are, with their cell diameters (px)
    originals: dict[str, list[tuple[Sample, float]]] = field(default_factory=dict)

    def diameter_range(self) -> list[float]:
        every = [d for values in self.diameters.values() for d in values]
        return [float(np.min(every)), float(np.max(every))]


def image_diameters(real: RealSet, samples: Sequence[Sample]) -> list[float]:
    """The cell diameter (px) of each sample: from its instance labels if it has them; for a
    confluent set, the diameter of a disc of the image's area over its count; else the set's
    median ``diameter_at_points`` over (up to ``DOT_DIAMETER_IMAGES`` of) its images."""
    paths = [labels_path(sample) for sample in samples]
    if samples and all(paths):
        return [mask_diameter(read_image(path)[:, :, 0].astype(np.int64)) for path in paths]
    if real.confluent:
        return [_tiling_diameter(*sample.load()) for sample in samples]
    step = max(1, len(samples) // DOT_DIAMETER_IMAGES)
    measured = [diameter_at_points(*sample.load()) for sample in samples[::step]]
    return [float(np.nanmedian(measured))] * len(samples)


def _tiling_diameter(image: np.ndarray, points: np.ndarray) -> float:
    area = image.shape[0] * image.shape[1] / max(len(points), 1)
    return float(np.sqrt(4.0 * area / np.pi))


def generalist_data(
    root: str | Path | None = None,
    exclude: Sequence[str] = (),
    synth_images: int = 0,
    seed: int = 0,
) -> GeneralistData:
    """The train and val splits of every real set but ``exclude``, plus ``synth_images``
    simulated images (90% train, 10% val), rescaled to the canonical diameter."""
    rng = np.random.default_rng(seed)
    data = GeneralistData([], [], [])
    for real in REAL_SETS:
        if real.name in exclude:
            continue
        split = real.split(root)
        if not split.train:
            continue  # a test-only set
        data.sets.append(real.name)
        _add_set(data, real.name, split.train, split.val, image_diameters, real, rng)
    if synth_images:
        samples = synth_samples(preset(SYNTH_PRESET), synth_images, seed, "synth")
        cut = synth_images - max(1, synth_images // 10)
        data.sets.append("synth")
        _add_set(data, "synth", samples[:cut], samples[cut:], _synth_diameters, None, rng)
    # mixed, so that the first images, on which the readout is refitted, hold every set
    data.train = [data.train[i] for i in rng.permutation(len(data.train))]
    return data


def _synth_diameters(_, samples: Sequence[SynthSample]) -> list[float]:
    """The diameter each simulated image drew (its cells', also where it drew none)."""
    return [generate(s.config, s.seed, s.index).drawn["diameter_px"] for s in samples]


def _add_set(data, name, train_samples, val_samples, diameters_of, real, rng) -> None:
    """Rescale a set's samples into ``data``: training images jittered, validation exact."""
    train_d, val_d = diameters_of(real, train_samples), diameters_of(real, val_samples)
    data.diameters[name] = train_d + val_d
    share = SYNTH_SHARE if real is None else 1.0
    jitter = np.exp(rng.uniform(-1, 1, len(train_samples)) * np.log(SCALE_JITTER))
    data.originals[name] = list(zip(train_samples, train_d, strict=True))
    for sample, diameter, wiggle in zip(train_samples, train_d, jitter, strict=True):
        factor = CANONICAL_DIAMETER / diameter * wiggle
        weight = share / len(train_samples)
        data.train.append(rescaled(sample, f"{name}/{sample.name}", factor, weight, MIN_SIDE))
    for sample, diameter in zip(val_samples, val_d, strict=True):
        factor = CANONICAL_DIAMETER / diameter
        data.val.append(rescaled(sample, f"{name}/{sample.name}", factor, 1.0, MIN_SIDE))


def train_generalist(
    out: str | Path,
    root: str | Path | None = None,
    exclude: Sequence[str] = (),
    synth_images: int = SYNTH_IMAGES,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> CountingModel:
    """Train a generalist into ``out`` (resumable: run it again to go on), leaving the sets
    named in ``exclude`` out; the model records its canonical diameter, the diameters it was
    trained on and every set with its licence."""
    out = Path(out)
    data = generalist_data(root, exclude, synth_images)
    config = TrainConfig.from_dict({**RECIPE, **(settings or {})})
    provenance = {
        "data": "generalist",
        "sets": {name: _licence(name) for name in data.sets},
        "excluded": list(exclude),
        "synth_images": synth_images,
        "canonical_diameter": CANONICAL_DIAMETER,
        "split": {"train": [s.name for s in data.train], "val": [s.name for s in data.val]},
    }
    train(config, data.train, data.val, out, provenance, progress=progress)
    return finish(out, data)


def finish(out: str | Path, data: GeneralistData) -> CountingModel:
    """Make the trained network in ``out/model`` a generalist: it counts at the canonical
    diameter, estimates each image's (blind, then refined by its size model fitted here) and
    picks channels as its training did; its counts, centres and intervals are calibrated as it
    counts, on the real validation images. The simulated ones are left out there: their
    domain-randomised extremes (dim, sparse, noisy fields whose noise grain the diameter
    estimate takes for cells, counted a thousand times over) would set every real image's
    interval."""
    out = Path(out)
    model = load_model(out / "model")
    model.config.diameter = CANONICAL_DIAMETER
    model.config.diameter_range = data.diameter_range()
    model.config.auto_diameter = True  # trained with scale jitter
    model.config.pick_channel = True  # as RescaledSample picked it for training
    model.config.size_model = fit_size_model(model, size_views(data.originals))
    model.config.contrast_range = contrast_range(data.originals)
    real = [sample.base for sample in data.val if not sample.name.startswith("synth/")]
    calibrate_as_counted(model, real)
    save_model(model, out / "model")
    (out / "diameters.json").write_text(json.dumps(data.diameters))
    return model


def size_views(
    originals: dict[str, list[tuple[Sample, float]]], seed: int = 0
) -> Iterator[tuple[np.ndarray, float]]:
    """Training views of the size model: up to ``SIZE_IMAGES_PER_SET`` training images with
    cells of each set (their channel picked as for counting), each shown ``VIEWS_PER_IMAGE``
    times at a random size factor of up to ``SIZE_RANGE`` either way of the canonical
    diameter."""
    rng = np.random.default_rng(seed)
    for pairs in originals.values():
        for index in rng.permutation(len(pairs))[:SIZE_IMAGES_PER_SET]:
            sample, diameter = pairs[index]
            image, points = sample.load()
            if len(points) == 0 or not np.isfinite(diameter):
                continue
            image = pick_channel(image, source=sample.image_path)[0]
            for factor in np.exp(rng.uniform(-1, 1, VIEWS_PER_IMAGE) * np.log(SIZE_RANGE)):
                view = view_at(image, diameter, CANONICAL_DIAMETER, factor)
                if min(view.shape[:2]) >= MIN_VIEW_SIDE:  # a small image shrunk far: too few
                    yield view, float(factor)


def contrast_range(originals: dict[str, list[tuple[Sample, float]]]) -> list[float]:
    """The 1st and 99th percentiles of the contrast (over the noise) of up to
    ``SIZE_IMAGES_PER_SET`` training images of each set, as they are counted."""
    values = []
    for pairs in originals.values():
        for sample, _ in pairs[:SIZE_IMAGES_PER_SET]:
            image = pick_channel(sample.load()[0], source=sample.image_path)[0]
            values.append(image_contrast(image))
    return np.percentile(values, [1.0, 99.0]).tolist()


def calibrate_as_counted(model: CountingModel, samples: Sequence[Sample]) -> None:
    """Calibrate the counts, centres and intervals of ``model`` on annotated real ``samples``
    counted as users' images are: at their estimated diameters (training validated on images
    rescaled by their true diameters, which leaves out the estimator's error).

    The counts get a gain (``count_gain``, a scaling of the map, so never negative): the
    inverse of the median ratio of counted to true cells over the images with at least
    ``MIN_GAIN_CELLS``. The mix of sets counts a few cells to thousands, so plain least squares
    would serve the crowded images alone, and a least-squares fit of the relative error was
    ruled by a few near-empty images (gain 0.0007). A background floor under the gain
    (``max(map - floor, 0)``, for the sparse images' excess) left the mean of the sets' mean
    relative errors at 0.209 for every floor from 0 to 0.1 of a map whose cells peak near 4.

    The peak threshold is then set so that the centres number as many as the counts
    (``agreeing_peak_threshold``), and the intervals are calibrated on the corrected counts."""
    passes, truth = [], []
    for sample in samples:
        image, points = sample.load()
        passes.append(model.network_pass(image, source=str(sample.image_path)))
        truth.append(len(points))
    counts = np.array([model.count_from_map(found.output[0]) for found in passes])
    truth = np.asarray(truth, dtype=float)
    enough = truth >= MIN_GAIN_CELLS
    gain = float(1.0 / max(np.median(counts[enough] / truth[enough]), 1e-6))
    model.config.count_gain *= gain
    outputs = [affine_output(found.output, gain, 0.0) for found in passes]
    maps = [output[0] for output in outputs]
    model.config.peak_threshold = agreeing_peak_threshold(
        model, maps, gain * counts, MIN_GAIN_CELLS
    )
    set_interval_calibration(model, outputs, truth)


def _licence(name: str) -> str:
    if name == "synth":
        return "simulated by celltally (MIT)"
    return next(real.licence for real in REAL_SETS if real.name == name)

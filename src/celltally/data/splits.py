"""Train / validation / test splits of the published counting protocols.

All follow Lempitsky & Zisserman (2010): N training and N validation images drawn at random with a
seed, MAE on a test set, mean +- std over several draws. They differ in the test set:

- ``lempitsky`` (VGG cells; Lempitsky 2010, Xie 2016): training pool 001-100, test 101-200.
- ``countception`` (Cohen 2017): all images shuffled with the seed; the first N train, the next N
  validate, the last ``test_size`` test (default: a dataset's fixed size, else all the rest).
- ``file``: the user's own split, a JSON file ``{"train": [names], "val": [...], "test": [...]}``.

Samples sharing a ``group`` (the quadrants of one MBM source image) are shuffled as one unit, so a
group is cut at most where one part of the split ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from celltally.data.datasets import Sample, load_dataset, resolve_data
from celltally.data.synth import synth_samples, synth_settings
from celltally.errors import InputError
from celltally.io import read_json

PROTOCOLS = ("lempitsky", "countception", "file")
VGG_POOL_SIZE = 100
TEST_SIZE = {"vgg_cells": 100, "adipocyte": 100}  # countception: fixed test sets (Cohen 2017)
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    protocol: str = "countception"

    def names(self) -> dict[str, list[str]]:
        return {part: [s.name for s in getattr(self, part)] for part in PARTS}

    def record(self, data: str, fmt: str, seed: int) -> dict:
        """Where a model's training data came from, for its config."""
        names = self.names()
        return {
            "data": data,
            "format": fmt,
            "protocol": self.protocol,
            "seed": seed,
            "split": {"train": names["train"], "val": names["val"]},
        }


def default_protocol(fmt: str) -> str:
    return "lempitsky" if fmt == "vgg_cells" else "countception"


def protocol_split(
    samples: list[Sample],
    fmt: str,
    n_train: int,
    n_val: int,
    seed: int = 0,
    protocol: str | None = None,
    test_size: int | None = None,
) -> Split:
    """Draw ``n_train`` + ``n_val`` samples with ``seed`` under ``protocol`` (default:
    ``lempitsky`` for VGG cells, else ``countception``). ``test_size`` overrides the
    ``countception`` test-set size."""
    protocol = protocol or default_protocol(fmt)
    if protocol == "lempitsky":
        if fmt != "vgg_cells":
            raise ValueError(
                f"the lempitsky protocol is defined for vgg_cells (train pool 001-100, test"
                f" 101-200), not {fmt}; use --protocol countception or a split file"
            )
        pool, test = samples[:VGG_POOL_SIZE], samples[VGG_POOL_SIZE:]
        _check_size(n_train + n_val, len(pool), "train + validation, from the pool 001-100")
        drawn = _shuffled(pool, seed)
        return Split(drawn[:n_train], drawn[n_train : n_train + n_val], test, protocol)
    if protocol != "countception":
        raise ValueError(f"unknown protocol '{protocol}'; choose lempitsky or countception")
    if test_size is None:
        rest = max(len(samples) - n_train - n_val, 0)
        test_size = min(rest, TEST_SIZE.get(fmt, rest))
    _check_size(n_train + n_val + test_size, len(samples), "train + validation + test")
    shuffled = _shuffled(samples, seed)
    test = shuffled[len(shuffled) - test_size :] if test_size else []
    return Split(shuffled[:n_train], shuffled[n_train : n_train + n_val], test, protocol)


def split_from_file(samples: list[Sample], path: str | Path) -> Split:
    """The split named in a JSON file: ``{"train": [...], "val": [...], "test": [...]}`` (a
    benchmark record, whose ``split`` holds these lists, works too). A part may be empty: a
    test-only set has no training images."""
    try:
        record = read_json(path)
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(path, f"cannot read the split file: {error}") from None
    names = record.get("split", record) if isinstance(record, dict) else None
    if not isinstance(names, dict) or not any(names.get(part) for part in PARTS):
        raise InputError(path, 'a split file needs {"train": [names], "val": [...], "test": [...]}')
    by_name = {s.name: s for s in samples}
    unknown = [n for part in PARTS for n in names.get(part, []) if n not in by_name]
    if unknown:
        raise InputError(path, f"images not in the data set: {', '.join(unknown[:5])}")
    listed = [n for part in PARTS for n in names.get(part, [])]
    if len(set(listed)) < len(listed):
        raise InputError(path, "an image is listed twice (in two parts of the split?)")
    parts = [[by_name[n] for n in names.get(part, [])] for part in PARTS]
    return Split(*parts, protocol="file")


def _check_size(needed: int, available: int, parts: str) -> None:
    if needed > available:
        raise InputError(
            None,
            f"the split needs {needed} images ({parts}), there are {available};"
            " ask for a smaller N",
        )


def _shuffled(samples: list[Sample], seed: int) -> list[Sample]:
    """The samples in a random order fixed by ``seed``, each group kept together."""
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.group or sample.name, []).append(sample)
    order = np.random.default_rng(seed).permutation(sorted(groups))
    return [sample for key in order for sample in groups[key]]


def evaluation_samples(samples: list[Sample], fmt: str, subset: str, training: dict) -> list:
    """The samples to evaluate (or calibrate) a model on: ``all``, or ``test``: VGG cells' fixed
    test set for a model trained under the Lempitsky protocol, else the samples its training
    (``training``, the model's provenance) neither trained nor validated on."""
    if subset == "all":
        return samples
    if subset != "test":
        raise ValueError(f"--subset must be 'test' or 'all', not '{subset}'")
    if fmt == "vgg_cells" and training.get("protocol", "lempitsky") == "lempitsky":
        return samples[VGG_POOL_SIZE:]  # the fixed test set, 101-200
    split = training.get("split", {})
    seen = set(split.get("train", [])) | set(split.get("val", []))
    unseen = [s for s in samples if s.name not in seen]
    if not unseen:
        raise ValueError("the model was trained or validated on every image here; use --subset all")
    return unseen


def training_split(
    data: str, fmt: str | None, n_train: int, n_val: int, seed: int, protocol: str | None
) -> tuple[str, str, Split]:
    """(where the data came from, its format, the seeded split) of a data folder or set name,
    or, with ``fmt="synth"``, of ``n_train + n_val`` images of a simulated preset."""
    if fmt == "synth":
        label, settings = synth_settings(data)
        samples = synth_samples(settings, n_train + n_val, seed, label)
        return f"synth:{label}", fmt, Split(samples[:n_train], samples[n_train:], [])
    root, fmt = resolve_data(data, fmt)
    split = protocol_split(load_dataset(root, fmt), fmt, n_train, n_val, seed, protocol)
    return str(root.resolve()), fmt, split

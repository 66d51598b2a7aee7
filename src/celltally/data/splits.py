"""Train / validation / test splits of the standard counting protocol (Lempitsky & Zisserman 2010).

N training and N validation images are drawn at random from a training pool; the test set is
fixed. For VGG cells the pool is images 001-100 and the test set 101-200; for other sets the test
set is every image not drawn. Samples sharing a ``group`` (the quadrants of one MBM source image)
are drawn one after another, so a group is cut at most where one part of the split ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from celltally.data.datasets import Sample
from celltally.errors import InputError

VGG_POOL_SIZE = 100


@dataclass(frozen=True)
class Split:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]

    def names(self) -> dict[str, list[str]]:
        return {part: [s.name for s in getattr(self, part)] for part in ("train", "val", "test")}

    def record(self, data: str, fmt: str, seed: int) -> dict:
        """Where a model's training data came from, for its config."""
        names = self.names()
        return {
            "data": data,
            "format": fmt,
            "protocol": "lempitsky" if fmt == "vgg_cells" else "random",
            "seed": seed,
            "split": {"train": names["train"], "val": names["val"]},
        }


def protocol_split(
    samples: list[Sample], fmt: str, n_train: int, n_val: int, seed: int = 0
) -> Split:
    """Draw ``n_train`` + ``n_val`` samples from the training pool of ``fmt`` with ``seed``."""
    pool, test = fixed_test_split(samples, fmt)
    drawn = _draw_groups(pool, n_train + n_val, seed)
    train, val = drawn[:n_train], drawn[n_train:]
    if fmt != "vgg_cells":
        taken = {s.name for s in drawn}
        test = [s for s in samples if s.name not in taken]
    return Split(train, val, test)


def fixed_test_split(samples: list[Sample], fmt: str) -> tuple[list[Sample], list[Sample]]:
    """(training pool, fixed test set): VGG cells 001-100 / 101-200; otherwise (all, [])."""
    if fmt == "vgg_cells":
        return samples[:VGG_POOL_SIZE], samples[VGG_POOL_SIZE:]
    return samples, []


def _draw_groups(pool: list[Sample], n: int, seed: int) -> list[Sample]:
    """Draw ``n`` samples, whole groups in random order (the last one may be cut)."""
    if n > len(pool):
        raise InputError(
            None, f"asked for {n} training + validation images, the pool has {len(pool)}"
        )
    groups: dict[str, list[Sample]] = {}
    for sample in pool:
        groups.setdefault(sample.group or sample.name, []).append(sample)
    order = np.random.default_rng(seed).permutation(sorted(groups))
    drawn: list[Sample] = []
    for key in order:
        drawn += groups[key]
        if len(drawn) >= n:
            break
    return drawn[:n]

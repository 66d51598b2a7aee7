"""Benchmark: the contrast over the noise (``celltally.models.ood.image_contrast``) that tells
an image of pure noise, which counts 0, from one with cells (issue 41).

Noise images (white, photon at 0.5, 2 and 20 photons a pixel, 8-bit rounded) and up to 30
validation images (test where a set has no validation split) of each real set, their channel
picked as the generalist counts them. Records go to ``benchmarks/contrast/records.json``; the
table is printed.

    python benchmarks/contrast.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from celltally.data.collection import REAL_SETS
from celltally.data.images import pick_channel
from celltally.models.ood import MIN_CONTRAST, image_contrast

RECORDS = Path(__file__).resolve().parent / "contrast" / "records.json"
IMAGES_PER_SET = 30


def noise_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "white 96x96": rng.normal(100, 10, (96, 96)),
        "white 1024x1024": rng.normal(100, 10, (1024, 1024)),
        "photon 0.5/px 512x512": rng.poisson(0.5, (512, 512)).astype(float),
        "photon 2/px 512x512": rng.poisson(2.0, (512, 512)).astype(float),
        "photon 20/px 512x512": rng.poisson(20.0, (512, 512)).astype(float),
        "8-bit rounded 256x256": np.clip(rng.normal(20, 3, (256, 256)), 0, 255).round(),
    }


def real_contrasts() -> list[dict]:
    rows = []
    for real in REAL_SETS:
        split = real.split()
        for sample in (split.val or split.test)[:IMAGES_PER_SET]:
            image, points = sample.load()
            picked = pick_channel(image, source=sample.image_path)[0]
            rows.append(
                {"set": real.name, "image": sample.name, "cells": len(points),
                 "contrast": image_contrast(picked)}
            )  # fmt: skip
    return rows


def main() -> None:
    noise = {name: image_contrast(image) for name, image in noise_images().items()}
    real = real_contrasts()
    RECORDS.parent.mkdir(parents=True, exist_ok=True)
    RECORDS.write_text(json.dumps({"noise": noise, "real": real}, indent=2))
    print(f"cut: {MIN_CONTRAST} (below it an image counts 0)")
    for name, value in noise.items():
        print(f"noise  {name:28s} {value:8.1f}")
    for name in dict.fromkeys(row["set"] for row in real):
        values = [row["contrast"] for row in real if row["set"] == name]
        print(f"real   {name:28s} min {min(values):8.1f}  median {np.median(values):8.1f}")


if __name__ == "__main__":
    main()

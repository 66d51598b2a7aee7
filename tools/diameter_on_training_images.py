"""The blind diameter estimate on training images (25 per real set; ctc, which has none, its
first 10 test images), against the true diameters the generalist trains with: run it on two
commits and compare, to see what a change to ``celltally.diameter`` moves before it is measured
on any test split.

    PYTHONPATH=<worktree of the old commit>/src python tools/diameter_on_training_images.py old.csv
    python tools/diameter_on_training_images.py new.csv

Prints, per set, the median relative error and the share of images more than 2x off.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from celltally.data.collection import REAL_SETS
from celltally.data.images import pick_channel
from celltally.diameter import estimate_diameter
from celltally.generalist import image_diameters

PER_SET = 25


def rows() -> list[dict]:
    found = []
    for real in REAL_SETS:
        split = real.split()
        samples = split.train[:: max(1, len(split.train) // PER_SET)][:PER_SET] or split.test[:10]
        for sample, true in zip(samples, image_diameters(real, samples), strict=True):
            image = pick_channel(sample.load()[0], source=sample.image_path)[0]
            estimate = estimate_diameter(image)
            found.append({"set": real.name, "image": sample.name, "true": true, "blind": estimate})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="CSV of the per-image estimates")
    table = pd.DataFrame(rows())
    table.to_csv(parser.parse_args().out, index=False)
    error = (table["blind"] - table["true"]).abs() / table["true"]
    summary = error.groupby(table["set"]).agg(median="median", over_2x=lambda e: (e > 1).mean())
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()

"""Benchmark: cell-diameter estimation (celltally.diameter) on the public data sets, issue 41.

Sets with instance labels (dsb2018 by modality, coelho2009, ctc), their test split: the median
relative error ``|est - true| / true`` of the blind ``estimate_diameter`` and of
``diameter_at_points`` (from the annotated centres) against ``mask_diameter`` (the median
equivalent diameter of the labelled nuclei). Dot-only sets (crchisto's test split; vgg_cells,
mbm and adipocyte in full, as they have no split file): the median diameter from the dots and
the median relative disagreement of the blind estimate with it. Per-image records go to
``benchmarks/diameter/{masks,dots}.csv``; the Markdown table is printed.

    python benchmarks/diameter.py [--report]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import tifffile

from celltally.data.datasets import Sample, default_data_root, load_dataset
from celltally.diameter import diameter_at_points, mask_diameter, measure_diameter
from results import write_section

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "diameter"
COMMAND = "python benchmarks/diameter.py"
MASK_SETS = {"dsb2018": "modality", "coelho2009": None, "ctc": None}  # set: manifest group column
DOT_SETS = {"crchisto": "points", "vgg_cells": "vgg_cells", "mbm": "mbm", "adipocyte": "adipocyte"}


def test_samples(root: Path, fmt: str) -> list[Sample]:
    """A set's test split (``split.json``), or all its images where it has none."""
    samples = load_dataset(root, fmt)
    split = root / "split.json"
    if not split.exists():
        return samples
    test = set(json.loads(split.read_text())["test"])
    return [s for s in samples if s.name in test]


def groups(root: Path, column: str | None) -> dict[str, str]:
    """Image stem -> its group in the manifest's ``column`` (none: one group, the set)."""
    if column is None:
        return {}
    manifest = pd.read_csv(root / "manifest.csv")
    return dict(zip(manifest["image"].map(lambda n: Path(n).stem), manifest[column], strict=True))


def measure(sample: Sample) -> dict:
    """One image's diameters: from the dots and blind, with the blind one's confidence."""
    image, points = sample.load()
    started = time.perf_counter()
    blind = measure_diameter(image)
    return {
        "image": sample.name,
        "height": image.shape[0],
        "width": image.shape[1],
        "cells": len(points),
        "at_points": diameter_at_points(image, points),
        "estimate": blind.diameter,
        "confidence": blind.confidence,
        "blind_seconds": time.perf_counter() - started,
    }


def mask_records(data: Path) -> pd.DataFrame:
    rows = []
    for name, column in MASK_SETS.items():
        root = data / name
        group_of = groups(root, column)
        for sample in test_samples(root, "points"):
            labels = tifffile.imread(root / "labels" / f"{sample.name}.tif")
            group = group_of.get(sample.name, name)
            rows.append({"set": name, "group": group, "true": mask_diameter(labels)})
            rows[-1].update(measure(sample))
    table = pd.DataFrame(rows)
    for method in ("estimate", "at_points"):
        table[f"{method}_error"] = (table[method] - table["true"]).abs() / table["true"]
    return table


def dot_records(data: Path) -> pd.DataFrame:
    rows = [
        {"set": name, **measure(sample)}
        for name, fmt in DOT_SETS.items()
        for sample in test_samples(data / name, fmt)
    ]
    table = pd.DataFrame(rows)
    table["disagreement"] = (table["estimate"] - table["at_points"]).abs() / table["at_points"]
    return table


def markdown(masks: pd.DataFrame, dots: pd.DataFrame) -> str:
    lines = [
        f"Cell diameter (px) estimation, test splits; median relative error. `{COMMAND}`",
        "",
        "| set | images | true diameter (median) | blind estimate error | from dots error"
        " | blind within 15% |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (name, group), part in masks.groupby(["set", "group"], sort=False):
        label = name if name == group else f"{name} {group}"
        lines.append(
            f"| {label} | {len(part)} | {part['true'].median():.1f}"
            f" | {part['estimate_error'].median():.1%} | {part['at_points_error'].median():.1%}"
            f" | {(part['estimate_error'] <= 0.15).mean():.0%} |"
        )
    lines += [
        "",
        "Dot-only sets: diameter from the dots against the blind estimate (median relative"
        f" disagreement). `{COMMAND}`",
        "",
        "| set | images | from dots (median) | blind (median) | disagreement |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, part in dots.groupby("set", sort=False):
        lines.append(
            f"| {name} | {len(part)} | {part['at_points'].median():.1f}"
            f" | {part['estimate'].median():.1f} | {part['disagreement'].median():.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="default: the data root")
    parser.add_argument("--report", action="store_true", help="only rewrite from the records")
    args = parser.parse_args()
    if not args.report:
        data = args.data or default_data_root()
        data = data if data.is_absolute() else REPO / data
        RECORDS.mkdir(parents=True, exist_ok=True)
        mask_records(data).to_csv(RECORDS / "masks.csv", index=False, float_format="%.4g")
        dot_records(data).to_csv(RECORDS / "dots.csv", index=False, float_format="%.4g")
    masks, dots = pd.read_csv(RECORDS / "masks.csv"), pd.read_csv(RECORDS / "dots.csv")
    text = "### Cell diameter estimation\n\n" + markdown(masks, dots)
    write_section("diameter", text)
    print(text)


if __name__ == "__main__":
    main()

"""Counting a batch of image files into a results folder, as ``celltally count`` does.

The folder gets ``counts.csv`` (one row per image or TIFF page: count, interval, centres,
diameter, scale, warning), ``points/<name>.csv``, ``density/<name>.tif``, ``overlays/<name>.png``
and ``run.json`` (the model, its hash, the options, versions). Every file is written atomically;
a bad file is reported and skipped, the others are still counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile

from celltally.data.points import write_points_csv
from celltally.errors import InputError
from celltally.io import atomic_write, write_json
from celltally.models import CountingModel, model_hash
from celltally.models.io import resolve_model, versions
from celltally.predict import ImageResult, count_file
from celltally.viz import save_overlay


@dataclass
class CountRun:
    """What counting a batch gave: the ``counts.csv`` table and the one-line errors of the
    files that could not be counted."""

    table: pd.DataFrame
    errors: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> pd.DataFrame:
        """The rows whose counts carry a warning."""
        return self.table[self.table["warning"] != ""]


def count_files(
    counter: CountingModel,
    model: str,
    files: Sequence[Path],
    out: Path,
    options: dict[str, Any],
    overlays: bool = True,
    record: dict[str, Any] | None = None,
    progress: Callable[[Sequence[Path]], Iterable[Path]] = iter,
) -> CountRun:
    """Count every page of ``files`` with ``counter`` (named ``model``; ``options`` are
    ``CountingModel.predict``'s) into the folder ``out``; ``record`` is added to run.json."""
    rows, errors = [], []
    names: set[str] = set()
    for path in progress(files):
        try:
            results = count_file(counter, path, **options)
        except InputError as error:
            errors.append(str(error))
            continue
        for result in results:
            result.name = _unique(result.name, names)
            _write_outputs(out, result, overlays)
            rows.append(_count_row(result, model))
    columns = count_columns(options.get("ci") is not None)
    run = CountRun(pd.DataFrame(rows, columns=columns).round(3), errors)
    atomic_write(out / "counts.csv", lambda tmp: run.table.to_csv(tmp, index=False))
    write_json(out / "run.json", _run_record(counter, model, options, run, record or {}))
    return run


def count_columns(ci: bool) -> list[str]:
    intervals = ["ci_low", "ci_high", "std"] if ci else []
    return ["image", "count", *intervals, "n_points", "diameter", "scale", "warning", "model"]


def _count_row(result: ImageResult, model: str) -> dict:
    """``counts.csv``'s row of one counted image."""
    found = result.prediction
    row = {"image": result.label, "count": round(found.count, 3)}
    if found.interval is not None:
        bounds = found.interval
        row |= {"ci_low": bounds.low, "ci_high": bounds.high, "std": bounds.std}
    return row | {
        "n_points": found.n_points,
        "diameter": found.diameter,
        "scale": found.scale,
        "warning": "; ".join(found.warnings),
        "model": model,
    }


def _write_outputs(out: Path, result: ImageResult, overlays: bool) -> None:
    found = result.prediction
    write_points_csv(out / "points" / f"{result.name}.csv", found.points)
    atomic_write(
        out / "density" / f"{result.name}.tif",
        lambda tmp: tifffile.imwrite(tmp, found.density.astype(np.float32)),
    )
    if overlays:
        save_overlay(
            out / "overlays" / f"{result.name}.png", result.image, found.points, found.count
        )


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    taken.add(candidate)
    return candidate


def _run_record(counter, model: str, options: dict, run: CountRun, extra: dict) -> dict:
    return {
        **extra,
        "model": model,
        "model_hash": model_hash(model),
        "model_path": str(resolve_model(model)),
        "model_config": counter.config.to_dict(),
        "options": options,
        "images": len(run.table),
        "failed": len(run.errors),
        "flagged": len(run.flagged),
        "versions": versions(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

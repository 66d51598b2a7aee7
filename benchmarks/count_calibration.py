"""Benchmark: the count calibration (``calibrate_counts``) of trained models on VGG cells.

Each model is calibrated on the validation images of its own split and tested on the fixed test
set, 101-200: test MAE before and after, the fitted gain and offset, and the slope and
intercept of the uncalibrated counts against the true counts (the bias the calibration
corrects). Models: the bundled FCRN-A (its split is in its config), and any training run given
with ``--run`` (a folder with ``model/`` and ``split.json``, as ``celltally train`` writes).
Records (``benchmarks/count_calibration``, committed) keep the figures of runs that are gone;
a model with a record is not measured again.

    python benchmarks/count_calibration.py                       # the bundled FCRN-A
    python benchmarks/count_calibration.py --report              # the section from the records
    python benchmarks/count_calibration.py --run RUN --name NAME  # and a training run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from celltally import load_model
from celltally.data import default_data_root, load_dataset
from celltally.data.splits import evaluation_samples
from celltally.uncertainty import calibrate
from results import write_section

OUT = Path(__file__).with_name("count_calibration")
BUNDLED = "fcrn_a_vgg_cells"


def measure(model_path: Path | str, split: dict) -> dict:
    """Calibrate a model's counts on its validation images; count the test images (VGG cells'
    fixed test set) both ways."""
    model = load_model(model_path)
    samples = load_dataset(default_data_root() / "vgg_cells", "vgg_cells")
    test = evaluation_samples(samples, "vgg_cells", "test", {"protocol": "lempitsky"})
    images, points = zip(*(sample.load() for sample in test), strict=True)
    true = np.array([len(p) for p in points], float)
    before = np.array([model.count(image) for image in images])
    by_name = {sample.name: sample for sample in samples}
    calibrate(model, [by_name[name] for name in split["val"]], counts=True)
    after = np.array([model.count(image) for image in images])
    slope, intercept = np.polyfit(true, before, 1)
    return {
        "arch": model.config.arch,
        "validation_images": len(split["val"]),
        "test_mae_before": float(np.abs(before - true).mean()),
        "test_mae_after": float(np.abs(after - true).mean()),
        "signed_error_before": float((before - true).mean()),
        "signed_error_after": float((after - true).mean()),
        "gain": model.config.count_gain,
        "offset": model.config.count_offset,
        "slope_before": float(slope),
        "intercept_before": float(intercept),
    }


def report() -> str:
    lines = [
        "### Count calibration",
        "",
        "Command: `python benchmarks/count_calibration.py` (`--run RUN --name NAME` for a"
        " training run). Each model's counts are calibrated (`gain * map + offset`, least"
        " squares on the counts; `celltally.uncertainty.calibrate_counts`) on the validation"
        " images of its own split and tested on VGG cells 101-200. Slope and intercept: of the"
        " uncalibrated counts against the true counts (1 and 0 if unbiased).",
        "",
        "| model | arch | validation images | test MAE before | after | mean signed error"
        " before | after | slope, intercept before | gain | offset per pixel |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path in sorted(OUT.glob("*.json")):
        r = json.loads(path.read_text())
        lines.append(
            f"| {path.stem} | {r['arch']} | {r['validation_images']} | {r['test_mae_before']:.2f}"
            f" | {r['test_mae_after']:.2f} | {r['signed_error_before']:+.2f}"
            f" | {r['signed_error_after']:+.2f} | {r['slope_before']:.3f},"
            f" {r['intercept_before']:+.1f} | {r['gain']:.4f} | {r['offset']:+.4g} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, help="a training run folder (model/, split.json)")
    parser.add_argument("--name", help="the run's name in the table")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only rewrite from the records")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.run is not None and not args.name:
        parser.error("--run needs --name")
    models = {BUNDLED: (BUNDLED, load_model(BUNDLED).config.training["split"])}
    if args.run is not None:
        split = json.loads((args.run / "split.json").read_text())
        models[args.name] = (args.run / "model", split)
    OUT.mkdir(exist_ok=True)
    for name, (model_path, split) in models.items():
        path = OUT / f"{name}.json"
        if not path.exists() and not args.report:
            path.write_text(json.dumps(measure(model_path, split), indent=2))
    text = report()
    write_section("count-calibration", text)
    print(text)


if __name__ == "__main__":
    main()

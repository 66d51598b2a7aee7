"""Train the bundled model: FCRN-A on the VGG cells training pool (001-100), tested on 101-200.

80 images train and 20 validate (drawn with seed 0 from 001-100); the run's test figures go in
its config and in a section of benchmarks/RESULTS.md. Shipping the run into the package as
``fcrn_a_vgg_cells`` is a release step of its own (``--ship``), never a side effect.

    python benchmarks/bundled_model.py           # train (resumably), test, write the section
    python benchmarks/bundled_model.py --ship    # release: copy the run into the package
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from celltally.data import default_data_root, load_dataset, protocol_split
from celltally.models import load_model, save_model
from celltally.predict import evaluate
from celltally.train import TrainConfig, train
from results import write_section

PACKAGE_WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "celltally" / "weights"
NAME = "fcrn_a_vgg_cells"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=default_data_root() / "vgg_cells")
    parser.add_argument("--run", type=Path, default=Path("benchmarks/runs/bundled_fcrn_a"))
    parser.add_argument("--settings", default="{}", help="JSON of TrainConfig overrides")
    parser.add_argument("--ship", action="store_true", help="copy the tested run into the package")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.ship:
        ship(args.run)
        return
    samples = load_dataset(args.data, "vgg_cells")
    split = protocol_split(samples, "vgg_cells", 80, 20, seed=0)
    config = TrainConfig(arch="fcrn_a", seed=0, **json.loads(args.settings))
    provenance = {**split.record("vgg_cells", "vgg_cells", 0), "train_pool": "001-100"}
    train(config, split.train, split.val, args.run, provenance)
    model = load_model(args.run)
    metrics = evaluate(model, split.test, radius=5.0)
    counts, detection = metrics["count"], metrics["detection"]
    model.config.training.update(
        test_set="101-200",
        test_mae=round(counts["mae"], 2),
        test_detection_f1=round(detection["f1"], 3),
    )
    save_model(model, args.run / "model")
    info = model.config.training
    text = "\n".join(
        [
            f"### Bundled model `{NAME}` (FCRN-A, VGG cells 001-100: 80 train + 20 validation, seed 0)",
            "",
            "Command: `python benchmarks/bundled_model.py`"
            + (f" --settings '{args.settings}'" if args.settings != "{}" else ""),
            "",
            "| test set | MAE | RMSE | rel. error | precision | recall | F1 (5 px) | train time | epochs |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| 101-200 | {counts['mae']:.2f} | {counts['rmse']:.2f} | {100 * counts['mre']:.1f}% |"
            f" {detection['precision']:.3f} | {detection['recall']:.3f} | {detection['f1']:.3f} |"
            f" {info['train_time_s'] / 60:.1f} min | {info['epochs_run']} |",
            "",
        ]
    )
    write_section("bundled-fcrn_a", text)
    print(text)


def ship(run: Path) -> None:
    """Copy the tested model of ``run`` into the package as ``fcrn_a_vgg_cells``."""
    model = load_model(run)
    if "test_mae" not in model.config.training:
        raise SystemExit(f"{run} has not been tested; run this script without --ship first")
    shutil.rmtree(PACKAGE_WEIGHTS / NAME, ignore_errors=True)
    save_model(model, PACKAGE_WEIGHTS / NAME)
    print(f"shipped {PACKAGE_WEIGHTS / NAME}")


if __name__ == "__main__":
    main()

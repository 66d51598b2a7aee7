"""Train the bundled model: FCRN-A on the VGG cells training pool (001-100), tested on 101-200.

80 images train and 20 validate (drawn with seed 0 from 001-100); the run's test figures go in
its config and in a section of benchmarks/RESULTS.md. Shipping the run into the package as
``fcrn_a_vgg_cells`` is a release step of its own (``--ship``), never a side effect. The test
figures are kept in ``benchmarks/bundled_model/records.json``.

    python benchmarks/bundled_model.py           # train (resumably), test, write the section
    python benchmarks/bundled_model.py --report  # the section from the records
    python benchmarks/bundled_model.py --ship    # release: copy the run into the package
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from celltally.data import default_data_root, load_dataset, protocol_split
from celltally.io import write_json
from celltally.models import load_model, save_model
from celltally.predict import evaluate
from celltally.train import TrainConfig, train
from results import read_records, save_records, write_section

PACKAGE_WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "celltally" / "weights"
NAME = "fcrn_a_vgg_cells"
RECORDS = "bundled_model"
CARD = {
    "purpose": "the FCRN paper's model: simulated fluorescence cells about 11 px across (VGG"
    " cells); for reproducing its tables, not for other images",
    "modality": "fluorescence (simulated)",
    "training_data": {"vgg_cells 001-100 (80 train, 20 val)": "research use (VGG, Oxford)"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=default_data_root() / "vgg_cells")
    parser.add_argument("--run", type=Path, default=Path("benchmarks/runs/bundled_fcrn_a"))
    parser.add_argument("--settings", default="{}", help="JSON of TrainConfig overrides")
    parser.add_argument("--ship", action="store_true", help="copy the tested run into the package")
    parser.add_argument("--report", action="store_true", help="only rewrite from the records")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.ship:
        ship(args.run)
        return
    if not args.report:
        split = protocol_split(load_dataset(args.data, "vgg_cells"), "vgg_cells", 80, 20, seed=0)
        config = TrainConfig(arch="fcrn_a", seed=0, **json.loads(args.settings))
        provenance = {**split.record("vgg_cells", "vgg_cells", 0), "train_pool": "001-100"}
        train(config, split.train, split.val, args.run, provenance)
        save_records(RECORDS, tested(args.run, split.test, args.settings))
    text = report(**read_records(RECORDS))
    write_section("bundled-fcrn_a", text)
    print(text)


def tested(run: Path, test: list, settings: str) -> dict:
    """Count and detection figures of the run's model on the test set (also written into its
    config, which ``--ship`` requires), with its training time and epochs."""
    model = load_model(run)
    metrics = evaluate(model, test, radius=5.0)
    model.config.training.update(
        test_set="101-200",
        test_mae=round(metrics["count"]["mae"], 2),
        test_detection_f1=round(metrics["detection"]["f1"], 3),
    )
    save_model(model, run / "model")
    info = model.config.training
    return {
        "count": metrics["count"],
        "detection": metrics["detection"],
        "train_time_s": info["train_time_s"],
        "epochs_run": info["epochs_run"],
        "settings": settings,
    }


def report(
    count: dict, detection: dict, train_time_s: float, epochs_run: int, settings: str
) -> str:
    return "\n".join(
        [
            f"### Bundled model `{NAME}` (FCRN-A, VGG cells 001-100: 80 train + 20 validation, seed 0)",
            "",
            "Command: `python benchmarks/bundled_model.py`"
            + (f" --settings '{settings}'" if settings != "{}" else ""),
            "",
            "| test set | MAE | RMSE | rel. error | precision | recall | F1 (5 px) | train time | epochs |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| 101-200 | {count['mae']:.2f} | {count['rmse']:.2f} | {100 * count['mre']:.1f}% |"
            f" {detection['precision']:.3f} | {detection['recall']:.3f} | {detection['f1']:.3f} |"
            f" {train_time_s / 60:.1f} min | {epochs_run} |",
            "",
        ]
    )


def ship(run: Path) -> None:
    """Copy the tested model of ``run`` into the package as ``fcrn_a_vgg_cells``, with its card
    (what it is for, its training data and licence, its test figures)."""
    model = load_model(run)
    if "test_mae" not in model.config.training:
        raise SystemExit(f"{run} has not been tested; run this script without --ship first")
    folder = PACKAGE_WEIGHTS / NAME
    shutil.rmtree(folder, ignore_errors=True)
    save_model(model, folder)
    tested = model.config.training
    card = CARD | {
        "test": f"VGG cells 101-200: MAE {tested['test_mae']:.2f},"
        f" F1 {tested['test_detection_f1']:.3f}"
    }
    write_json(folder / "card.json", card)
    print(f"shipped {folder}")


if __name__ == "__main__":
    main()

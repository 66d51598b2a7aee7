"""Benchmark: Count-ception (Cohen et al. 2017) under the paper's protocols, on this machine.

- ``vgg``: VGG cells, Lempitsky protocol, N = 32 (+ 32 validation), 3 draws (paper: MAE 2.4 +-
  0.4); count MAE with and without the count calibration, and detection precision / recall /
  F1 of the deconvolved centres.
- ``mbm``: MBM, Count-ception protocol, N = 15 (+ 15), 3 draws (paper: 8.8 +- 2.3).
- ``mbm_half``: the same draws with the images at half resolution (2x2 means, dot coordinates
  halved): MBM's nuclei lie 27 px apart (median nearest neighbour), VGG cells' 9 px, so at full
  resolution a 32x32 window sees about one nucleus, often cut by its edge.
- ``stride``: the paper's Table 3 on VGG cells N = 32, draw 0: the window stride s used in
  training and testing, or only in testing (the s = 1 models of ``vgg``, every draw).
- ``batchnorm``: frozen BatchNorm (the original's) against batch statistics (the recipe's), at
  3e-4 and at the paper's (and recipe's) 5e-3, on VGG cells N = 32, draw 0, with the same short
  budget (``RECIPE_EPOCHS`` epochs of patches): which learns faster per step; then the whole
  recipe with each of ``FULL_RIVALS``' settings, against draw 0 of ``vgg`` (the recipe's own).

The recipe before the count calibration (``calibrate_counts``) was measured with every part;
those records are kept in the ``*_uncalibrated`` folders, and the stride and BatchNorm
comparisons, all made before it, are against them. The recipe's first calibrated VGG cells
models kept the epoch with the lowest raw validation MAE, before the calibration; they are
kept in ``vgg_cells_raw_selection``.

Records resume (``benchmarks/countception``, committed; the training runs in its ``runs/``
folders are not). Writes the ``countception`` section of benchmarks/RESULTS.md from whatever is
finished.

    python benchmarks/countception.py                  # every part, in this order
    python benchmarks/countception.py --part stride    # one part (repeatable)
    python benchmarks/countception.py --part vgg --draw 1 --threads 1  # one draw per process
    python benchmarks/countception.py --report         # the section from the finished records
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from celltally import load_model
from celltally.benchmark import BenchmarkConfig, load_records, run_benchmark, summarise
from celltally.data import default_data_root, load_dataset, protocol_split
from celltally.data.images import downsample, to_channels, to_grid_points
from celltally.data.points import write_points_csv
from celltally.models.countception import CountCeption
from results import COUNTCEPTION_OUT, write_section

OUT = COUNTCEPTION_OUT
DRAWS = 3
STRIDES = (1, 8, 16, 32)
RECIPE_EPOCHS = 3
RECIPE_VARIANTS = {  # folder: (label, settings on top of the recipe)
    "frozen_lr_3e4": ("frozen, lr 3e-4", {"frozen_bn": True, "lr": 3e-4}),
    "frozen_lr_5e3": ("frozen, lr 5e-3", {"frozen_bn": True, "lr": 5e-3}),
    "batch_statistics_lr_3e4": ("batch statistics, lr 3e-4", {"frozen_bn": False, "lr": 3e-4}),
    "batch_statistics_lr_5e3": (
        "batch statistics, lr 5e-3 (the recipe)",
        {"frozen_bn": False, "lr": 5e-3},
    ),
}
FULL_RIVALS = {  # folder: (label, settings on top of the recipe), each trained in full
    "frozen_lr_3e4_full": RECIPE_VARIANTS["frozen_lr_3e4"],  # the original's BatchNorm, fastest
    "readout_refit_full": (
        "batch statistics, lr 5e-3, readout refitted after each epoch",
        {"refit_readout": True},
    ),
}
UNCALIBRATED = "_uncalibrated"  # suffix of the folders of the recipe without count calibration
RAW_SELECTION = "_raw_selection"  # the recipe before its epoch was chosen after the calibration
PARTS = {
    "vgg": {"data": "vgg_cells", "protocol": "lempitsky", "n": 32},
    "mbm": {"data": "mbm", "protocol": "countception", "n": 15},
}


def run_part(name: str, draw: int | None = None) -> None:
    part = PARTS[name]
    config = BenchmarkConfig(
        data=part["data"],
        protocol=part["protocol"],
        n=(part["n"],),
        draws=DRAWS,
        draw=draw,
        methods=("countception",),
    )
    run_benchmark(config, OUT / part["data"], on_record=_print)


def run_mbm_half(draw: int | None = None) -> None:
    """``mbm``'s draws (the same images: the split depends only on the names and groups) at
    half resolution; detection within 2.5 px, the 5 px of full resolution."""
    out = OUT / "mbm_half"
    config = BenchmarkConfig(
        data=str(half_resolution_mbm(out / "runs" / "data")),
        fmt="points",
        protocol="countception",
        n=(PARTS["mbm"]["n"],),
        draws=DRAWS,
        draw=draw,
        methods=("countception",),
        settings={"in_channels": 3},
        radius=2.5,
    )
    run_benchmark(config, out, on_record=_print)


def half_resolution_mbm(folder: Path) -> Path:
    """MBM as a ``points`` folder at half resolution: 2x2 means, and the dot coordinates
    moved with them (pixel centre 2i + 0.5 becomes i), not the dot images (that merges dots)."""
    if (folder / "complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    samples = load_dataset(default_data_root() / "mbm", "mbm")
    for sample in samples:
        image, points = sample.load()
        iio.imwrite(folder / f"{sample.name}.png", downsample(image, 2).round().astype(np.uint8))
        write_points_csv(folder / f"{sample.name}.csv", to_grid_points(points, 2))
    groups = "".join(f"{s.name}.png,{s.group}\n" for s in samples)
    (folder / "groups.csv").write_text(f"image,group\n{groups}")  # quadrants of one image
    (folder / "complete").touch()
    return folder


def run_strides() -> None:
    """Train (draw 0) with each stride > 1; then read every draw's stride-1 model at each
    stride."""
    for stride in STRIDES[1:]:
        train_vgg_draw0({"window_stride": stride}, OUT / f"vgg_cells_stride{stride}")
    for seed in range(DRAWS):
        path = OUT / f"vgg_cells_test_strides_seed{seed}.json"
        model_dir = OUT / f"vgg_cells{UNCALIBRATED}" / "runs" / f"countception_n32_seed{seed}"
        model_dir = model_dir / "model"
        if not path.exists() and (model_dir / "config.json").exists():
            path.write_text(json.dumps(test_strides(model_dir, seed)))


def run_batchnorm_variants() -> None:
    """Each variant trains draw 0 for ``RECIPE_EPOCHS`` epochs; a run that diverges is recorded
    as such (``diverged.txt``) instead of stopping the others. Then each of ``FULL_RIVALS``
    trains the whole recipe, to settle which ends better, not only which starts faster."""
    short = {"epochs": RECIPE_EPOCHS, "lr_step": RECIPE_EPOCHS, "finetune_epochs": 0}
    for folder, (label, settings) in RECIPE_VARIANTS.items():
        out = OUT / f"vgg_cells_{folder}"
        if (out / "diverged.txt").exists():
            continue
        try:
            train_vgg_draw0(settings | short, out)
        except ValueError as error:
            if "diverged" not in str(error):
                raise
            (out / "diverged.txt").write_text(str(error).split(";")[0])  # "training diverged.."
            print(f"{label}: {error}", flush=True)
    for folder, (_, settings) in FULL_RIVALS.items():
        train_vgg_draw0(settings, OUT / f"vgg_cells_{folder}")


def train_vgg_draw0(settings: dict, out: Path) -> None:
    """Count-ception with ``settings`` on top of its recipe, VGG cells N = 32, draw 0."""
    config = BenchmarkConfig(
        data="vgg_cells",
        protocol="lempitsky",
        n=(32,),
        draws=1,
        methods=("countception",),
        settings=settings,
    )
    run_benchmark(config, out, on_record=_print)


@torch.no_grad()
def test_strides(model_dir: Path, seed: int) -> dict[str, float]:
    """Test MAE of one stride-1 model read at every stride: one forward pass per image."""
    model = load_model(model_dir)
    samples = load_dataset(default_data_root() / "vgg_cells", "vgg_cells")
    test = protocol_split(samples, "vgg_cells", 32, 32, seed).test
    errors: dict[int, list[float]] = {stride: [] for stride in STRIDES}
    for sample in test:
        image, points = sample.load()
        output = model.predict_map(to_channels(image, model.config.in_channels))
        for stride in STRIDES:
            model.config.window_stride = stride
            errors[stride].append(abs(model.count_from_map(output) - len(points)))
    return {str(stride): float(np.mean(e)) for stride, e in errors.items()}


def report() -> str:
    header = [
        "### Count-ception: accuracy under the paper's protocols",
        "",
        "Command: `python benchmarks/countception.py` (parts `--part vgg`, `--part mbm`,"
        " `--part mbm_half`, `--part stride`, `--part batchnorm`; `--draw K --threads 1` trains"
        " one draw, so two processes share the 2 cores), with the model's default recipe"
        " (`celltally.models.countception.CountCeption.recipe`) unless a table says otherwise."
        " Records and splits: `benchmarks/countception`. Detection: the centres of the"
        " deconvolved count map, matched within 5 px (2.5 px at half resolution). The epoch"
        " kept is the best on the validation images: by the MAE after the count calibration"
        " (left-one-out) where a record's history has `val_mae_calibrated`, else by the raw MAE"
        " (records trained before that rule: the raw-selection row and MBM's).",
    ]
    tables = [accuracy_table(), stride_table(), batchnorm_table(), full_recipe_table()]
    return "\n\n".join("\n".join(lines) for lines in [header, *tables] if lines)


def accuracy_table() -> list[str]:
    paper = {"vgg_cells": "2.4 ± 0.4", "mbm": "8.8 ± 2.3"}
    rows = []
    variants = {
        "": "recipe",
        RAW_SELECTION: "recipe, epoch kept by the raw validation MAE",
        UNCALIBRATED: "recipe without count calibration",
        "_half": "recipe, images at half resolution",
    }
    for part in PARTS.values():
        for suffix, recipe in variants.items():
            if records := load_records(OUT / f"{part['data']}{suffix}"):
                rows.append(_accuracy_row(part, recipe, records, paper[part["data"]]))
    if not rows:
        return []
    return [
        "| data | N | training | draws | MAE (ours) | MAE (paper) | per draw | per draw, not"
        " calibrated | RMSE | precision | recall | F1 | training time per draw |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]


def _accuracy_row(part: dict, recipe: str, records: list[dict], paper: str) -> str:
    row = summarise(records).iloc[0]
    per_draw = ", ".join(f"{r['count']['mae']:.2f}" for r in records)
    raw = [r.get("count_uncalibrated") for r in records]
    per_draw_raw = ", ".join(f"{c['mae']:.2f}" for c in raw if c) or "—"
    return (
        f"| {part['data']} | {part['n']} | {recipe} | {int(row['draws'])} | {row['mae']:.2f} ±"
        f" {row['mae_std']:.2f} | {paper} | {per_draw} | {per_draw_raw} | {row['rmse']:.2f}"
        f" | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f}"
        f" | {row['train_time_s'] / 60:.0f} min |"
    )


def stride_table() -> list[str]:
    trained = {1: _draw0(OUT / f"vgg_cells{UNCALIBRATED}")}
    trained |= {s: _draw0(OUT / f"vgg_cells_stride{s}") for s in STRIDES[1:]}
    tested = [
        json.loads(p.read_text()) for p in sorted(OUT.glob("vgg_cells_test_strides_seed*.json"))
    ]
    if not tested and trained[1] is None:
        return []
    lines = [
        "Stride table (paper Table 3), VGG cells N = 32, test MAE: trained and tested with"
        " stride s (draw 0), and trained with s = 1 but tested with s (mean over"
        f" {len(tested)} draws).",
        "",
        "| stride s | times each cell is counted | train & test | test only |",
        "| --- | --- | --- | --- |",
    ]
    for stride in STRIDES:
        both = f"{trained[stride]['count']['mae']:.2f}" if trained[stride] else "—"
        only = f"{np.mean([t[str(stride)] for t in tested]):.2f}" if tested else "—"
        lines.append(f"| {stride} | {(32 // stride) ** 2} | {both} | {only} |")
    return lines


def batchnorm_table() -> list[str]:
    rows = []
    for folder, (label, _) in RECIPE_VARIANTS.items():
        out = OUT / f"vgg_cells_{folder}"
        if record := _draw0(out):
            rows.append(
                f"| {label} | {_curve(record)} | {record['count']['mae']:.2f}"
                f" | {record['train_time_s'] / 60:.0f} min |"
            )
        elif (out / "diverged.txt").exists():
            rows.append(f"| {label} | {(out / 'diverged.txt').read_text()} | — | — |")
    if not rows:
        return []
    return [
        f"BatchNorm and learning rate, VGG cells N = 32, draw 0, {RECIPE_EPOCHS} epochs of"
        " patches each (no fine-tuning, no learning-rate cut), Adam, batches of 4 128x128"
        " patches: validation MAE after each epoch and test MAE of the best epoch. This ranks"
        " how fast each learns, not where each ends: the recipe trains 2,200 steps, these 300.",
        "",
        "| BatchNorm, learning rate | validation MAE by epoch | test MAE | training time |",
        "| --- | --- | --- | --- |",
        *rows,
    ]


def full_recipe_table() -> list[str]:
    """The recipe against each of ``FULL_RIVALS``, all over the whole recipe (draw 0; the
    recipe's own run is draw 0 of ``vgg``)."""
    runs = {
        RECIPE_VARIANTS["batch_statistics_lr_5e3"][0]: OUT / f"vgg_cells{UNCALIBRATED}",
        **{label: OUT / f"vgg_cells_{folder}" for folder, (label, _) in FULL_RIVALS.items()},
    }
    recipe = CountCeption.recipe
    rows = []
    for label, out in runs.items():
        if r := _draw0(out):
            rows.append(
                f"| {label} | {_curve(r)} | {min(row['val_mae'] for row in r['history']):.2f}"
                f" | {r['count']['mae']:.2f} | {r['detection']['f1']:.3f}"
                f" | {r['train_time_s'] / 60:.0f} min |"
            )
    if not rows:
        return []
    return [
        f"The whole recipe ({recipe['epochs']} epochs of patches, the learning rate cut tenfold"
        f" after {recipe['lr_step']}, then {recipe['finetune_epochs']} of whole images), VGG cells"
        " N = 32, draw 0: validation MAE after each epoch, the best, and the test MAE and F1 of"
        " the model kept (the best).",
        "",
        "| BatchNorm, learning rate | validation MAE by epoch | best validation MAE"
        " | test MAE | F1 | training time |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
    ]


def _draw0(out: Path) -> dict | None:
    """The finished draw-0 record in ``out``, if any."""
    return next((r for r in load_records(out) if r["seed"] == 0), None)


def _curve(record: dict) -> str:
    """Validation MAE after each epoch of a record's training run."""
    return ", ".join(f"{row['val_mae']:.1f}" for row in record["history"])


def _print(record: dict) -> None:
    print(
        f"{record['dataset']} N={record['n']} seed {record['seed']}:"
        f" MAE {record['count']['mae']:.2f} ({record['train_time_s'] / 60:.1f} min)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part", choices=[*PARTS, "mbm_half", "stride", "batchnorm"], action="append"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--draw", type=int, help="train only this draw of vgg / mbm / mbm_half (one per process)"
    )
    parser.add_argument("--report", action="store_true", help="train nothing; write the section")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runners = {
        **{name: partial(run_part, name, args.draw) for name in PARTS},
        "mbm_half": partial(run_mbm_half, args.draw),
        "stride": run_strides,
        "batchnorm": run_batchnorm_variants,
    }
    for part in [] if args.report else args.part or list(runners):
        runners[part]()
    text = report()
    write_section("countception", text)
    print(text)


if __name__ == "__main__":
    main()

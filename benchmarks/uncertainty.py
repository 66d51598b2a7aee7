"""Benchmark: count intervals, calibrated by conformal prediction, and their coverage on new images.

- ``fpn``: ``fpn_vgg11`` (cellcount) on synthetic ``bbbc005`` images: trained on ``--n-train``
  images, calibrated on ``--n-val`` others, tested on ``--n-test`` more (paper: MAE 2.4, R^2
  0.987, largest error <= 6, "over 80%" of counts inside the 95% interval).
- ``vgg``: FCRN-A with a variance head on VGG cells (Lempitsky protocol, N = 32, 3 draws), tested
  on 101-200. ``mbm``: the same on MBM (N = 15, Count-ception protocol).

Coverage target: 93-97% of test counts inside the 95% intervals. Runs resume
(``benchmarks/runs/uncertainty``). Writes the ``uncertainty`` section of benchmarks/RESULTS.md.

    python benchmarks/uncertainty.py [--part fpn|vgg|mbm]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from celltally import load_model
from celltally.benchmark import BenchmarkConfig, load_records, run_benchmark
from celltally.data import default_data_root, load_dataset, protocol_split
from celltally.data.synth import preset, synth_samples
from celltally.predict import evaluate
from celltally.train import TrainConfig, train
from celltally.uncertainty import reliability
from results import write_section

RUNS = Path("benchmarks/runs/uncertainty")
LEVEL = 0.95
LEVELS = (0.5, 0.8, 0.9, 0.95)
TABLES = {
    "vgg": {"data": "vgg_cells", "protocol": "lempitsky", "n": 32},
    "mbm": {"data": "mbm", "protocol": "countception", "n": 15},
}


def interval_result(model, samples: list) -> dict:
    """Count metrics, R^2, largest error, coverage at ``LEVEL`` and at ``LEVELS``."""
    result = evaluate(model, samples, radius=5.0, level=LEVEL)
    rows = result["images"]
    true = np.array([r["true"] for r in rows], float)
    counts = np.array([r["count"] for r in rows], float)
    observed = reliability(
        counts, [r["sigma"] for r in rows], true, model.config.conformal_scores, LEVELS
    )
    return {
        "n_test": len(rows),
        "count": result["count"],
        "r2": float(1 - ((counts - true) ** 2).sum() / ((true - true.mean()) ** 2).sum()),
        "largest_error": float(np.abs(counts - true).max()),
        "interval": result["interval"],
        "reliability": dict(zip(map(str, LEVELS), observed, strict=True)),
        "calibration_images": len(model.config.conformal_scores),
        "train_time_s": model.config.training.get("train_time_s"),
    }


def run_fpn(args) -> None:
    path = RUNS / "fpn_bbbc005.json"
    if path.exists():
        return
    cells = preset("bbbc005")
    samples = synth_samples(cells, args.n_train + args.n_val + args.n_test, seed=0)
    train_set = samples[: args.n_train]
    val_set = samples[args.n_train : args.n_train + args.n_val]
    test_set = samples[args.n_train + args.n_val :]
    config = TrainConfig.from_dict({"arch": "fpn_vgg11", "in_channels": 3})
    model = train(config, train_set, val_set, RUNS / "fpn_bbbc005")
    path.write_text(json.dumps(interval_result(model, test_set), indent=2))


def run_table(name: str) -> None:
    table = TABLES[name]
    config = BenchmarkConfig(
        data=table["data"],
        protocol=table["protocol"],
        n=(table["n"],),
        draws=3,
        methods=("fcrn_a",),
        settings={"variance_head": True},
    )
    out = RUNS / table["data"]
    run_benchmark(config, out)
    samples = load_dataset(default_data_root() / table["data"], table["data"])
    for record in load_records(out):
        path = out / f"intervals_seed{record['seed']}.json"
        if path.exists():
            continue
        split = protocol_split(samples, table["data"], table["n"], table["n"], record["seed"],
                               table["protocol"])  # fmt: skip
        model = load_model(out / "runs" / f"fcrn_a_n{table['n']}_seed{record['seed']}")
        path.write_text(json.dumps(interval_result(model, split.test), indent=2))


def report() -> str:
    lines = [
        "### Count intervals: coverage on new images",
        "",
        "Command: `python benchmarks/uncertainty.py` (parts `--part fpn`, `--part vgg`,"
        f" `--part mbm`). Intervals at {LEVEL:.0%}, calibrated by split conformal prediction on"
        " the validation images (`celltally.uncertainty`). Target coverage: 93-97%.",
        "",
        "| model | data | test images | MAE | R^2 | largest error | 95% coverage | mean width"
        " | coverage at 50 / 80 / 90% | calibration images |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    results = []
    if (RUNS / "fpn_bbbc005.json").exists():
        results.append(
            ("fpn_vgg11", "synthetic bbbc005", json.loads((RUNS / "fpn_bbbc005.json").read_text()))
        )
    for table in TABLES.values():
        for path in sorted((RUNS / table["data"]).glob("intervals_seed*.json")):
            draw = path.stem.removeprefix("intervals_seed")
            label = f"{table['data']} N = {table['n']}, draw {draw}"
            results.append(("fcrn_a + variance head", label, json.loads(path.read_text())))
    for model, data, r in results:
        rel = r["reliability"]
        lines.append(
            f"| {model} | {data} | {r['n_test']} | {r['count']['mae']:.2f} | {r['r2']:.3f}"
            f" | {r['largest_error']:.1f} | {100 * r['interval']['coverage']:.1f}%"
            f" | {r['interval']['mean_width']:.1f} | {100 * rel['0.5']:.0f} / {100 * rel['0.8']:.0f}"
            f" / {100 * rel['0.9']:.0f}% | {r['calibration_images']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["fpn", *TABLES], action="append")
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-val", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RUNS.mkdir(parents=True, exist_ok=True)
    for part in args.part or ["vgg", "mbm", "fpn"]:
        run_fpn(args) if part == "fpn" else run_table(part)
        text = report()
        write_section("uncertainty", text)
        print(text)


if __name__ == "__main__":
    main()

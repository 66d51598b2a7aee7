"""Benchmark: Count-ception (Cohen et al. 2017) under the paper's protocols, on this machine.

- ``vgg``: VGG cells, Lempitsky protocol, N = 32 (+ 32 validation), 3 draws (paper: MAE 2.4 +-
  0.4); count MAE, and detection precision / recall / F1 of the deconvolved centres.
- ``mbm``: MBM, Count-ception protocol, N = 15 (+ 15), 3 draws (paper: 8.8 +- 2.3).
- ``stride``: the paper's Table 3 on VGG cells N = 32, draw 0: the window stride s used in
  training and testing, or only in testing (the s = 1 models of ``vgg``, every draw).

Records resume (``benchmarks/countception``, committed; the training runs in its ``runs/``
folders are not). Writes the ``countception`` section of benchmarks/RESULTS.md from whatever is
finished.

    python benchmarks/countception.py                  # every part, in this order
    python benchmarks/countception.py --part stride    # one part (repeatable)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from celltally import load_model
from celltally.benchmark import BenchmarkConfig, load_records, run_benchmark, summarise
from celltally.data import default_data_root, load_dataset, protocol_split
from celltally.data.images import to_channels
from results import COUNTCEPTION_OUT, write_section

OUT = COUNTCEPTION_OUT
DRAWS = 3
STRIDES = (1, 8, 16, 32)
PARTS = {
    "vgg": {"data": "vgg_cells", "protocol": "lempitsky", "n": 32},
    "mbm": {"data": "mbm", "protocol": "countception", "n": 15},
}


def run_part(name: str) -> None:
    part = PARTS[name]
    config = BenchmarkConfig(
        data=part["data"],
        protocol=part["protocol"],
        n=(part["n"],),
        draws=DRAWS,
        methods=("countception",),
    )
    run_benchmark(config, OUT / part["data"], on_record=_print)


def run_strides() -> None:
    """Train (draw 0) with each stride > 1; then read every draw's stride-1 model at each
    stride."""
    for stride in STRIDES[1:]:
        config = BenchmarkConfig(
            data="vgg_cells",
            protocol="lempitsky",
            n=(32,),
            draws=1,
            methods=("countception",),
            settings={"window_stride": stride},
        )
        run_benchmark(config, OUT / f"vgg_cells_stride{stride}", on_record=_print)
    for seed in range(DRAWS):
        path = OUT / f"vgg_cells_test_strides_seed{seed}.json"
        model_dir = OUT / "vgg_cells" / "runs" / f"countception_n32_seed{seed}" / "model"
        if not path.exists() and (model_dir / "config.json").exists():
            path.write_text(json.dumps(test_strides(model_dir, seed)))


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
    lines = [
        "### Count-ception: accuracy under the paper's protocols",
        "",
        "Command: `python benchmarks/countception.py` (parts `--part vgg`, `--part mbm`,"
        " `--part stride`), with the model's default recipe"
        " (`celltally.models.countception.CountCeption.recipe`). Records and splits:"
        " `benchmarks/countception`. Detection: the centres of the deconvolved count map,"
        " matched within 5 px.",
        "",
        "| data | N | draws | MAE (ours) | MAE (paper) | per draw | RMSE | precision | recall"
        " | F1 | training time per draw |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    paper = {"vgg_cells": "2.4 ± 0.4", "mbm": "8.8 ± 2.3"}
    for part in PARTS.values():
        records = load_records(OUT / part["data"])
        if not records:
            continue
        row = summarise(records).iloc[0]
        per_draw = ", ".join(f"{r['count']['mae']:.2f}" for r in records)
        lines.append(
            f"| {part['data']} | {part['n']} | {int(row['draws'])} | {row['mae']:.2f} ±"
            f" {row['mae_std']:.2f} | {paper[part['data']]} | {per_draw} | {row['rmse']:.2f}"
            f" | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f}"
            f" | {row['train_time_s'] / 60:.0f} min |"
        )
    return "\n".join([*lines, "", *stride_table()])


def stride_table() -> list[str]:
    trained = {1: load_records(OUT / "vgg_cells")}
    trained |= {s: load_records(OUT / f"vgg_cells_stride{s}") for s in STRIDES[1:]}
    tested = [
        json.loads(p.read_text()) for p in sorted(OUT.glob("vgg_cells_test_strides_seed*.json"))
    ]
    if not tested and not trained[1]:
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
        draw0 = [r for r in trained[stride] if r["seed"] == 0]
        both = f"{draw0[0]['count']['mae']:.2f}" if draw0 else "—"
        only = f"{np.mean([t[str(stride)] for t in tested]):.2f}" if tested else "—"
        lines.append(f"| {stride} | {(32 // stride) ** 2} | {both} | {only} |")
    return lines


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
    parser.add_argument("--part", choices=[*PARTS, "stride"], action="append")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for part in args.part or [*PARTS, "stride"]:
        run_strides() if part == "stride" else run_part(part)
        text = report()
        write_section("countception", text)
        print(text)


if __name__ == "__main__":
    main()

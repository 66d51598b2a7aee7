"""A short training run of every architecture, each loss curve written out exactly: run it on two
commits and compare the files, to show that a change to the training code left training as it
was (``diff`` of the two outputs; identical to the last digit on one machine and thread count).

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before/src python tools/loss_curves.py before.json
    python tools/loss_curves.py after.json
    diff before.json after.json

FCRN-A (with a fitted variance head), FCRN-A with a weight average, FCRN-B and Count-ception
train on four VGG cells images (from the data path); fpn_vgg11 on 13 simulated images with
masks. One thread, so that the sums come out in one order.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd
import torch

from celltally.data import load_dataset, protocol_split
from celltally.data.datasets import default_data_root
from celltally.data.synth import preset, synth_samples
from celltally.train import TrainConfig, train

QUICK = {"patch_size": 64, "batch_size": 4, "optimizer": "adam", "lr": 1e-3, "finetune_lr": 1e-4}
RUNS = {
    "fcrn_a": {"arch": "fcrn_a", "epochs": 2, "finetune_epochs": 1, "variance_head": True},
    "fcrn_a_ema": {"arch": "fcrn_a", "epochs": 2, "finetune_epochs": 0, "ema_decay": 0.9},
    "fcrn_b": {"arch": "fcrn_b", "epochs": 2, "finetune_epochs": 1},
    "countception": {"arch": "countception", "epochs": 2, "finetune_epochs": 0, "batch_size": 2},
    "fpn_vgg11": {
        "arch": "fpn_vgg11",
        "in_channels": 3,
        "epochs": 2,
        "finetune_epochs": 2,
        "counter_crop": 64,
    },
}


def data(name: str) -> tuple[list, list]:
    if name == "fpn_vgg11":
        cells = preset("bbbc005", height=96, width=128, count_range=(5, 20), radius=8.0)
        samples = synth_samples(cells, 13, seed=0)
        return samples[:10], samples[10:]
    samples = load_dataset(default_data_root() / "vgg_cells", "vgg_cells")
    split = protocol_split(samples, "vgg_cells", 4, 3, seed=0)
    return split.train, split.val


def curve(name: str) -> dict:
    settings = {**QUICK, "steps_per_epoch": 3, "calibrate_counts": False, "bf16": False}
    config = TrainConfig.from_dict({**settings, **RUNS[name]})
    with tempfile.TemporaryDirectory() as out:
        model = train(config, *data(name), out, progress=False)
        history = pd.read_csv(Path(out) / "history.csv")
    return {
        "loss": history["loss"].tolist(),
        "val_mae": history["val_mae"].tolist(),
        "peak_threshold": model.config.peak_threshold,
        "conformal_scores": model.config.conformal_scores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="JSON file for the curves")
    parser.add_argument("--only", nargs="*", choices=list(RUNS), help="these runs only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    curves = {name: curve(name) for name in args.only or RUNS}
    args.out.write_text(json.dumps(curves, indent=1))


if __name__ == "__main__":
    main()

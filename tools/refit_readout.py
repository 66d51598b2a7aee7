"""Refit the readout of a finished single-set run with the current ``refit_readout``.

For a run trained before the readout's refit went through the ReLU output stage (commit of
2026-12-08): its best network is kept, its readout fitted again on the same training images
the loop refits on (the first ``REFIT_IMAGES`` of ``RUN/split.json``'s training list). Run
its benchmark again afterwards: ``train`` finds the run finished and only redoes its last
step (peak threshold, calibration, provenance) on the new readout.

    python tools/refit_readout.py benchmarks/runs/bundled_fcrn_a \
        --data ../shared/data/vgg_cells --format vgg_cells
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from celltally.data import load_dataset
from celltally.data.images import to_channels
from celltally.io import read_json
from celltally.models import load_model, save_model
from celltally.train import refit_readout
from celltally.train.loop import REFIT_IMAGES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--format", required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model(args.run / "model")
    if model.config.downsample != 1:
        raise SystemExit(f"{args.run}: only runs counted at full resolution are handled")
    samples = {s.name: s for s in load_dataset(args.data, args.format)}
    names = read_json(args.run / "split.json")["train"][:REFIT_IMAGES]
    loaded = [samples[name].load() for name in names]
    images = [to_channels(image, model.config.in_channels) for image, _ in loaded]
    refit_readout(model, images, [points for _, points in loaded])
    save_model(model, args.run / "model")
    print(f"refitted the readout of {args.run / 'model'} on {len(images)} training images")


if __name__ == "__main__":
    main()

"""The generalists counted with their size model switched off (the blind spectral diameter
alone), on each held-out set's test split: does the size model's refinement help? One record
per set and model in ``benchmarks/generalist/no_size_model/`` (committed); compare them with
the same rows of ``benchmarks/generalist/records/``. Inference only.

    python tools/generalist_without_size_model.py without default
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import generalist
from celltally import load_model
from celltally.data.collection import REAL_SETS

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "generalist" / "no_size_model"


def main(kinds: list[str]) -> None:
    torch.set_num_threads(1)
    OUT.mkdir(exist_ok=True)
    for real in REAL_SETS:
        held_out = real.name if real.split().train else None
        for kind in kinds:
            folder = generalist.run_folder(None if kind == "default" else held_out) / "model"
            if (kind == "default" and held_out is None) or not folder.is_dir():
                continue
            for group, samples in generalist.groups(real).items():
                path = OUT / f"{group.replace(' ', '_')}__{kind}.json"
                if path.exists():
                    continue
                model = load_model(folder)
                model.config.size_model = None
                modality = real.modality_of(samples[0].name, real.modalities())
                diameters = generalist.image_diameters(real, samples)
                record = generalist.measure(model, samples, diameters, modality)
                path.write_text(json.dumps(record))
                print(group, kind, f"MRE {record['count']['mre']:.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["without", "default"])

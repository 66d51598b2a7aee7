"""Benchmark: FCRN-A trained on simulated images only, tested on real VGG cells; then fine-tuned.

1. Train FCRN-A on ``--n-synth`` images of the ``vgg_cells`` preset, validating (choosing the best
   epoch) on ``--n-synth-val`` other simulated images: no real image is seen.
2. Test it on real VGG cells 101-200 (count MAE, detection P/R/F1 at 5 px).
3. For each draw d: fine-tune that model on 8 real training images + 8 validation images drawn
   from 001-100 with seed d (Lempitsky protocol, N = 8), and test on 101-200 again.
4. The same, with the 8 real training images (each 4 times) mixed with 32 new simulated images
   (``MIX``), so that fine-tuning adapts to the real images without forgetting the simulated
   ones; still validated on the 8 real validation images only.

Every model is also tested with test-time augmentation (``--tta``: the mean output over the
8 flips and quarter turns of each image). Each model's figures are a record in
``benchmarks/synth_transfer/`` (committed), its network in ``runs/`` there (not); finished
models are not trained again. Writes the ``synth-transfer`` section of benchmarks/RESULTS.md.

    python benchmarks/synth_transfer.py            # train what is missing, test, write
    python benchmarks/synth_transfer.py --report   # the section from the records
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from celltally.data import default_data_root, load_dataset, protocol_split
from celltally.data.synth import preset, synth_samples
from celltally.io import read_json, write_json
from celltally.predict import evaluate
from celltally.train import TrainConfig, train
from results import write_section

OUT = Path(__file__).with_name("synth_transfer")
SYNTH_SETTINGS = {"epochs": 24, "lr_step": 10, "finetune_epochs": 2}
FINETUNE_SETTINGS = {"epochs": 6, "lr": 1e-4, "lr_step": 3, "finetune_epochs": 2}
# Mixed fine-tuning: each real training image repeated, plus simulated images of another seed
# than the pre-training set's (seed 0).
MIX = {"real_repeats": 4, "n_synth": 32, "synth_seed": 777}
SYNTHETIC = "synthetic"  # the record of the model trained on simulated images only


def tested(model, test: list, extra: dict) -> dict:
    """The record of a trained model: test metrics without and with TTA, training figures."""
    plain, tta = (evaluate(model, test, radius=5.0, tta=on) for on in (False, True))
    info = model.config.training
    return {
        **extra,
        "count": plain["count"],
        "detection": plain["detection"],
        "tta": {"count": tta["count"], "detection": tta["detection"]},
        "train_time_s": info["train_time_s"],
        "epochs_run": info["epochs_run"],
        "best_val_mae": info["best_val_mae"],
    }


def record(name: str, make) -> dict:
    """The record ``name``, made (``make()``) and written first if it is missing."""
    path = OUT / f"{name}.json"
    if not path.exists():
        write_json(path, make())
    return read_json(path)


def measure(args) -> None:
    """Train and test every model whose record is missing."""
    real = load_dataset(args.data, "vgg_cells")
    test = protocol_split(real, "vgg_cells", 0, 0).test
    synth_run = OUT / "runs" / SYNTHETIC

    def synthetic_only() -> dict:
        samples = synth_samples(preset("vgg_cells"), args.n_synth + args.n_synth_val, seed=0)
        provenance = {"data": "synth:vgg_cells", "format": "synth", "seed": 0}
        train_set, val_set = samples[: args.n_synth], samples[args.n_synth :]
        model = train(TrainConfig(**SYNTH_SETTINGS), train_set, val_set, synth_run, provenance)
        sizes = {"n_synth": args.n_synth, "n_synth_val": args.n_synth_val}
        return tested(model, test, {"settings": SYNTH_SETTINGS, **sizes})

    def fine_tuned(seed: int, mixed: bool, name: str) -> dict:
        split = protocol_split(real, "vgg_cells", 8, 8, seed)
        config = TrainConfig(seed=seed, init=str(synth_run / "model"), **FINETUNE_SETTINGS)
        train_set = split.train
        if mixed:
            simulated = synth_samples(preset("vgg_cells"), MIX["n_synth"], seed=MIX["synth_seed"])
            train_set = split.train * MIX["real_repeats"] + simulated
        provenance = split.record(str(args.data), "vgg_cells", seed)
        model = train(config, train_set, split.val, OUT / "runs" / name, provenance)
        return tested(model, test, {"seed": seed, "settings": FINETUNE_SETTINGS})

    record(SYNTHETIC, synthetic_only)
    for mixed in (False, True):
        for seed in range(args.draws):
            name = f"finetune8{'_mixed' if mixed else ''}_seed{seed}"
            record(name, lambda seed=seed, mixed=mixed, name=name: fine_tuned(seed, mixed, name))


def mean_std(results: list[dict], tta: bool = False) -> str:
    mae = np.array([(r["tta"] if tta else r)["count"]["mae"] for r in results])
    return f"{mae.mean():.2f} +- {mae.std(ddof=1) if len(mae) > 1 else 0:.2f}"


def row(label: str, r: dict) -> str:
    d, tta = r["detection"], r["tta"]
    return (
        f"| {label} | {r['count']['mae']:.2f} | {r['count']['rmse']:.2f} | {d['precision']:.3f}"
        f" | {d['recall']:.3f} | {d['f1']:.3f} | {tta['count']['mae']:.2f}"
        f" | {tta['detection']['f1']:.3f} | {r['train_time_s'] / 60:.1f} min |"
    )


def report() -> str:
    synthetic = read_json(OUT / f"{SYNTHETIC}.json")
    tuned = [read_json(p) for p in sorted(OUT.glob("finetune8_seed*.json"))]
    mixed = [read_json(p) for p in sorted(OUT.glob("finetune8_mixed_seed*.json"))]
    lines = [
        "### Synthetic-to-real transfer: FCRN-A trained on the `vgg_cells` preset, tested on"
        " real VGG cells 101-200",
        "",
        "Command: `python benchmarks/synth_transfer.py`",
        "",
        f"Trained on {synthetic['n_synth']} simulated images (best epoch chosen on"
        f" {synthetic['n_synth_val']} other simulated images; settings"
        f" {json.dumps(SYNTH_SETTINGS)}), never on a real image. Then fine-tuned from"
        f" that model on N = 8 real training + 8 validation images drawn from 001-100 (one draw per"
        f" seed; settings {json.dumps(FINETUNE_SETTINGS)}): on the 8 real images alone, or mixed"
        f" with simulated ones ({json.dumps(MIX)}: each real image {MIX['real_repeats']} times, half"
        " of the training images real). Training time is per model. TTA: the same model tested"
        " with test-time augmentation (`--tta`, the mean output over each image's 8 flips and"
        " quarter turns; 8x the inference time).",
        "",
        "| model | test MAE | RMSE | precision | recall | F1 (5 px) | MAE, TTA | F1, TTA"
        " | train time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        row("synthetic only", synthetic),
        *(row(f"+ fine-tuned on 8 real (seed {r['seed']})", r) for r in tuned),
        *(row(f"+ fine-tuned on 8 real mixed with simulated (seed {r['seed']})", r) for r in mixed),
        "",
        f"**Synthetic only: test MAE {synthetic['count']['mae']:.2f}** (target <= 4.0; with"
        f" TTA {synthetic['tta']['count']['mae']:.2f}); **fine-tuned on 8 real images:"
        f" {mean_std(tuned)}, with TTA {mean_std(tuned, tta=True)}**; mixed with simulated"
        f" images: {mean_std(mixed)}, with TTA {mean_std(mixed, tta=True)}; over {len(mixed)}"
        " draws (target <= 3.0).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-synth", type=int, default=160)
    parser.add_argument("--n-synth-val", type=int, default=40)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--data", type=Path, default=default_data_root() / "vgg_cells")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only rewrite from the records")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.report:
        measure(args)
    text = report()
    write_section("synth-transfer", text)
    print(text)


if __name__ == "__main__":
    main()

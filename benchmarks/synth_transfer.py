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
8 flips and quarter turns of each image). Runs resume from --runs. Writes the
``synth-transfer`` section of benchmarks/RESULTS.md.

    python benchmarks/synth_transfer.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from celltally.data import default_data_root, load_dataset, protocol_split
from celltally.data.synth import preset, synth_samples
from celltally.models import load_model
from celltally.predict import evaluate
from celltally.train import TrainConfig, train
from results import write_section

SYNTH_SETTINGS = {"epochs": 24, "lr_step": 10, "finetune_epochs": 2}
FINETUNE_SETTINGS = {"epochs": 6, "lr": 1e-4, "lr_step": 3, "finetune_epochs": 2}
# Mixed fine-tuning: each real training image repeated, plus simulated images of another seed
# than the pre-training set's (seed 0).
MIX = {"real_repeats": 4, "n_synth": 32, "synth_seed": 777}


def measured(model, test, extra: dict) -> dict:
    metrics = evaluate(model, test, radius=5.0)
    info = model.config.training
    return {
        **extra,
        "count": metrics["count"],
        "detection": metrics["detection"],
        "train_time_s": info["train_time_s"],
        "epochs_run": info["epochs_run"],
        "best_val_mae": info["best_val_mae"],
    }


def mean_std(results: list[dict], tta: bool = False) -> str:
    mae = np.array([(r["tta"] if tta else r)["count"]["mae"] for r in results])
    return f"{mae.mean():.2f} +- {mae.std(ddof=1) if len(mae) > 1 else 0:.2f}"


def cached(path: Path, compute, test: list) -> dict:
    """The result in ``path``, else computed; with the test metrics of the model (saved in the
    run folder of the same name) under test-time augmentation added if missing."""
    result = json.loads(path.read_text()) if path.exists() else compute()
    if "tta" not in result:
        model = load_model(path.with_suffix(""))
        model.config.tta = True
        metrics = evaluate(model, test, radius=5.0)
        result["tta"] = {"count": metrics["count"], "detection": metrics["detection"]}
    path.write_text(json.dumps(result, indent=2))
    return result


def row(label: str, r: dict) -> str:
    d, tta = r["detection"], r["tta"]
    return (
        f"| {label} | {r['count']['mae']:.2f} | {r['count']['rmse']:.2f} | {d['precision']:.3f}"
        f" | {d['recall']:.3f} | {d['f1']:.3f} | {tta['count']['mae']:.2f}"
        f" | {tta['detection']['f1']:.3f} | {r['train_time_s'] / 60:.1f} min |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-synth", type=int, default=160)
    parser.add_argument("--n-synth-val", type=int, default=40)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--data", type=Path, default=default_data_root() / "vgg_cells")
    parser.add_argument("--runs", type=Path, default=Path("benchmarks/runs"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.runs.mkdir(parents=True, exist_ok=True)
    real = load_dataset(args.data, "vgg_cells")
    test = real[100:]

    synth_run = args.runs / f"synth_vgg_{args.n_synth}"

    def synthetic_only() -> dict:
        samples = synth_samples(preset("vgg_cells"), args.n_synth + args.n_synth_val, seed=0)
        config = TrainConfig(**SYNTH_SETTINGS)
        provenance = {"data": "synth:vgg_cells", "format": "synth", "seed": 0}
        model = train(
            config, samples[: args.n_synth], samples[args.n_synth :], synth_run, provenance
        )
        return measured(model, test, {"settings": SYNTH_SETTINGS})

    synthetic = cached(args.runs / f"synth_vgg_{args.n_synth}.json", synthetic_only, test)

    def fine_tuned(seed: int, mixed: bool, out: Path) -> dict:
        split = protocol_split(real, "vgg_cells", 8, 8, seed)
        config = TrainConfig(seed=seed, init=str(synth_run / "model"), **FINETUNE_SETTINGS)
        train_set = split.train
        if mixed:
            simulated = synth_samples(preset("vgg_cells"), MIX["n_synth"], seed=MIX["synth_seed"])
            train_set = split.train * MIX["real_repeats"] + simulated
        model = train(
            config, train_set, split.val, out, split.record(str(args.data), "vgg_cells", seed)
        )
        return measured(model, test, {"seed": seed, "settings": FINETUNE_SETTINGS})

    def draws(mixed: bool) -> list[dict]:
        name = f"synth_vgg_{args.n_synth}_finetune8{'_mixed' if mixed else ''}"
        return [
            cached(
                args.runs / f"{name}_seed{s}.json",
                lambda s=s: fine_tuned(s, mixed, args.runs / f"{name}_seed{s}"),
                test,
            )
            for s in range(args.draws)
        ]

    tuned, mixed = draws(False), draws(True)
    lines = [
        "### Synthetic-to-real transfer: FCRN-A trained on the `vgg_cells` preset, tested on real VGG cells 101-200",
        "",
        "Command: `python benchmarks/synth_transfer.py`",
        "",
        f"Trained on {args.n_synth} simulated images (best epoch chosen on {args.n_synth_val} other simulated"
        f" images; settings {json.dumps(SYNTH_SETTINGS)}), never on a real image. Then fine-tuned from"
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
    text = "\n".join(lines)
    write_section("synth-transfer", text)
    print(text)


if __name__ == "__main__":
    main()

"""Benchmark: FCRN-A / FCRN-B on VGG cells under the Lempitsky protocol (Xie et al. 2016, Table 1).

For each draw d (seed d): N training + N validation images drawn from 001-100, training with the
given settings, then the count MAE and detection precision / recall / F1 (5 px) on 101-200,
training wall time and inference images/s. Finished draws are reused (runs resume). Writes one
JSON per draw under --runs and a section of benchmarks/RESULTS.md.

    python benchmarks/fcrn_vgg_cells.py --arch fcrn_a --n 32 --draws 3
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

from celltally.data import default_data_root, load_dataset, protocol_split
from celltally.predict import evaluate
from celltally.train import TrainConfig, train
from results import write_section

PAPER = {"fcrn_a": "2.9 +- 0.2", "fcrn_b": "3.3 +- 0.2"}  # Xie et al. 2016, N = 32


def run_draw(arch: str, n: int, seed: int, settings: dict, data: Path, runs: Path) -> dict:
    result_file = runs / f"{arch}_n{n}_seed{seed}.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    samples = load_dataset(data, "vgg_cells")
    split = protocol_split(samples, "vgg_cells", n, n, seed)
    config = TrainConfig(arch=arch, seed=seed, **settings)
    provenance = split.record(str(data), "vgg_cells", seed)
    model = train(config, split.train, split.val, runs / f"{arch}_n{n}_seed{seed}", provenance)
    metrics = evaluate(model, split.test, radius=5.0)
    result = {
        "arch": arch,
        "n": n,
        "seed": seed,
        "settings": config.__dict__,
        "count": metrics["count"],
        "detection": metrics["detection"],
        "inference_images_per_s": metrics["images_per_s"],
        "train_time_s": model.config.training["train_time_s"],
        "epochs_run": model.config.training["epochs_run"],
        "best_val_mae": model.config.training["best_val_mae"],
        "split": split.names(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
    }
    result_file.write_text(json.dumps(result, indent=2))
    return result


def section(arch: str, n: int, results: list[dict], command: str) -> str:
    mae = np.array([r["count"]["mae"] for r in results])
    lines = [
        f"### {arch}, VGG cells, N = {n}, Lempitsky protocol ({len(results)} draws)",
        "",
        f"Command: `{command}`",
        "",
        "| draw (seed) | test MAE | RMSE | precision | recall | F1 (5 px) | train time | epochs | inference |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        d = r["detection"]
        lines.append(
            f"| {r['seed']} | {r['count']['mae']:.2f} | {r['count']['rmse']:.2f} | {d['precision']:.3f}"
            f" | {d['recall']:.3f} | {d['f1']:.3f} | {r['train_time_s'] / 60:.1f} min | {r['epochs_run']}"
            f" | {r['inference_images_per_s']:.1f} img/s |"
        )
    f1 = np.mean([r["detection"]["f1"] for r in results])
    lines += [
        "",
        f"**Test MAE {mae.mean():.2f} +- {mae.std(ddof=1) if len(mae) > 1 else 0:.2f}** (mean +- std over"
        f" draws; paper {PAPER[arch]}); detection F1 {f1:.3f} at 5 px; mean training time"
        f" {np.mean([r['train_time_s'] for r in results]) / 60:.1f} min per draw on"
        f" {results[0]['machine']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="fcrn_a")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--settings", default="{}", help="JSON of TrainConfig overrides")
    parser.add_argument("--data", type=Path, default=default_data_root() / "vgg_cells")
    parser.add_argument("--runs", type=Path, default=Path("benchmarks/runs"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.runs.mkdir(parents=True, exist_ok=True)
    settings = json.loads(args.settings)
    results = [
        run_draw(args.arch, args.n, seed, settings, args.data, args.runs)
        for seed in range(args.draws)
    ]
    command = (
        f"python benchmarks/fcrn_vgg_cells.py --arch {args.arch} --n {args.n} --draws {args.draws}"
    )
    if settings:
        command += f" --settings '{args.settings}'"
    write_section(f"{args.arch}-vgg-n{args.n}", section(args.arch, args.n, results, command))
    print(section(args.arch, args.n, results, command))


if __name__ == "__main__":
    main()

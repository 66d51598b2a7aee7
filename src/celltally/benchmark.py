"""Benchmark tables under the published protocols: every method x N x draw, resumable.

A benchmark folder holds, for each method, N and draw (seed):

- ``records/<method>_n<N>_seed<S>.json``: the protocol and split (every image named), the
  settings, package versions, per-image true and predicted counts, the metrics, training time and
  inference speed. A finished record is never recomputed, so an interrupted benchmark resumes.
- ``runs/<method>_n<N>_seed<S>/``: the training run of a network (itself resumable).

and, written after every record, ``summary.csv`` (one row per method and N), ``table.md`` (the
papers' Table 1 layout with the published figures beside ours, then the details) and
``mae_vs_n.png``.
"""

from __future__ import annotations

import copy
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from celltally.baselines import BASELINES, create_baseline
from celltally.data.datasets import Sample, default_channels, load_dataset, resolve_data
from celltally.data.splits import (
    PROTOCOLS,
    Split,
    default_protocol,
    protocol_split,
    split_from_file,
)
from celltally.io import atomic_write, read_json, write_json
from celltally.metrics import DETECTION_RADIUS, count_metrics
from celltally.models import list_models
from celltally.models.io import versions
from celltally.predict import evaluate
from celltally.train import TrainConfig, train

# Published MAE (mean +- std over draws) by (data set, method, N). Sources: Xie et al. 2016
# (Table 1, Lempitsky protocol) and Cohen et al. 2017 (Count-ception, Tables 1-2, its protocol).
PUBLISHED: dict[tuple[str, str, int], str] = {
    ("vgg_cells", "fcrn_a", 32): "2.9 ± 0.2",
    ("vgg_cells", "fcrn_b", 32): "3.3 ± 0.2",
    ("vgg_cells", "countception", 32): "2.4 ± 0.4",
    ("vgg_cells", "countception", 50): "2.3 ± 0.4",
    ("vgg_cells", "segmentation", 32): "7.9 ± 0.3 (CellProfiler)",
    ("mbm", "fcrn_a", 15): "21.3",
    ("mbm", "countception", 15): "8.8 ± 2.3",
}


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to measure.

    Attributes:
        data: a data folder, or the name of a public set in the data path.
        fmt: its format (default: from the folder name, else ``points``).
        protocol: ``lempitsky`` (VGG cells only), ``countception`` or ``file`` (default:
            ``lempitsky`` for VGG cells, else ``countception``).
        split_file: the split for ``protocol="file"`` (then every draw uses it).
        test_size: ``countception`` test-set size (default: 100 for VGG cells and adipocyte,
            else every image not drawn).
        n: training-set sizes; each draw also takes N validation images.
        draws: draws per N (seeds 0 .. draws-1).
        draw: run only this draw (``None``: every one), so that several processes or
            machines can share one benchmark folder, each training its own draw.
        methods: registry models and baselines (``mean``, ``segmentation``).
        settings: training settings for every network (see ``TrainConfig``); a key naming a
            method holds settings for that method only.
        time_budget: seconds of training per network and draw (``None``: the epoch budget).
        radius: detection match radius in pixels.
    """

    data: str
    fmt: str | None = None
    protocol: str | None = None
    split_file: str | None = None
    test_size: int | None = None
    n: tuple[int, ...] = (32,)
    draws: int = 5
    draw: int | None = None
    methods: tuple[str, ...] = ("mean", "segmentation", "fcrn_a")
    settings: dict[str, Any] = field(default_factory=dict)
    time_budget: float | None = None
    radius: float = DETECTION_RADIUS

    def __post_init__(self) -> None:
        known = (*BASELINES, *list_models())
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]}; choose from {', '.join(known)}")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol '{self.protocol}'; choose {', '.join(PROTOCOLS)}")
        if (self.protocol == "file") != (self.split_file is not None):
            raise ValueError("a split file goes with --protocol file, and needs one")
        if self.draws < 1 or not self.n or min(self.n) < 1:
            raise ValueError("need at least one draw and training-set sizes N >= 1")
        if self.draw is not None and not 0 <= self.draw < self.draws:
            raise ValueError(f"draw {self.draw} is not one of 0 .. {self.draws - 1} (--draws)")

    def train_config(self, method: str, fmt: str, seed: int) -> TrainConfig:
        shared = {k: v for k, v in self.settings.items() if not isinstance(v, dict)}
        values = {
            "in_channels": default_channels(fmt),
            "time_budget": self.time_budget,
            **shared,
            **self.settings.get(method, {}),
        }
        return TrainConfig.from_dict({**values, "arch": method, "seed": seed})


def run_benchmark(
    config: BenchmarkConfig,
    out: str | Path,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Run every (method, N, draw) not yet recorded in ``out``; return the summary."""
    out = Path(out)
    root, fmt = resolve_data(config.data, config.fmt)
    samples = load_dataset(root, fmt)
    protocol = config.protocol or default_protocol(fmt)
    for method in set(config.methods) - set(BASELINES):
        config.train_config(method, fmt, 0)  # bad settings fail now, not hours later
    (out / "records").mkdir(parents=True, exist_ok=True)
    for n in config.n:
        for seed in _seeds(config, protocol):
            split = _split(config, samples, fmt, protocol, n, seed)
            for method in config.methods:
                path = out / "records" / f"{method}_n{n}_seed{seed}.json"
                if path.exists():
                    continue
                record = _measure(config, method, split, fmt, n, seed, root, out)
                write_json(path, record, indent=None)
                write_reports(out, fmt)
                if on_record:
                    on_record(record)
    return write_reports(out, fmt)


def _seeds(config: BenchmarkConfig, protocol: str) -> list[int]:
    seeds = [0] if protocol == "file" else list(range(config.draws))
    return seeds if config.draw is None else [s for s in seeds if s == config.draw]


def _split(config, samples: list[Sample], fmt: str, protocol: str, n: int, seed: int) -> Split:
    if protocol == "file":
        return split_from_file(samples, config.split_file)
    return protocol_split(samples, fmt, n, n, seed, protocol, config.test_size)


def _measure(config, method, split: Split, fmt, n, seed, root: Path, out: Path) -> dict[str, Any]:
    """Fit or train one method on one draw and measure it on the test set."""
    if not split.test:
        raise ValueError(f"the split for N = {n} leaves no test images; lower N or test_size")
    started = time.perf_counter()
    if method in BASELINES:
        model = create_baseline(method).fit(split.train, config.radius)
        train_time, settings = time.perf_counter() - started, model.settings()
        epochs_run, history = None, None
    else:
        train_config = config.train_config(method, fmt, seed)
        run = out / "runs" / f"{method}_n{n}_seed{seed}"
        model = train(train_config, split.train, split.val, run, split.record(str(root), fmt, seed))
        train_time, settings = model.config.training["train_time_s"], train_config.to_dict()
        epochs_run = model.config.training["epochs_run"]  # fewer than asked: time_budget spent
        history = pd.read_csv(run / "history.csv").to_dict("records")  # validation MAE per epoch
    metrics = evaluate(model, split.test, config.radius)
    return {
        "dataset": fmt,
        "data": str(root),
        "protocol": split.protocol,
        "method": method,
        "n": n,
        "seed": seed,
        "split": split.names(),
        "settings": settings,
        "count": metrics["count"],
        "count_uncalibrated": _uncalibrated_count_metrics(model, split.test),
        "detection": metrics["detection"],
        "train_time_s": train_time,
        "epochs_run": epochs_run,
        "history": history,
        "inference_images_per_s": metrics["images_per_s"],
        "images": metrics["images"],
        "versions": versions(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }


def _uncalibrated_count_metrics(model, samples: list[Sample]) -> dict[str, float] | None:
    """The count metrics of ``model`` on ``samples`` without its count calibration, to show
    what the calibration changed on the same images (``None``: it has none)."""
    config = getattr(model, "config", None)
    if config is None or (config.count_gain, config.count_offset) == (1.0, 0.0):
        return None
    raw = copy.deepcopy(model)
    raw.config.count_gain, raw.config.count_offset = 1.0, 0.0
    truth, counts = [], []
    for sample in samples:
        image, points = sample.load()
        truth.append(len(points))
        counts.append(raw.count(image))
    return count_metrics(truth, counts)


def load_records(out: str | Path) -> list[dict[str, Any]]:
    return [read_json(p) for p in sorted(Path(out).glob("records/*.json"))]


def summarise(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (method, N): MAE mean +- std over draws, and the other metrics' means."""
    rows = []
    for r in records:
        detection = r["detection"] or {}
        rows.append(
            {
                "method": r["method"],
                "n": r["n"],
                "seed": r["seed"],
                "mae": r["count"]["mae"],
                "rmse": r["count"]["rmse"],
                "mre": r["count"]["mre"],
                "f1": detection.get("f1", np.nan),
                "precision": detection.get("precision", np.nan),
                "recall": detection.get("recall", np.nan),
                "train_time_s": r["train_time_s"],
                "epochs": np.nan if r.get("epochs_run") is None else r["epochs_run"],
                "images_per_s": r["inference_images_per_s"],
            }
        )
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).groupby(["method", "n"], sort=False)
    summary = table.mean(numeric_only=True).drop(columns="seed")
    summary["mae_std"] = table["mae"].std(ddof=1).fillna(0.0)
    summary["epochs_min"], summary["epochs_max"] = table["epochs"].min(), table["epochs"].max()
    summary["draws"] = table.size()
    return summary.reset_index().sort_values(["method", "n"], ignore_index=True)


def write_reports(out: str | Path, fmt: str) -> pd.DataFrame:
    """(Re)write ``summary.csv``, ``table.md`` and ``mae_vs_n.png`` from the records in ``out``."""
    out = Path(out)
    records = load_records(out)
    summary = summarise(records)
    if summary.empty:
        return summary
    protocol = records[0]["protocol"]
    atomic_write(out / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False))
    text = markdown_table(summary, fmt, protocol)
    atomic_write(out / "table.md", lambda tmp: Path(tmp).write_text(text))
    plot_mae_vs_n(summary, fmt, out / "mae_vs_n.png")
    return summary


def markdown_table(summary: pd.DataFrame, fmt: str, protocol: str) -> str:
    """Table 1 of the papers (method x N, test MAE mean +- std), published figures beside ours;
    then one line per method and N with every metric."""
    ns = sorted(summary["n"].unique())
    header = " | ".join(f"N = {n} (ours) | N = {n} (published)" for n in ns)
    lines = [
        f"Test MAE, mean ± std over draws ({fmt}, {protocol} protocol).",
        "",
        f"| method | {header} |",
        "| --- |" + " --- | --- |" * len(ns),
    ]
    for method, rows in summary.groupby("method", sort=False):
        cells = []
        for n in ns:
            row = rows[rows["n"] == n]
            ours = (
                f"{row['mae'].iloc[0]:.2f} ± {row['mae_std'].iloc[0]:.2f} ({row['draws'].iloc[0]})"
                if len(row)
                else "—"
            )
            cells += [ours, PUBLISHED.get((fmt, method, n), "—")]
        lines.append(f"| {method} | {' | '.join(cells)} |")
    lines += [
        "",
        "(draws in brackets.) Details, means over draws (detection at the stated radius):",
        "",
        "| method | N | draws | MAE | RMSE | rel. error | precision | recall | F1 | train time"
        " | epochs | inference |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary.itertuples():
        detection = (
            "— | — | —" if np.isnan(r.f1) else f"{r.precision:.3f} | {r.recall:.3f} | {r.f1:.3f}"
        )
        lines.append(
            f"| {r.method} | {r.n} | {r.draws} | {r.mae:.2f} ± {r.mae_std:.2f} | {r.rmse:.2f}"
            f" | {100 * r.mre:.1f}% | {detection} | {_duration(r.train_time_s)}"
            f" | {_epochs(r.epochs_min, r.epochs_max)} | {r.images_per_s:,.1f} img/s |"
        )
    return "\n".join(lines) + "\n"


def _epochs(fewest: float, most: float) -> str:
    """Epochs trained over the draws: "7", "5-7", or "—" (a baseline, or not recorded)."""
    if np.isnan(fewest):
        return "—"
    return f"{fewest:.0f}" if fewest == most else f"{fewest:.0f}-{most:.0f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def plot_mae_vs_n(summary: pd.DataFrame, fmt: str, path: Path) -> None:
    """Test MAE against N per method (error bars: std over draws; hollow: published)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for index, (method, rows) in enumerate(summary.groupby("method", sort=False)):
        colour = f"C{index}"
        axes.errorbar(
            rows["n"],
            rows["mae"],
            yerr=rows["mae_std"],
            marker="o",
            capsize=3,
            color=colour,
            label=method,
        )
        published = [
            (n, float(PUBLISHED[(fmt, method, n)].split()[0]))
            for n in rows["n"]
            if (fmt, method, n) in PUBLISHED
        ]
        if published:
            ns, maes = np.array(published).T
            axes.scatter(ns, maes, facecolors="none", edgecolors=colour, s=80)
    axes.set(xlabel="N (training images; as many validate)", ylabel="test MAE", title=fmt)
    axes.set_xticks(sorted(summary["n"].unique()))
    axes.legend(title="hollow: published", fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=120, format="png"))
    plt.close(figure)

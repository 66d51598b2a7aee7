"""Pictures for checking results by eye: the image with detected centres and the count."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from celltally.io import atomic_write

MIN_OVERLAY_SIDE = 512  # pixels; smaller images are drawn enlarged


def write_figure(path: str | Path, figure, dpi: int) -> None:
    """Save ``figure`` as a PNG atomically, and close it."""
    try:
        atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(figure)


def display_image(image: np.ndarray) -> np.ndarray:
    """Stretch an ``(H, W, C)`` image to [0, 1] between its 1st and 99.8th percentiles."""
    low, high = np.percentile(image, [1.0, 99.8])
    shown = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)
    if shown.shape[2] in (2, 4):
        shown = shown[:, :, :-1]
    return shown[:, :, 0] if shown.shape[2] == 1 else shown


def save_overlay(path: str | Path, image: np.ndarray, points: np.ndarray, count: float) -> None:
    """Write a PNG of ``image`` with ``points`` circled and the count written in the corner."""
    height, width = image.shape[:2]
    dpi = 100
    zoom = max(1.0, MIN_OVERLAY_SIDE / min(height, width))
    figure = plt.figure(figsize=(width * zoom / dpi, height * zoom / dpi), dpi=dpi)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(display_image(image), cmap="gray", interpolation="nearest")
    if len(points):
        axes.scatter(
            points[:, 1],
            points[:, 0],
            s=18,
            facecolors="none",
            edgecolors="#ffdd00",
            linewidths=0.8,
        )
    axes.text(
        0.01,
        0.99,
        f"count {count:.1f}  ({len(points)} centres)",
        transform=axes.transAxes,
        va="top",
        ha="left",
        color="white",
        fontsize=9,
        bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none", "pad": 2},
    )
    axes.set_axis_off()
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
    write_figure(path, figure, dpi)


def save_reliability_plot(
    path: str | Path, levels: list[float], observed: list[float], n_images: int
) -> None:
    """Write a PNG of observed against nominal interval coverage (the diagonal is calibrated)."""
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="calibrated")
    axes.plot(levels, observed, marker="o", label=f"observed ({n_images} images)")
    axes.set(
        xlabel="nominal coverage (interval level)",
        ylabel="observed coverage",
        xlim=(0.45, 1.0),
        ylim=(0.0, 1.02),
        title="count interval reliability",
    )
    axes.legend(loc="lower right")
    figure.tight_layout()
    write_figure(path, figure, 120)


def save_saliency(path: str | Path, image: np.ndarray, saliency: np.ndarray, title: str) -> None:
    """Write a PNG of the image beside its saliency map (shown up to its 99.5th percentile)."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    axes[0].imshow(display_image(image), cmap="gray")
    axes[0].set_title("image")
    top = float(np.percentile(saliency, 99.5)) or 1.0
    shown = axes[1].imshow(saliency, cmap="inferno", vmin=0.0, vmax=top)
    axes[1].set_title(title)
    figure.colorbar(shown, ax=axes[1], fraction=0.046, label="|d count / d pixel|")
    for axis in axes:
        axis.set_axis_off()
    figure.tight_layout()
    write_figure(path, figure, 110)


def save_inversions(path: str | Path, image: np.ndarray, inversions: list) -> None:
    """Write a PNG of the normalised input beside each layer's reconstruction, and below them the
    objective against the step."""
    columns = len(inversions) + 1
    figure, axes = plt.subplots(2, columns, figsize=(2.6 * columns, 5.4),
                                gridspec_kw={"height_ratios": [1.4, 1]})  # fmt: skip
    panels = [("input", image, None), *[(i.layer, i.image, i) for i in inversions]]
    for axis, (title, picture, inversion) in zip(axes[0], panels, strict=True):
        axis.imshow(display_image(picture), cmap="gray")
        label = title if inversion is None else f"{title}\ncorrelation {inversion.correlation:.2f}"
        axis.set_title(label, fontsize=8)
        axis.set_axis_off()
    axes[1, 0].set_axis_off()
    for axis, inversion in zip(axes[1, 1:], inversions, strict=True):
        axis.semilogy(inversion.objective)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[1, 1].set_ylabel("objective", fontsize=8)
    figure.tight_layout()
    write_figure(path, figure, 110)


def save_view(
    path: str | Path,
    image: np.ndarray,
    density: np.ndarray,
    points: np.ndarray,
    regions: list | None = None,
    rows: list[dict] | None = None,
) -> None:
    """Write a PNG of the image with the detected centres beside the predicted density, both
    with the regions outlined and labelled with their counts."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 5))
    axes[0].imshow(display_image(image), cmap="gray")
    if len(points):
        axes[0].scatter(points[:, 1], points[:, 0], s=10, facecolors="none",
                        edgecolors="#ffdd00", linewidths=0.7)  # fmt: skip
    axes[0].set_title(f"{len(points)} centres")
    shown = axes[1].imshow(density, cmap="viridis")
    axes[1].set_title(f"density: {density.sum(dtype=np.float64):.1f} cells")
    figure.colorbar(shown, ax=axes[1], fraction=0.046, label="cells per pixel")
    for region, row in zip(regions or [], rows or [], strict=True):
        for axis in axes:
            axis.contour(region.mask, levels=[0.5], colors="#ff4060", linewidths=1.0)
        y, x = np.argwhere(region.mask).mean(axis=0)
        axes[1].text(x, y, f"{row['count']:.1f}", color="white", ha="center", va="center",
                     fontsize=8, bbox={"facecolor": "#ff4060", "alpha": 0.7, "pad": 1})  # fmt: skip
    for axis in axes:
        axis.set_axis_off()
    figure.tight_layout()
    write_figure(path, figure, 110)

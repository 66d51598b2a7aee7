import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CELLTALLY_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


def data_set(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"data set {name} not found under {DATA} (set CELLTALLY_DATA)")
    return path


@pytest.fixture
def vgg_root() -> Path:
    return data_set("vgg_cells")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return REPO / "samples"


def textured(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A random float32 image with structure a model counts (uniform noise smoothed over 2 px,
    over rows and columns): pure noise counts 0 by construction (``ood.has_signal``), which
    would make a test of the network's plumbing trivial."""
    sigma = (2.0, 2.0) + (0.0,) * (len(shape) - 2)
    return ndimage.gaussian_filter(rng.random(shape), sigma).astype(np.float32)

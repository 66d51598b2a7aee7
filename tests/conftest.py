import os
from pathlib import Path

import numpy as np
import pytest
import torch

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

"""The real annotated sets under the data path, each with its fixed train / val / test split,
modality and licence: what the generalist model is trained on and measured against.

Splits: a set's own ``split.json`` where it has one (``dsb2018``, ``coelho2009``, ``crchisto``,
``ctc``); else the published protocol with seed 0: VGG cells 80 + 20 drawn from 001-100, test
101-200 (as the bundled FCRN-A); MBM 15 + 15, test the other 14 (source images kept whole);
adipocyte 50 + 50, test the fixed last 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from celltally.data.datasets import Sample, default_data_root, load_dataset
from celltally.data.splits import Split, protocol_split, split_from_file


@dataclass(frozen=True)
class RealSet:
    """A public annotated set: its folder name, reader format, modality and licence."""

    name: str
    fmt: str
    modality: str  # fluorescence, histology, or mixed (per image: ``modalities``)
    licence: str
    protocol: tuple[int, int] | None = None  # (n_train, n_val) where no split.json exists
    # Cells tile the whole image (adipose tissue): each cell's area is the image's over the
    # count, a better measure of their size than the dots' blob response, which the thin
    # membranes between neighbours confuse.
    confluent: bool = False

    def folder(self, root: str | Path | None = None) -> Path:
        return Path(root or default_data_root()) / self.name

    def split(self, root: str | Path | None = None) -> Split:
        """The set's fixed split (see the module docs)."""
        folder = self.folder(root)
        samples = load_dataset(folder, self.fmt)
        if self.protocol is None:
            return split_from_file(samples, folder / "split.json")
        n_train, n_val = self.protocol
        return protocol_split(samples, self.fmt, n_train, n_val, seed=0)

    def modalities(self, root: str | Path | None = None) -> dict[str, str]:
        """Image name -> modality: the manifest's ``modality`` column where it has one."""
        manifest = self.folder(root) / "manifest.csv"
        if manifest.is_file():
            table = pd.read_csv(manifest)
            if "modality" in table:
                return {Path(i).stem: m for i, m in zip(table.image, table.modality, strict=True)}
        return {}

    def modality_of(self, name: str, modalities: dict[str, str]) -> str:
        return modalities.get(name, self.modality)


REAL_SETS = (
    RealSet("dsb2018", "points", "mixed", "CC0-1.0"),
    RealSet("coelho2009", "points", "fluorescence", "none stated (public research data)"),
    RealSet("crchisto", "points", "histology", "research use only"),
    RealSet("ctc", "points", "fluorescence", "CTC conditions of use (no commercial use)"),
    RealSet("vgg_cells", "vgg_cells", "fluorescence", "research use (VGG, Oxford)", (80, 20)),
    RealSet("mbm", "mbm", "histology", "non-commercial use (Kainz et al. 2015)", (15, 15)),
    RealSet("adipocyte", "adipocyte", "histology", "none stated (GTEx-derived)", (50, 50), True),
)


def real_set(name: str) -> RealSet:
    for candidate in REAL_SETS:
        if candidate.name == name:
            return candidate
    raise ValueError(f"unknown set '{name}'; choose one of {', '.join(s.name for s in REAL_SETS)}")


def labels_path(sample: Sample) -> Path | None:
    """The instance-label image beside a ``points`` sample (``labels/<stem>.tif``), if any."""
    path = sample.image_path.parent / "labels" / f"{sample.image_path.stem}.tif"
    return path if path.is_file() else None

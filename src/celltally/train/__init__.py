"""Training a counting model: the loop and its checkpoints (``loop``, ``checkpoint``), the
epochs (``epochs``) over patch batches (``patches``), what is refitted on whole images
(``refit``) and the settings (``config``)."""

from celltally.train.config import TrainConfig, native_bf16
from celltally.train.loop import train
from celltally.train.refit import (
    fit_variance_head,
    refit_batch_norm,
    refit_readout,
    with_variance_head,
)

__all__ = [
    "TrainConfig",
    "fit_variance_head",
    "native_bf16",
    "refit_batch_norm",
    "refit_readout",
    "train",
    "with_variance_head",
]

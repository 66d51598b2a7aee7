"""How a model is trained, as the model declares it: its phases, in order. The training loop
(``celltally.train``) runs each phase for its share of the epochs and knows no architecture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TrainingPhase:
    """One stage of a model's training.

    Attributes:
        name: ``patches`` (runs for the training config's ``epochs``) or ``finetune`` (its
            ``finetune_epochs``); also the phase written in ``history.csv``.
        batches: what an epoch goes over: ``patches`` (random patches of the training images),
            ``whole`` (each whole image once, a batch of one) or ``own_masks`` (the model's own
            foreground masks of the training images, ``CountingModel.own_mask``, each with its
            dot count).
        targets: what patches are compared with: ``maps`` (the model's training target of the
            dots) or ``masks`` (the images' foreground masks).
        validated: whether the model is validated (and the best kept) after each epoch.
        required: the phase must run at least one epoch (the model cannot count without it).
    """

    name: Literal["patches", "finetune"]
    batches: Literal["patches", "whole", "own_masks"]
    targets: Literal["maps", "masks"] = "maps"
    validated: bool = True
    required: bool = False


# Patches, then (if the config asks for it) whole images: every density and count-map model.
MAP_PHASES = (TrainingPhase("patches", "patches"), TrainingPhase("finetune", "whole"))

"""Restores the random-number state on a mid-epoch resume, so a resumed run draws the same noise,
timesteps and caption drops as an uninterrupted one.

Why this exists: Composer saves every rank's RNG state in its checkpoints, but when the dataset resumes
itself (StreamingDataset does) it restores that state only at an epoch boundary. A run resumed in the
middle of an epoch -- the usual case with one long epoch over a big CC dataset -- would otherwise restart
its noise from the seed and repeat the draws of the first batches. Train.py adds this callback always.
"""
from __future__ import annotations

from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import reproducibility


class ResumeRNG(Callback):
    def __init__(self):
        self._pending: list | None = None

    def state_dict(self) -> dict[str, Any]:
        # Gathers every rank's state (a collective: Composer builds the state dict on all ranks).
        return {"rng": reproducibility.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state.get("rng")

    def fit_start(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch_in_epoch) == 0:
            self._pending = None  # at an epoch boundary Composer restores it itself

    def after_dataloader(self, state: State, logger: Logger) -> None:
        # After the first fetch, not before: the uninterrupted run also drew nothing between its
        # checkpoint and this point except what the dataloader iterator itself consumed.
        if self._pending is not None:
            reproducibility.load_rng_state(self._pending)
            self._pending = None

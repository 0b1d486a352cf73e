"""Composer's WandBLogger, made safe for `trainer.autoresume: true` (which every recipe sets).

Composer 0.32 asks every logger for the latest checkpoint when none is found locally; WandBLogger answers
with a RuntimeError before wandb.init() ("get_file_artifact can only be called after running init()"),
which Composer does not catch, so a first run with `loggers.wandb` and autoresume died at start. Checkpoints
only live in W&B when `log_artifacts: true`; otherwise, and before W&B knows its entity and project, this
logger answers "not here" (FileNotFoundError), which Composer treats as: try the next place.
"""
from __future__ import annotations

from composer.loggers import WandBLogger


class ResumableWandBLogger(WandBLogger):
    def download_file(self, remote_file_name: str, destination: str, overwrite: bool = False,
                      progress_bar: bool = True):
        if not self._log_artifacts or not self.entity or not self.project:
            raise FileNotFoundError(f"{remote_file_name}: not logged to W&B (log_artifacts is off or W&B not started)")
        return super().download_file(remote_file_name, destination, overwrite, progress_bar)

"""Stops training on a NaN/Inf loss with a clear message, after saving a checkpoint of the last good weights.

Runs right after the loss is computed and before backward, so the weights saved are the ones that
produced the bad loss, not weights already poisoned by a NaN gradient step.
"""
from __future__ import annotations

import os

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import checkpoint, dist


class NonFiniteLossError(RuntimeError):
    pass


class NaNGuard(Callback):
    def __init__(self, folder: str = ".", checkpoint_name: str = "nan_guard_ba{batch}.pt"):
        self.folder, self.checkpoint_name = folder, checkpoint_name

    def after_loss(self, state: State, logger: Logger) -> None:
        losses = state.loss if isinstance(state.loss, (list, tuple)) else [state.loss]
        if all(torch.isfinite(torch.as_tensor(l)).all() for l in losses):
            return
        batch = int(state.timestamp.batch)
        path = os.path.join(self.folder, self.checkpoint_name.format(batch=batch))
        os.makedirs(self.folder, exist_ok=True)
        checkpoint.save_checkpoint(state, path)
        dist.barrier()
        raise NonFiniteLossError(
            f"loss is {losses[0].item() if torch.is_tensor(losses[0]) else losses[0]} at batch {batch}; "
            f"stopped, last good weights saved to {path}. Lower the lr, check the data, or resume from it."
        )

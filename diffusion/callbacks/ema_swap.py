"""Runs a block with Composer's EMA weights swapped into the model, if EMA is on (used for sampling)."""
from __future__ import annotations

import contextlib

from composer.algorithms import EMA


@contextlib.contextmanager
def ema_weights_active(state):
    ema = next((a for a in state.algorithms if isinstance(a, EMA)), None)
    if ema is None or ema.ema_model is None or not ema.ema_started or ema.ema_weights_active:
        yield
        return
    ema.ema_model.swap_params(state.model)
    ema.ema_weights_active = True
    try:
        yield
    finally:
        ema.ema_model.swap_params(state.model)
        ema.ema_weights_active = False

"""Composer's low-precision GroupNorm/LayerNorm surgery, applied to the UNet only.

Composer's own algorithms rewrite every norm of the model; the frozen VAE and text encoder are left as
they are here, since they either do not run during training (precomputed latents) or run without grads.
Under fp32 there is nothing to gain and Composer only warns.
"""
from __future__ import annotations

from composer.algorithms.low_precision_groupnorm import apply_low_precision_groupnorm
from composer.algorithms.low_precision_layernorm import apply_low_precision_layernorm
from composer.core import Algorithm, Event


class LowPrecisionNorms(Algorithm):
    def __init__(self, groupnorm: bool = True, layernorm: bool = True):
        self.groupnorm, self.layernorm = groupnorm, layernorm

    def match(self, event, state) -> bool:
        return event == Event.INIT

    def apply(self, event, state, logger) -> None:
        if self.groupnorm:
            apply_low_precision_groupnorm(state.model.unet, state.precision, state.optimizers)
        if self.layernorm:
            apply_low_precision_layernorm(state.model.unet, state.precision, state.optimizers)

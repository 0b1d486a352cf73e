"""Inference samplers built from the training schedule, so beta schedule and prediction type always match."""
from __future__ import annotations

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

SAMPLERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "dpm": DPMSolverMultistepScheduler}


def inference_scheduler(name: str, training_config):
    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r} is not one of {sorted(SAMPLERS)}")
    return SAMPLERS[name].from_config(training_config)

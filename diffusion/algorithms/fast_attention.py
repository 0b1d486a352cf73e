"""Picks the fastest attention kernel available for the UNet and VAE: xformers, else PyTorch SDPA, else math.

xformers only runs on CUDA; SDPA lets PyTorch choose its flash or memory-efficient kernel itself.
`math` is the plain matmul-softmax-matmul path a naive training loop uses (the benchmark baseline).
"""
from __future__ import annotations

import importlib.util
import logging

import torch
from composer.core import Algorithm, Event
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

log = logging.getLogger(__name__)
BACKENDS = ("auto", "xformers", "sdpa", "math")


def choose_backend(requested: str = "auto") -> str:
    if requested not in BACKENDS:
        raise ValueError(f"algorithms.fast_attention.backend: {requested!r} is not one of {BACKENDS}")
    has_xformers = importlib.util.find_spec("xformers") is not None and torch.cuda.is_available()
    if requested == "xformers" and not has_xformers:
        raise RuntimeError("algorithms.fast_attention.backend=xformers but xformers or CUDA is missing")
    if requested != "auto":
        return requested
    if has_xformers:
        return "xformers"
    return "sdpa" if hasattr(torch.nn.functional, "scaled_dot_product_attention") else "math"


def set_attention(module, backend: str) -> None:
    """Sets every attention layer of a diffusers model (UNet2DConditionModel, AutoencoderKL) to `backend`."""
    if backend == "xformers":
        module.enable_xformers_memory_efficient_attention()
    else:
        module.set_attn_processor(AttnProcessor2_0() if backend == "sdpa" else AttnProcessor())


class FastAttention(Algorithm):
    def __init__(self, backend: str = "auto"):
        self.backend = choose_backend(backend)

    def match(self, event, state) -> bool:
        return event == Event.INIT

    def apply(self, event, state, logger) -> None:
        for module in (state.model.unet, state.model.vae):
            set_attention(module, self.backend)
        log.info("FastAttention: UNet and VAE attention use the %s backend", self.backend)
        logger.log_hyperparameters({"attention_backend": self.backend})

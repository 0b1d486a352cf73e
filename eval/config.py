"""Turns a yaml / dict / DictConfig into a job's config dataclass, checked against its schema.

OmegaConf does the checking: an unknown key or a missing mandatory value fails with the key named.
"""
from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
from omegaconf import OmegaConf

T = TypeVar("T")

# Value of an extractor / model field that builds a tiny randomly initialised model instead of loading
# weights. For tests and the CPU demo only: the numbers it gives measure nothing.
RANDOM_TINY = "random-tiny"


def to_config(cls: type[T], cfg: Any) -> T:
    if isinstance(cfg, cls):
        return cfg
    merged = OmegaConf.merge(OmegaConf.structured(cls), cfg if cfg is not None else {})
    return OmegaConf.to_object(merged)


def resolve_device(name: str) -> torch.device:
    """"auto": this process's GPU (LOCAL_RANK, set by composer's launcher and torchrun) if CUDA is there, else CPU."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)

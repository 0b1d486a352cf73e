"""Turns a yaml / dict / DictConfig into a job's config dataclass, checked against its schema.

OmegaConf does the checking: an unknown key or a missing mandatory value fails with the key named.
"""
from __future__ import annotations

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
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

"""Turns a yaml / dict / DictConfig into a job's config dataclass, checked against its schema.

OmegaConf does the checking: an unknown key or a missing mandatory value fails with the key named.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, TypeVar

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

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


def run_job_cli(argv: list[str] | None, prog: str, description: str, schema: type, run: Callable) -> tuple[int, Any]:
    """`python -m eval.<job> YAML [key=value ...]`: the yaml checked exactly as `run.py` checks it, then the job.
    Returns (exit status, the job's result); an error is one line on stderr and status 2."""
    from diffusion.config import load_config
    from diffusion.extras import check_config

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("config", help=f"yaml with {schema.__name__} fields")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    try:  # ConfigError is a ValueError
        cfg = load_config(args.config, args.overrides, schema)
        check_config(cfg, args.config)
        return 0, run(cfg)
    except (FileNotFoundError, ValueError, KeyError, OmegaConfBaseException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2, None

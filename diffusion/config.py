"""Loads a job yaml, applies `key.sub=value` overrides and checks every key before any heavy work.

Schemas are derived from the signatures of the functions and classes the keys feed (`schema_from`), so
a yaml key is, by construction, the name of an argument you can find in the code: `model.offset_noise`
is `build_stable_diffusion(offset_noise=...)`. Unknown and missing keys fail with the key and file named.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Callable, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

_SCHEMAS: dict[tuple, type] = {}


class ConfigError(ValueError):
    """A yaml problem the user can fix; its message names the file and the key."""


def schema_from(target: Callable, name: str | None = None, exclude: tuple[str, ...] = ()) -> type:
    """A dataclass whose fields are `target`'s keyword arguments (defaults kept, required ones MISSING)."""
    key = (target, exclude)
    if key not in _SCHEMAS:
        fields = []
        for pname, param in inspect.signature(target).parameters.items():
            if pname in ("self", *exclude) or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            default = MISSING if param.default is inspect.Parameter.empty else param.default
            if isinstance(default, (list, dict, tuple)):
                default = dataclasses.field(default_factory=lambda d=default: type(d)(d) if not isinstance(d, tuple) else list(d))
            else:
                default = dataclasses.field(default=default)
            fields.append((pname, Any, default))
        _SCHEMAS[key] = dataclasses.make_dataclass(name or f"{getattr(target, '__qualname__', 'Target')}Args", fields)
    return _SCHEMAS[key]


def optional_sections(name: str, registry: dict[str, Callable]) -> type:
    """A dataclass with one optional sub-section per registry entry; a section left out (or null) is off."""
    fields = [(key, Optional[schema_from(target)], dataclasses.field(default=None)) for key, target in registry.items()]
    return dataclasses.make_dataclass(name, fields)


def load_config(path: str, overrides: list[str] | None, schema: type) -> DictConfig:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such yaml file")
    try:
        raw = OmegaConf.load(path)
        raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(list(overrides or [])))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), raw)
    except ConfigKeyError as exc:
        key = getattr(exc, "full_key", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: unknown key '{key}' (not an argument of the builder it feeds)") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]} (key '{getattr(exc, 'full_key', '?')}')") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{path}: missing required key '{missing[0]}'" + (f" (and {missing[1:]})" if missing[1:] else ""))
    return cfg


def as_kwargs(section) -> dict:
    """A config section as plain keyword arguments (interpolations resolved)."""
    return OmegaConf.to_container(section, resolve=True) if section is not None else {}

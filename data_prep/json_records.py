"""Small JSON files that outputs carry beside them: written atomically, and a record of the settings an output
folder was made with, so a resumable job continues into it only with the same settings.

Each caller words its own refusal (a data stage, the generate CLI and an eval job have different remedies);
what they share is reading the record, telling which settings changed, and writing it without a torn file.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable


def write_json_atomic(path: str, obj: Any, tmp_suffix: str = ".tmp", default: Callable | None = None) -> None:
    """A killed writer leaves the old file or the new one, never half of one. Ranks writing the same file at
    once pass their own `tmp_suffix`."""
    tmp = path + tmp_suffix
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=default)
    os.replace(tmp, path)


def read_settings(path: str) -> dict | None:
    """The settings recorded at `path`, or None when the folder has no record yet."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def changed_settings(recorded: dict, settings: dict) -> list[str]:
    """Sorted names of the settings whose values differ (set in only one of the two counts as differing)."""
    return sorted(k for k in recorded.keys() | settings.keys() if recorded.get(k) != settings.get(k))

"""Measures whether demo samples follow their prompts: are the shape's and the background's colours right?

A sample grid (rows: prompts, columns: seeds) is cut into cells. A cell's background colour is the median
of its border ring; its foreground colour is the median of the central pixels that differ clearly from
the background. Each is snapped to the nearest colour of the demo palette and compared with the prompt.
Chance level is about 1/6 per colour; a model that learnt the captions scores near 1.
"""
from __future__ import annotations

import re

import numpy as np
from PIL import Image

from diffusion.demo.shapes import COLOURS

_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _PALETTE_NAMES], dtype=np.float32)
_PROMPT = re.compile(r"a (\w+) (\w+) on a (\w+) background")


def _nearest(colour: np.ndarray) -> str:
    return _PALETTE_NAMES[int(np.argmin(((_PALETTE - colour) ** 2).sum(1)))]


def cell_colours(cell: np.ndarray, ring: int = 3, min_distance: float = 60.0) -> tuple[str | None, str]:
    """(foreground, background) palette names of one HxWx3 cell; foreground None if nothing stands out."""
    h, w, _ = cell.shape
    border = np.concatenate([cell[:ring].reshape(-1, 3), cell[-ring:].reshape(-1, 3),
                             cell[:, :ring].reshape(-1, 3), cell[:, -ring:].reshape(-1, 3)]).astype(np.float32)
    background = np.median(border, axis=0)
    centre = cell[h // 4: h - h // 4, w // 4: w - w // 4].reshape(-1, 3).astype(np.float32)
    distinct = centre[np.sqrt(((centre - background) ** 2).sum(1)) > min_distance]
    foreground = _nearest(np.median(distinct, axis=0)) if len(distinct) >= 4 else None
    return foreground, _nearest(background)


def score_grid(path: str, prompts: list[str], cell: int = 32) -> dict:
    grid = np.asarray(Image.open(path).convert("RGB"))
    cols = grid.shape[1] // cell
    fg_hits = bg_hits = both_hits = total = 0
    for row, prompt in enumerate(prompts):
        fg, _, bg = _PROMPT.fullmatch(prompt).groups()
        for col in range(cols):
            got_fg, got_bg = cell_colours(grid[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell])
            fg_hits += got_fg == fg
            bg_hits += got_bg == bg
            both_hits += got_fg == fg and got_bg == bg
            total += 1
    return {"foreground_accuracy": fg_hits / total, "background_accuracy": bg_hits / total,
            "both_accuracy": both_hits / total,  # cells whose shape AND background colours are both right
            "accuracy": (fg_hits + bg_hits) / (2 * total), "cells": total}

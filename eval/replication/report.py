"""Summary statistics of top-1 similarities, and the PNG grid of generations beside their closest training images."""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps


def similarity_stats(top1: np.ndarray, thresholds: Sequence[float]) -> dict:
    """Mean, 95th percentile and share of queries whose top-1 similarity exceeds each threshold."""
    top1 = np.asarray(top1, dtype=np.float64)
    stats = {"n": int(len(top1)), "mean": float(top1.mean()), "p95": float(np.percentile(top1, 95)),
             "max": float(top1.max())}
    for t in thresholds:
        stats[f"share_above_{t:g}"] = float((top1 > t).mean())
    return stats


def _thumbnail(image: Image.Image, size: int) -> Image.Image:
    image = ImageOps.contain(image.convert("RGB"), (size, size), Image.BICUBIC)  # up- or down-scaled to fit
    canvas = Image.new("RGB", (size, size), "white")
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas


def draw_match_grid(rows: list[dict], path: str, thumb: int = 192, text_lines: int = 9) -> None:
    """One row per generation: the generated image, then its top matches, each captioned with its
    similarity and attribution (author, license, URL, title).

    rows: [{"name": str, "image": PIL image, "matches": [{"image": PIL image, "score": float, **attribution}]}]
    """
    font = ImageFont.load_default(size=11)
    line_h = 13
    cols = 1 + max(len(r["matches"]) for r in rows)
    pad = 6
    cell_w, cell_h = thumb + pad, thumb + pad + text_lines * line_h
    canvas = Image.new("RGB", (cols * cell_w + pad, len(rows) * cell_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    chars = max(12, thumb // 6)
    for r, row in enumerate(rows):
        y = pad + r * cell_h
        canvas.paste(_thumbnail(row["image"], thumb), (pad, y))
        draw.text((pad, y + thumb + 2), "generated: " + row["name"], fill="black", font=font)
        for c, match in enumerate(row["matches"], start=1):
            x = pad + c * cell_w
            canvas.paste(_thumbnail(match["image"], thumb), (x, y))
            color = "red" if match["score"] > 0.75 else "darkorange" if match["score"] > 0.5 else "black"
            lines = [f"#{c}  cos {match['score']:.3f}  (train {match['index']})"]
            for label, key in (("by", "author_name"), ("license", "license"), ("", "page_url"), ("title", "title")):
                text = f"{label}: {match.get(key) or '-'}" if label else (match.get(key) or "-")
                lines.extend(textwrap.wrap(text, chars) or [""])
            for i, line in enumerate(lines[:text_lines]):
                draw.text((x, y + thumb + 2 + i * line_h), line, fill=color if i == 0 else "black", font=font)
    canvas.save(path)

"""A procedurally drawn text-image dataset for the CPU demo: "a red circle on a blue background".

Written as MDS with the same attribution columns as real Creative-Commons shards (marked CC0, author
"commoncanvas demo"), so the demo exercises the data path real data takes.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import random

from PIL import Image, ImageDraw
from streaming import MDSWriter
from tqdm import tqdm

from data_prep import schema

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220),
    "yellow": (240, 220, 40), "white": (245, 245, 245), "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
COLUMNS = {**schema.FETCH_COLUMNS, schema.CAPTION: "str"}


def caption(fg: str, shape: str, bg: str) -> str:
    return f"a {fg} {shape} on a {bg} background"


def draw(fg: str, shape: str, bg: str, size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), COLOURS[bg])
    pen = ImageDraw.Draw(image)
    radius = rng.uniform(0.25, 0.38) * size
    cx, cy = (size / 2 + rng.uniform(-0.1, 0.1) * size for _ in range(2))
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "circle":
        pen.ellipse(box, fill=COLOURS[fg])
    elif shape == "square":
        pen.rectangle(box, fill=COLOURS[fg])
    else:
        pen.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=COLOURS[fg])
    return image


def all_prompts() -> list[tuple[str, str, str]]:
    return [(fg, s, bg) for fg in COLOURS for s in SHAPES for bg in COLOURS if fg != bg]


def write_shapes(out_dir: str, n: int = 2000, size: int = 32, seed: int = 0) -> str:
    """Writes `n` samples to `out_dir` (MDS). Returns out_dir. Deterministic for a given seed."""
    rng = random.Random(seed)
    combos = all_prompts()
    with MDSWriter(out=out_dir, columns=COLUMNS, size_limit="32mb") as writer:
        for i in tqdm(range(n), desc="drawing demo shapes"):
            fg, shape, bg = combos[rng.randrange(len(combos))]
            image = draw(fg, shape, bg, size, rng)
            raw = io.BytesIO()
            image.save(raw, format="PNG")
            writer.write({
                schema.IMAGE: image, "photo_id": f"demo-{i:06d}", "title": caption(fg, shape, bg),
                "description": "procedurally drawn for the CPU demo", "author_name": "commoncanvas demo",
                "author_id": "demo", "page_url": "", "download_url": "", "license": "CC0",
                "license_name": "CC0 1.0 Universal", "license_url": "https://creativecommons.org/publicdomain/zero/1.0/",
                "orig_width": size, "orig_height": size, "sha256": hashlib.sha256(raw.getvalue()).hexdigest(),
                schema.CAPTION: caption(fg, shape, bg),
            })
    return out_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if os.path.exists(os.path.join(args.out_dir, "index.json")):
        parser.exit(1, f"error: {args.out_dir} already holds shards; remove it first\n")
    write_shapes(args.out_dir, args.n, args.size, args.seed)


if __name__ == "__main__":
    main()

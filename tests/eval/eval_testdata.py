"""Synthetic images, prompt files and training MDS sets shared by the eval tests."""
import json
import os

import numpy as np
from PIL import Image, ImageDraw

from data_prep import schema


def synthetic_image(rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A smooth random colour field with a few random shapes: distinct images with image-like structure."""
    low = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
    img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        w, h = (int(v) for v in rng.integers(10, size // 2, 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = [x0, y0, x0 + w, y0 + h]
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse(box, fill=color)
        elif kind == 1:
            draw.rectangle(box, fill=color)
        else:
            draw.line(box, fill=color, width=int(rng.integers(2, 8)))
    return img


def write_folder(folder, images, names=None):
    os.makedirs(folder, exist_ok=True)
    names = names or [f"{i:04d}" for i in range(len(images))]
    for name, image in zip(names, images):
        image.save(os.path.join(folder, f"{name}.png"))
    return str(folder)


def write_prompts(path, ids, words=("red circle", "blue square", "green triangle", "a photo")):
    with open(path, "w") as f:
        for k, i in enumerate(ids):
            f.write(json.dumps({"id": i, "prompt": f"{words[k % len(words)]} {k}"}) + "\n")
    return str(path)


def attribution_for(i: int) -> dict:
    return {
        "photo_id": f"p{i}", "title": f"photo number {i}", "description": "", "author_name": f"Author {i}",
        "author_id": f"a{i}", "page_url": f"https://www.flickr.com/photos/a{i}/{1000 + i}",
        "download_url": "", "license": "CC-BY", "license_name": "Attribution License",
        "license_url": "https://creativecommons.org/licenses/by/2.0/", "orig_width": 96, "orig_height": 96,
        "sha256": "",
    }


def write_train_mds(out, images):
    """A training set in the fetch stage's format: jpeg image + every attribution column."""
    from streaming import MDSWriter

    with MDSWriter(out=str(out), columns=schema.FETCH_COLUMNS) as writer:
        for i, image in enumerate(images):
            writer.write({schema.IMAGE: image, **attribution_for(i)})
    return str(out)

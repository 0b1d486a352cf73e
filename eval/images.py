"""Lists the images of a folder in a fixed order, keyed by file stem (the id that ties an image to its prompt)."""
from __future__ import annotations

import os

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(folder: str) -> list[str]:
    """Sorted image paths directly inside `folder` (not recursive: one folder holds one image set)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no image folder at {folder}")
    files = sorted(
        os.path.join(folder, name) for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def image_id(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def ids_of(files: list[str]) -> list[str]:
    ids = [image_id(f) for f in files]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"two images share the id {dup!r} in {os.path.dirname(files[0])} (ids are file stems)")
    return ids

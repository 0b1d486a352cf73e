"""Writes a fixed, seeded random subset of COCO-2014 val (one caption per image) to MDS, for FID / CLIP score.

    python -m data_prep.coco --annotations captions_val2014.json --images val2014/ --out coco30k_mds \
        [--n 30000 --seed 0]

The subset is n *distinct* images (a repeated reference image would count twice in the reference
statistics), each with one of its captions, both drawn with `--seed`. Images are taken in the order of a
seeded permutation, so the first 10k of a 30k subset are the 10k subset of the same seed. Image bytes
are copied unchanged (no JPEG re-encoding).

Columns: image (jpeg), caption (str), image_id (int, COCO's), caption_id (int, COCO's annotation id).
Output is written in parts of --part-size samples, each a complete MDS folder; a rerun skips finished
parts, and the parts' indexes are merged into one index.json at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_prep import schema

IMAGE_ID = "image_id"
CAPTION_ID = "caption_id"
COLUMNS = {schema.IMAGE: "jpeg", schema.CAPTION: "str", IMAGE_ID: "int", CAPTION_ID: "int"}
SUBSET_FILE = "coco_subset.json"  # the parameters and the chosen ids, beside index.json


class CocoInputError(Exception):
    """Bad input, reported as one line naming the file / key."""


def load_captions(annotations: str) -> tuple[dict[int, str], dict[int, list[tuple[int, str]]]]:
    """(image_id -> file name, image_id -> [(annotation id, caption)] sorted by annotation id)."""
    if not os.path.isfile(annotations):
        raise CocoInputError(f"no annotations file at {annotations}")
    try:
        with open(annotations) as f:
            data = json.load(f)
        files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        captions: dict[int, list[tuple[int, str]]] = {}
        for ann in data["annotations"]:
            captions.setdefault(int(ann["image_id"]), []).append((int(ann["id"]), str(ann["caption"]).strip()))
    except json.JSONDecodeError as e:
        raise CocoInputError(f"{annotations}: not valid JSON ({e})") from None
    except (KeyError, TypeError) as e:
        raise CocoInputError(f"{annotations}: not a COCO captions file (missing key {e})") from None
    for image_id, caps in captions.items():
        if image_id not in files:
            raise CocoInputError(f"{annotations}: caption {caps[0][0]} refers to image_id {image_id}, not in 'images'")
        caps.sort()
    return files, captions


def choose_subset(captions: dict[int, list[tuple[int, str]]], n: int, seed: int) -> list[tuple[int, int, str]]:
    """[(image_id, caption_id, caption)]: n distinct images in seeded-permutation order, one seeded caption each."""
    image_ids = sorted(captions)
    if n > len(image_ids):
        raise CocoInputError(f"--n {n} exceeds the {len(image_ids)} captioned images in the annotations")
    order = np.random.default_rng(seed).permutation(len(image_ids))
    # Caption choices come from their own stream, drawn for every image, so a subset's prefix is stable in n.
    caption_rng = np.random.default_rng([seed, 1])
    picks = [int(caption_rng.integers(len(captions[image_ids[i]]))) for i in order]
    subset = []
    for i, pick in zip(order[:n], picks[:n]):
        image_id = image_ids[i]
        caption_id, caption = captions[image_id][pick]
        subset.append((image_id, caption_id, caption))
    return subset


def _write_part(part_dir: str, rows: list[tuple[int, int, str]], files: dict[int, str], images: str, bar) -> None:
    from streaming import MDSWriter

    if os.path.exists(part_dir):  # left half-written by an interrupted run
        shutil.rmtree(part_dir)
    with MDSWriter(out=part_dir, columns=COLUMNS, size_limit="256mb") as writer:
        for image_id, caption_id, caption in rows:
            path = os.path.join(images, files[image_id])
            try:
                image = Image.open(path)  # an opened JPEG file is stored as its original bytes
            except OSError as e:
                raise CocoInputError(f"{path}: cannot read image ({e})") from None
            writer.write({schema.IMAGE: image, schema.CAPTION: caption, IMAGE_ID: image_id, CAPTION_ID: caption_id})
            image.close()
            bar.update(1)


def write_coco_subset(annotations: str, images: str, out: str, n: int = 30000, seed: int = 0, part_size: int = 5000) -> str:
    from streaming.base.util import merge_index

    if n < 1 or part_size < 1:
        raise CocoInputError("--n and --part-size must be positive")
    if not os.path.isdir(images):
        raise CocoInputError(f"no images folder at {images}")
    files, captions = load_captions(annotations)
    subset = choose_subset(captions, n, seed)
    missing = [files[i] for i, _, _ in subset if not os.path.isfile(os.path.join(images, files[i]))]
    if missing:
        raise CocoInputError(f"image {os.path.join(images, missing[0])} is missing ({len(missing)} of the subset in all)")

    params = {"annotations": os.path.basename(annotations), "n": n, "seed": seed, "part_size": part_size,
              "image_ids": [i for i, _, _ in subset]}
    os.makedirs(out, exist_ok=True)
    subset_path = os.path.join(out, SUBSET_FILE)
    if os.path.exists(subset_path):
        with open(subset_path) as f:
            previous = json.load(f)
        if previous != params:
            raise CocoInputError(
                f"{out} already holds a different subset (n={previous.get('n')}, seed={previous.get('seed')}); "
                "choose another --out"
            )
    else:
        with open(subset_path, "w") as f:
            json.dump(params, f)

    parts = [subset[s:s + part_size] for s in range(0, len(subset), part_size)]
    part_dirs = [os.path.join(out, f"part_{k:05d}") for k in range(len(parts))]
    with tqdm(total=len(subset), desc="coco -> mds", unit="img") as bar:
        for rows, part_dir in zip(parts, part_dirs):
            if os.path.isfile(os.path.join(part_dir, "index.json")):  # written last by MDSWriter: part is complete
                bar.update(len(rows))
                continue
            _write_part(part_dir, rows, files, images, bar)
    merged = os.path.join(out, "index.json")
    if os.path.exists(merged):  # merge_index will not overwrite it; it is rebuilt from the parts
        os.remove(merged)
    merge_index([os.path.join(d, "index.json") for d in part_dirs], out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.coco", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--annotations", required=True, help="COCO captions json, e.g. captions_val2014.json")
    parser.add_argument("--images", required=True, help="folder holding the COCO images (e.g. val2014/)")
    parser.add_argument("--out", required=True, help="output MDS folder")
    parser.add_argument("--n", type=int, default=30000, help="number of distinct images (default 30000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image and caption draw (default 0)")
    parser.add_argument("--part-size", type=int, default=5000, help="samples per resumable part (default 5000)")
    args = parser.parse_args(argv)
    try:
        write_coco_subset(args.annotations, args.images, args.out, args.n, args.seed, args.part_size)
    except CocoInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

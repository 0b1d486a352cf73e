"""Turns the COCO subset MDS (data_prep.coco) into what the FID/CLIP eval reads: a reference image folder
and a prompts file.

Reference images are centre-cropped and resized to the generation resolution and saved as PNG named
`<image_id>.png`; prompts.jsonl holds {"id": image_id, "prompt": caption}, so the image generated for a
prompt is saved as `<id>.png` and pairs with its caption by file name. Existing PNGs are kept, so an
interrupted export resumes.
"""
from __future__ import annotations

import json
import os

from PIL import Image
from tqdm import tqdm

from data_prep import schema
from data_prep.coco import IMAGE_ID


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)


def write_coco_reference(coco_mds: str, reference_dir: str, prompts_file: str, resolution: int) -> int:
    """Returns the number of reference images."""
    from streaming import LocalDataset

    if not os.path.isfile(os.path.join(coco_mds, "index.json")):
        raise FileNotFoundError(f"no MDS index.json in {coco_mds} (write it with python -m data_prep.coco)")
    dataset = LocalDataset(local=coco_mds)
    os.makedirs(reference_dir, exist_ok=True)
    rows = []
    for index in tqdm(range(len(dataset)), desc="coco reference images", unit="img"):
        sample = dataset[index]
        image_id = str(sample[IMAGE_ID])
        path = os.path.join(reference_dir, f"{image_id}.png")
        if not os.path.exists(path):
            tmp = path + ".tmp.png"
            center_crop_resize(sample[schema.IMAGE], resolution).save(tmp)
            os.replace(tmp, path)
        rows.append({"id": image_id, "prompt": sample[schema.CAPTION]})
    expected = {f"{row['id']}.png" for row in rows}
    stray = sorted(n for n in os.listdir(reference_dir) if n not in expected and not n.endswith(".tmp.png"))
    if stray:  # would silently join the reference set
        raise ValueError(f"{reference_dir} holds {len(stray)} images not in {coco_mds}, e.g. {stray[0]}; use an empty folder")
    os.makedirs(os.path.dirname(os.path.abspath(prompts_file)), exist_ok=True)
    tmp = prompts_file + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(tmp, prompts_file)
    return len(rows)

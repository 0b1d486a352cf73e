"""Aspect-ratio buckets: which size each image trains at, and the Streaming streams that batch one bucket at a time.

A square centre crop throws away the sides of every wide or tall photo. With buckets, each image is resized to
cover the bucket closest to its own aspect ratio and centre-cropped to it, so little is lost; every training
batch then holds one bucket (one tensor shape) on every rank.

  bucket_sizes(res)   SDXL's 1,024-px bucket list scaled to `res` px, sides rounded to multiples of
                      `multiple` (64 by default, so the latents divide through every UNet level), duplicates
                      dropped. At 256 px that leaves 13 sizes, at 512 px 23.
  BucketCrop          the transform data_prep.precompute_latents encodes each image with: bucket chosen by
                      the image's own (height, width), resize to cover it (bicubic, antialiased), centre crop,
                      [-1, 1]; it also returns the crop's top-left corner, which SDXL's micro-conditioning uses.
  bucket_streams      the training side: one Streaming stream per bucket folder listed in buckets.json, for
                      StreamingDataset(batching_method="per_stream"). Each global batch comes from one stream,
                      so from one bucket on every rank, and Streaming's deterministic mid-epoch resume still
                      holds (it resumes at a global-batch boundary).

On disk (data_prep.precompute_latents --aspect-buckets): OUT/bucket_<h>x<w>[_<h>x<w>...]/ is one MDS dataset
per bucket (one size per stored resolution, in the order of buckets.json's "resolutions"), OUT/index.json
covers all of them for tools that read the whole set (attribution, counts), and OUT/buckets.json lists each
bucket's sizes and sample count.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile

from torchvision import transforms
from torchvision.transforms import functional as TF

log = logging.getLogger(__name__)

BUCKETS_FILE = "buckets.json"
BUCKET_PREFIX = "bucket_"

# SDXL's multi-aspect training buckets at 1,024 px (Podell et al. 2023, appendix), as (height, width): sides are
# multiples of 64 and the area stays close to 1024 x 1024; aspect ratios (w/h) run from 1/4 to 4.
SDXL_BUCKETS_1024 = (
    (2048, 512), (1984, 512), (1920, 512), (1856, 512), (1792, 576), (1728, 576), (1664, 576), (1600, 640),
    (1536, 640), (1472, 704), (1408, 704), (1344, 704), (1344, 768), (1280, 768), (1216, 832), (1152, 832),
    (1152, 896), (1088, 896), (1088, 960), (1024, 960), (1024, 1024), (960, 1024), (960, 1088), (896, 1088),
    (896, 1152), (832, 1152), (832, 1216), (768, 1280), (768, 1344), (704, 1344), (704, 1408), (704, 1472),
    (640, 1536), (640, 1600), (576, 1664), (576, 1728), (576, 1792), (512, 1856), (512, 1920), (512, 1984),
    (512, 2048),
)


def bucket_sizes(resolution: int, multiple: int = 64) -> list[tuple[int, int]]:
    """SDXL's buckets scaled from 1,024 px to `resolution`, each side rounded to a multiple of `multiple` (at
    least one multiple), duplicates dropped; (height, width) sorted by aspect ratio, tall to wide."""
    if resolution < multiple or multiple < 1:
        raise ValueError(f"aspect buckets: resolution {resolution} must be >= the bucket multiple {multiple} >= 1")
    scale = resolution / 1024
    sizes = {(max(multiple, round(h * scale / multiple) * multiple), max(multiple, round(w * scale / multiple) * multiple))
             for h, w in SDXL_BUCKETS_1024}
    return sorted(sizes, key=lambda hw: (hw[1] / hw[0], hw[0] * hw[1]))


def choose_bucket(height: int, width: int, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (in log ratio, so 2:1 and 1:2 are equally far
    from square); of equally close ones the larger, so less is upscaled."""
    if height < 1 or width < 1:
        raise ValueError(f"aspect buckets: image size {height}x{width} is empty")
    ratio = math.log(width / height)
    return min(sizes, key=lambda hw: (round(abs(math.log(hw[1] / hw[0]) - ratio), 9), -hw[0] * hw[1]))


class BucketCrop:
    """PIL image -> ((3, h, w) tensor in [-1, 1], (crop top, crop left)) at the image's bucket for `resolution`:
    resized (bicubic, antialiased) so it covers the bucket, then centre-cropped to it."""

    def __init__(self, resolution: int, multiple: int = 64):
        self.resolution, self.sizes = resolution, bucket_sizes(resolution, multiple)
        self.to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])

    def __call__(self, image):
        bh, bw = choose_bucket(image.height, image.width, self.sizes)
        scale = max(bh / image.height, bw / image.width)
        nh, nw = max(bh, round(image.height * scale)), max(bw, round(image.width * scale))
        resized = TF.resize(image, [nh, nw], interpolation=transforms.InterpolationMode.BICUBIC, antialias=True)
        top, left = int(round((nh - bh) / 2.0)), int(round((nw - bw) / 2.0))
        return self.to_tensor(resized.crop((left, top, left + bw, top + bh))), (top, left)


def bucket_name(sizes: list[tuple[int, int]]) -> str:
    """The folder of a bucket: its (height, width) at each stored resolution, e.g. bucket_192x320_384x640."""
    return BUCKET_PREFIX + "_".join(f"{h}x{w}" for h, w in sizes)


def write_buckets_file(out_dir: str, resolutions: list[int], multiple: int, counts: dict[str, int]) -> str:
    """OUT/buckets.json: the stored resolutions, the bucket multiple, and each bucket folder's sizes and samples."""
    buckets = {}
    for name, n in sorted(counts.items()):
        sizes = [tuple(int(v) for v in part.split("x")) for part in name[len(BUCKET_PREFIX):].split("_")]
        buckets[name] = {"sizes": {str(r): list(s) for r, s in zip(resolutions, sizes)}, "num_samples": int(n)}
    path = os.path.join(out_dir, BUCKETS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump({"resolutions": list(resolutions), "multiple": multiple, "buckets": buckets}, f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def read_buckets_file(remote: str | None, local: str | None) -> dict | None:
    """buckets.json of a dataset (the local copy if there is one, else downloaded from `remote`); None if the
    dataset is not bucketed."""
    if local and os.path.isfile(os.path.join(local, BUCKETS_FILE)):
        path = os.path.join(local, BUCKETS_FILE)
    elif remote:
        from diffusion.remote_files import is_remote, local_copy

        source = f"{remote.rstrip('/')}/{BUCKETS_FILE}"
        if not is_remote(remote):
            if not os.path.isfile(source):
                return None
            path = source
        else:
            try:
                path = local_copy(source, tempfile.mkdtemp(prefix="buckets-"))
            except FileNotFoundError:
                return None
    else:
        return None
    with open(path) as f:
        return json.load(f)


def bucket_streams(remote: str | None, local: str | None, resolution: int, global_batch: int) -> list[dict]:
    """Stream kwargs, one per bucket folder of a --aspect-buckets dataset, for per-stream batching.

    A bucket with fewer samples than one global batch cannot fill a batch (Streaming refuses such a stream),
    so it is left out with a warning naming it; Streaming itself drops each bucket's last partial batch
    every epoch (a different remainder each epoch, as the shuffle changes)."""
    info = read_buckets_file(remote, local)
    where = local or remote
    if info is None:
        raise ValueError(f"dataset.aspect_buckets: {where} has no {BUCKETS_FILE}; make the latents with "
                         f"data_prep.precompute_latents --aspect-buckets")
    if resolution not in info["resolutions"]:
        raise ValueError(f"dataset.resolution {resolution}: {where}/{BUCKETS_FILE} holds latents for "
                         f"{info['resolutions']} only")
    streams, dropped = [], {}
    for name, bucket in sorted(info["buckets"].items()):
        if bucket["num_samples"] < global_batch:
            dropped[name] = bucket["num_samples"]
            continue
        streams.append({"remote": f"{remote.rstrip('/')}/{name}" if remote else None,
                        "local": os.path.join(local, name) if local else None})
    if dropped:
        log.warning("aspect buckets with fewer samples than one global batch (%d) are not trained on: %s",
                    global_batch, dropped)
    if not streams:
        raise ValueError(f"dataset.aspect_buckets: no bucket in {where} holds a full global batch of "
                         f"{global_batch} samples (samples per bucket: {dropped})")
    return streams

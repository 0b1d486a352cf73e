"""Small fetch-stage-like MDS inputs for the caption and latents tests (schema.FETCH_COLUMNS + extras).

Images are random JPEGs of assorted sizes; each is stored byte for byte (streaming's JPEG encoder copies
the file behind an image opened from a path), so tests can check the stages copy those exact bytes.
"""
from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from streaming import MDSWriter

from data_prep import schema

REPO = Path(__file__).resolve().parents[2]
WORDS = "a the red green blue small large circle square photo of on with background".split()
SIZES = [(40, 30), (24, 48), (33, 33), (64, 20), (20, 26)]


def jpeg_bytes(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


def write_inputs(out_dir: Path, n: int, seed: int = 0, caption_column: str | None = None,
                 corrupt: set[int] = frozenset()) -> dict[str, dict]:
    """Writes n samples (keys p000..); indices in `corrupt` hold a truncated JPEG. Returns key -> the
    values written, with the image as its JPEG bytes."""
    rng = np.random.default_rng(seed)
    columns = dict(schema.FETCH_COLUMNS)
    if caption_column:
        columns[caption_column] = "str"
    written = {}
    with tempfile.TemporaryDirectory() as tmp, MDSWriter(out=str(out_dir), columns=columns,
                                                         size_limit=6000) as writer:
        for i in range(n):
            key = f"p{i:03d}"
            data = jpeg_bytes(rng, SIZES[i % len(SIZES)])
            if i in corrupt:
                data = data[: len(data) // 2]
            path = os.path.join(tmp, f"{key}.jpg")
            with open(path, "wb") as f:
                f.write(data)
            sample = {
                "photo_id": key, "title": f"title {i}", "description": f"alt text of photo {i}",
                "author_name": f"author {i % 3}", "author_id": f"a{i % 3}",
                "page_url": f"https://example.org/photo/{i}", "download_url": f"https://example.org/{i}.jpg",
                "license": ["CC-BY", "CC0", "CC-BY-SA"][i % 3], "license_name": "some license",
                "license_url": "https://creativecommons.org/licenses/", "orig_width": SIZES[i % 5][0],
                "orig_height": SIZES[i % 5][1], "sha256": hashlib.sha256(data).hexdigest(),
            }
            if caption_column:
                sample[caption_column] = " ".join(rng.choice(WORDS, size=int(rng.integers(0, 7))))
            with Image.open(path) as image:
                writer.write({**sample, schema.IMAGE: image})
            written[key] = {**sample, schema.IMAGE: data}
    return written


# Run a stage's main() in a child that SIGKILLs itself right after its `kill_after`-th sample write: a crash
# at a known point mid-part, with no hook in the stage's own code.
_KILLER = """
import os, signal, sys, importlib
import data_prep.shards as shards
kill_after = int(sys.argv[2]); calls = [0]; original = shards.ResumableMDSWriter.write
def write(self, key, sample):
    original(self, key, sample)
    calls[0] += 1
    if calls[0] == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
shards.ResumableMDSWriter.write = write
importlib.import_module(sys.argv[1]).main(sys.argv[3:])
"""


def run_killed(module: str, kill_after: int, argv: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO)
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    proc = subprocess.run([sys.executable, "-c", _KILLER, module, str(kill_after), *argv], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"expected a SIGKILL, got rc={proc.returncode}: {proc.stderr[-2000:]}"
    return proc

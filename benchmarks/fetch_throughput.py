"""Throughput of the fetch stage (metadata -> checked, resized images in MDS) reading LOCAL files.

    python -m benchmarks.fetch_throughput [--n 500 --workers 1 2 --max-side 1024 512 --out benchmarks/results]

Generates ``--n`` photo-like JPEGs (1024x768 and 768x1024, quality 90; a few hundred KB each, the
size of a Flickr "large" download), writes their metadata as JSON lines, and runs the real stage
(data_prep.fetch.run_fetch with --allow-local) once per (max_side, workers) into a fresh folder. No
network is involved, so the figures are the CPU cost of read + decode + EXIF/RGB + resize + JPEG
encode + MDS write + ledger: a ceiling for the stage, which over HTTP is usually bound by latency.

Reported per run: wall images/s, process CPU seconds (user+sys, all threads) per image, and
images per CPU-core-second (= images / CPU seconds), the figure that carries to other machines.
Writes fetch_throughput.json and fetch_throughput.md under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from benchmarks.report import CpuTimer, cpu_environment, image_stage_figures, markdown_table, write_result
from data_prep.fetch import FetchConfig, run_fetch
from data_prep.images import configure_pillow


def photo_like(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Smooth colour fields plus sensor-like noise and some edges: compresses like a photo, not like
    flat colour (too small) or white noise (too big)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.002, 0.02, 2).tolist() + [rng.uniform(0, 6.3)]
        channels.append(128 + 90 * np.sin(x * fx + phase) * np.cos(y * fy))
    img = np.stack(channels, axis=-1)
    for _ in range(12):  # hard-edged blocks, like objects against a background
        x0, y0 = rng.integers(0, width - 64), rng.integers(0, height - 64)
        w, h = rng.integers(32, width // 3), rng.integers(32, height // 3)
        img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 10, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_inputs(folder: str, n: int, seed: int = 0) -> tuple[str, int]:
    """n JPEGs + metadata.jsonl in ``folder``; returns (metadata path, total bytes of the JPEGs)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    total = 0
    with open(os.path.join(folder, "metadata.jsonl"), "w") as meta:
        for i in range(n):
            size = (1024, 768) if i % 3 else (768, 1024)
            path = os.path.join("images", f"{i:05d}.jpg")
            photo_like(*size, rng).save(os.path.join(folder, path), "JPEG", quality=90)
            total += os.path.getsize(os.path.join(folder, path))
            meta.write(json.dumps({
                "photo_id": str(i), "download_url": path, "page_url": f"https://www.flickr.com/photos/x/{i}",
                "author_name": "bench", "author_id": "0@N00", "title": f"photo {i}", "description": "",
                "license": "CC-BY", "license_name": "Attribution License",
                "license_url": "https://creativecommons.org/licenses/by/2.0/"}) + "\n")
    return os.path.join(folder, "metadata.jsonl"), total


def run_once(metadata: str, out_dir: str, workers: int, max_side: int, resample: str) -> dict:
    config = FetchConfig(workers=workers, max_side=max_side, resample=resample, allow_local=True, progress=False)
    with CpuTimer() as timer:
        counts = run_fetch(metadata, out_dir, config, rank=0, world=1)
    n = counts["written"]
    return {"workers": workers, "max_side": max_side, "resample": resample, "images": n, "skipped": counts["skipped"],
            **image_stage_figures(n, timer, out_dir)}


def to_markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# fetch stage throughput (local files, CPU)",
        "",
        f"`{result['command']}`",
        "",
        f"{result['n_images']} generated photo-like JPEGs, 1024x768 / 768x1024, quality 90, "
        f"{result['input_mb']} MB in total. Machine: {env['cpus']} CPU cores, {env['processor']}, "
        f"Python {env['python']}. No network: this is the CPU ceiling of the stage.",
        "",
    ]
    lines += markdown_table(
        [("max_side", "r"), ("resample", "l"), ("workers", "r"), ("images/s (wall)", "r"), ("CPU ms / image", "r"),
         ("images / CPU-core-s", "r"), ("MDS MB", "r"), ("load avg (before, after)", "l"), ("skipped", "l")],
        [[r["max_side"], r["resample"], r["workers"], r["images_per_s"], r["cpu_ms_per_image"],
          r["images_per_cpu_core_s"], r["mds_mb"], r["load_avg_1min"], r["skipped"] or "-"] for r in result["runs"]])
    lines += ["", "images / CPU-core-s = images written / (user+sys CPU seconds of the whole process, all "
              "threads). Wall images/s is bounded by the core count and by whatever else the machine runs "
              "(see the load averages); the CPU figure is the one to scale by cores."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fetch_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=500, help="images to generate")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--max-side", type=int, nargs="+", default=[1024, 512])
    p.add_argument("--resample", nargs="+", default=["lanczos", "bicubic"], help="filters to compare "
                   "(only where max_side actually shrinks the 768px short side)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"))
    p.add_argument("--work-dir", default=None, help="where inputs/outputs go (default: a temp dir, removed)")
    args = p.parse_args(argv)
    configure_pillow()

    work = args.work_dir or tempfile.mkdtemp(prefix="fetch_bench_")
    try:
        metadata, input_bytes = make_inputs(os.path.join(work, "inputs"), args.n)
        runs = []
        for max_side in args.max_side:
            # At max_side >= 768 nothing is resized, so the filter cannot matter: run the first only.
            for resample in args.resample if max_side < 768 else args.resample[:1]:
                for workers in args.workers:
                    out_dir = os.path.join(work, f"out_{max_side}_{resample}_{workers}")
                    shutil.rmtree(out_dir, ignore_errors=True)
                    runs.append(run_once(metadata, out_dir, workers, max_side, resample))
                    print(json.dumps(runs[-1]), flush=True)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    result = {
        "benchmark": "fetch_throughput",
        "command": "python -m benchmarks.fetch_throughput " + " ".join(
            [f"--n {args.n}", "--workers", *map(str, args.workers), "--max-side", *map(str, args.max_side),
             "--resample", *args.resample]),
        "n_images": args.n, "input_mb": round(input_bytes / 1e6, 1),
        "environment": cpu_environment(),
        "runs": runs,
    }
    write_result(args.out, "fetch_throughput", result, to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Samples/s of the training dataloader (diffusion.datasets.text_image.build_dataloader) from local MDS shards,
for the two data paths of the recipes, per worker count:

  latents  precomputed latents (the commoncanvas yamls): fp16 image latents + caption latents per sample, in
           shards that also carry the JPEG and every attribution column, as data_prep.precompute_latents
           writes them (the JPEG is opened lazily and never decoded)
  jpeg     JPEG decode + resize + crop + tokenize (a run without precomputed latents, and the demo)

    python -m benchmarks.dataloader_throughput [--resolution 256 --samples 2048 --batch-size 32 \
        --workers 0,1,2 --paths latents,jpeg --image-size 512 --gpu-rate N | --gpu-json FILE]

The shards are synthetic (drawn shapes with noise, so JPEGs are photo-sized, not blank) in a temporary
folder; latent shapes are SD2's (4 x res/8 x res/8 image latents, 77 x 1024 caption latents). The tokenizer
is the offline CLIPTokenizer from diffusion.models.tiny padded to 77 tokens: the same slow-tokenizer code
path as SD2's, with a smaller vocabulary.

GPU consumption rate to compare against: --gpu-rate, else the best row of a train_throughput JSON given by
--gpu-json, else the images/s that 40% MFU of an H100 means for the SD2 UNet at this resolution (from
FlopCounterMode, see benchmarks.train_throughput --flops-only). The verdict extrapolates the per-worker rate
to the default worker count (build_dataloader's num_workers) assuming that many free cores per GPU.
Results: <out>/dataloader_throughput_<res>.{json,md}.
"""
from __future__ import annotations

import argparse
import inspect
import io
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from streaming import MDSWriter
from tqdm import tqdm
from transformers import CLIPTokenizer

from benchmarks.report import write_result
from data_prep import schema
from diffusion.datasets.text_image import build_dataloader
from diffusion.models import tiny

BENCHMARK = "dataloader_throughput"
TARGET_RATIO = 4.0  # the issue: data loading at >= 4x what one GPU consumes
DEFAULT_WORKERS = inspect.signature(build_dataloader).parameters["num_workers"].default
H100_BF16_TFLOPS = 989.4


def synthetic_image(rng: np.random.Generator, size: int) -> bytes:
    img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        draw.ellipse([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    pixels = np.asarray(img, dtype=np.int16) + rng.normal(0, 12, (size, size, 3)).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_shards(folder: str, samples: int, image_size: int, resolution: int, latents: bool, seed: int = 0,
                 image_latent_shape: tuple = None, caption_latent_shape: tuple = (77, 1024)) -> None:
    """`samples` synthetic rows; with `latents`, also image latents (default SD2's: 4 x res/8 x res/8) and
    caption latents of the given shapes, as data_prep.precompute_latents stores them (float16)."""
    image_latent_shape = image_latent_shape or (4, resolution // 8, resolution // 8)
    columns = dict(schema.FETCH_COLUMNS)
    columns[schema.BLIP2_CAPTION] = "str"
    if latents:
        columns[schema.image_latents_key(resolution)] = schema.LATENT_ENCODING
        columns[schema.CAPTION_LATENTS] = schema.LATENT_ENCODING
    rng = np.random.default_rng(seed)
    words = ["a", "red", "blue", "photo", "of", "mountain", "lake", "street", "dog", "sunset", "with", "trees"]
    with MDSWriter(out=folder, columns=columns, size_limit="64mb") as writer:
        for i in tqdm(range(samples), desc=f"writing {'latents' if latents else 'jpeg'} shards", leave=False):
            sample = {k: "x" for k, enc in schema.ATTRIBUTION_COLUMNS.items() if enc == "str"}
            sample.update(photo_id=str(i), orig_width=image_size, orig_height=image_size, license="CC-BY")
            sample[schema.IMAGE] = Image.open(io.BytesIO(synthetic_image(rng, image_size)))
            sample[schema.BLIP2_CAPTION] = " ".join(rng.choice(words, int(rng.integers(6, 16))))
            if latents:
                sample[schema.image_latents_key(resolution)] = rng.standard_normal(image_latent_shape).astype(np.float16)
                sample[schema.CAPTION_LATENTS] = rng.standard_normal(caption_latent_shape).astype(np.float16)
            writer.write(sample)


def measure(folder: str, tokenizer, path: str, workers: int, args) -> dict:
    loader = build_dataloader(
        args.batch_size, tokenizer=tokenizer, local=folder, caption_key=schema.BLIP2_CAPTION,
        resolution=args.resolution, precomputed_latents=path == "latents", num_workers=workers,
        persistent_workers=False, shuffle=True,
    )
    batches = iter(loader)
    next(batches)  # worker start-up and first shard open are not steady state
    count, start = 0, time.perf_counter()
    for batch in batches:
        count += next(iter(batch.values())).shape[0]
    seconds = time.perf_counter() - start
    del batches, loader
    rate = count / seconds if seconds > 0 else float("nan")
    return {"path": path, "workers": workers, "samples": count, "seconds": round(seconds, 3),
            "samples_per_s": round(rate, 1), "samples_per_s_per_worker": round(rate / max(workers, 1), 1)}


def gpu_rate(args) -> tuple[float, str]:
    if args.gpu_rate:
        return args.gpu_rate, "--gpu-rate"
    if args.gpu_json:
        with open(args.gpu_json) as f:
            result = json.load(f)
        best = max((r for r in result["rows"] if "images_per_s" in r), key=lambda r: r["images_per_s"])
        return best["images_per_s"], f"row {best['key']} of {args.gpu_json} ({result['device_name']})"
    from benchmarks.train_throughput import count_train_flops_per_image, images_per_s_at_mfu, meta_model

    flops = count_train_flops_per_image(meta_model("sd2"), args.resolution, latents=True)
    return (images_per_s_at_mfu(flops, H100_BF16_TFLOPS),
            f"SD2 UNet at 40% MFU of an H100 ({flops / 1e9:.0f} GFLOP/image, {H100_BF16_TFLOPS} TFLOP/s): a "
            "target, not a measurement")


def to_markdown(result: dict) -> str:
    lines = [f"# Dataloader throughput, {result['resolution']} px training crops", "",
             f"{result['machine']}; torch {result['torch']}; batch {result['batch_size']}; {result['samples']} "
             f"synthetic samples ({result['image_size']} px JPEGs); one pass per row after the first batch.", "",
             "| data path | workers | samples/s | samples/s per worker |", "|---|---:|---:|---:|"]
    lines += [f"| {r['path']} | {r['workers']} | {r['samples_per_s']} | {r['samples_per_s_per_worker']} |"
              for r in result["rows"]]
    lines += ["", f"GPU consumption rate compared against: {result['gpu_rate']} images/s ({result['gpu_rate_source']}).", "",
              f"| data path | best rate per worker process | x {result['default_workers']} default workers (extrapolated) "
              f"| ratio to GPU rate | target >= {TARGET_RATIO}x |", "|---|---:|---:|---:|---|"]
    for path, v in result["verdict"].items():
        lines.append(f"| {path} | {v['per_worker']} | {v['at_default_workers']} | {v['ratio']} | "
                     f"{'met' if v['met'] else 'missed'} |")
    lines += ["", "The extrapolation assumes one free CPU core per worker; with fewer cores per GPU scale it down. "
              "Synthetic JPEGs with noise decode at roughly the cost of photos of the same size.", "",
              f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dataloader_throughput", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--resolution", type=int, default=256, help="training crop (dataset.resolution)")
    p.add_argument("--image-size", type=int, default=512, help="side of the stored JPEGs")
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", default="0,1,2", help="comma-separated num_workers values")
    p.add_argument("--paths", default="latents,jpeg", help="latents, jpeg or both")
    p.add_argument("--gpu-rate", type=float, default=None, help="images/s one GPU consumes")
    p.add_argument("--gpu-json", default=None, help="a benchmarks.train_throughput result JSON (GPU run)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"))
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        sys.exit(f"{BENCHMARK}: --workers {args.workers!r}: expected comma-separated integers")
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not workers or min(workers) < 0 or not paths or set(paths) - {"latents", "jpeg"}:
        sys.exit(f"{BENCHMARK}: --workers needs integers >= 0 and --paths latents and/or jpeg")
    if args.samples < 2 * args.batch_size:
        sys.exit(f"{BENCHMARK}: --samples must be at least two batches ({2 * args.batch_size})")
    if args.gpu_json and not os.path.isfile(args.gpu_json):
        sys.exit(f"{BENCHMARK}: --gpu-json {args.gpu_json}: no such file")
    rate, source = gpu_rate(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="loader_bench_") as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(tiny.save_tiny_tokenizer(os.path.join(tmp, "tok"), model_max_length=77))
        for path in paths:
            folder = os.path.join(tmp, path)
            write_shards(folder, args.samples, args.image_size, args.resolution, latents=path == "latents")
            for w in workers:
                rows.append(measure(folder, tokenizer, path, w, args))
                print(json.dumps(rows[-1]), flush=True)
    verdict = {}
    for path in paths:
        mine = [r for r in rows if r["path"] == path]
        # worker processes are what the default count multiplies; workers=0 (main process) only as a fallback
        per_worker = max(r["samples_per_s_per_worker"] for r in ([r for r in mine if r["workers"]] or mine))
        at_default = round(per_worker * DEFAULT_WORKERS, 1)
        verdict[path] = {"per_worker": per_worker, "at_default_workers": at_default,
                         "ratio": round(at_default / rate, 2), "met": at_default >= TARGET_RATIO * rate}
    result = {"benchmark": BENCHMARK, "command": "python -m benchmarks.dataloader_throughput " + " ".join(argv),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "torch": torch.__version__,
              "resolution": args.resolution, "image_size": args.image_size, "samples": args.samples,
              "batch_size": args.batch_size, "default_workers": DEFAULT_WORKERS, "gpu_rate": rate,
              "gpu_rate_source": source, "rows": rows, "verdict": verdict}
    write_result(args.out, f"{BENCHMARK}_{args.resolution}", result, to_markdown(result))
    return result


if __name__ == "__main__":
    main()

"""Samples per second of the precompute-latents stage (data_prep.precompute_latents), end to end on CPU.

    python -m benchmarks.latents_throughput [--out benchmarks/results] [--tiny-n 64] [--sd2-n 8]

Two set-ups, both with randomly initialised weights (no downloads; the compute is the same as trained ones):
  tiny  the test-size VAE and CLIP text encoder (diffusion.models.tiny) at 32 and 64 px, so the stage's own
        cost (JPEG decode of a 512x384 photo, resize + crop, MDS reading and writing, JPEG passthrough)
        is visible next to the models'; the "stage overhead" column isolates it. Not at 256/512: the tiny VAE downsamples only 2-4x, so its mid-block
        attention would run over thousands to tens of thousands of positions, unlike the real VAE (8x).
  sd2   a VAE with SD2's AutoencoderKL layout and a text encoder with SD2's (OpenCLIP ViT-H) text tower
        layout, at 256 px only, a handful of samples: the models dominate.
Inputs are random 512x384 JPEGs with captions. Each set-up is timed as the whole stage (models loaded from
disk, shards written, merged, manifest) and with the model-loading time taken out (measured separately).
Writes latents_throughput.json and latents_throughput.md under --out. CPU figures; no GPU here.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from streaming import MDSWriter
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from benchmarks.report import write_result
from data_prep import schema
from data_prep.precompute_latents import LatentEncoder, build_parser, load_encoder, run
from diffusion.models import tiny

WORDS = "a the red green blue small large circle square photo of on with background".split()


def make_inputs(folder: str, n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    columns = {**schema.FETCH_COLUMNS, schema.BLIP2_CAPTION: "str"}
    with tempfile.TemporaryDirectory() as tmp, MDSWriter(out=folder, columns=columns) as writer:
        for i in range(n):
            # smooth random colour field, so JPEG sizes are photo-like rather than noise-like
            small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((512, 384), Image.Resampling.BICUBIC)
            path = os.path.join(tmp, f"{i}.jpg")
            image.save(path, format="JPEG", quality=90)
            with Image.open(path) as stored:
                writer.write({
                    schema.IMAGE: stored, "photo_id": f"b{i:06d}", "title": "", "description": "",
                    "author_name": "", "author_id": "", "page_url": "", "download_url": "", "license": "CC0",
                    "license_name": "", "license_url": "", "orig_width": 512, "orig_height": 384, "sha256": "",
                    schema.BLIP2_CAPTION: " ".join(rng.choice(WORDS, size=12)),
                })
    return folder


def save_models(folder: str, layout: str) -> str:
    torch.manual_seed(0)
    if layout == "tiny":
        tiny.save_tiny_tokenizer(os.path.join(folder, "tokenizer"))
        tok = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
        tiny.tiny_vae().save_pretrained(os.path.join(folder, "vae"))
        tiny.tiny_text_encoder(len(tok)).save_pretrained(os.path.join(folder, "text_encoder"))
        return folder
    # SD2 (stabilityai/stable-diffusion-2-base) layouts, written out from their published configs.
    tiny.save_tiny_tokenizer(os.path.join(folder, "tokenizer"), model_max_length=77)
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2, norm_num_groups=32, sample_size=768, scaling_factor=0.18215,
    ).save_pretrained(os.path.join(folder, "vae"))
    CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
    )).save_pretrained(os.path.join(folder, "text_encoder"))
    return folder


def time_stage(in_dir: str, models: str, out_dir: str, resolutions: list[int], batch_size: int,
               workers: int) -> dict:
    argv = [in_dir, out_dir, "--vae", models, "--text-encoder", models, "--tokenizer", models,
            "--resolutions", *map(str, resolutions), "--batch-size", str(batch_size),
            "--workers", str(workers), "--no-progress"]
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    load_encoder(args, torch.device("cpu"))
    load_s = time.perf_counter() - start
    load_before = os.getloadavg()[0]
    model_s = [0.0]
    originals = {name: getattr(LatentEncoder, name) for name in ("encode_images", "encode_captions")}

    def timed(method):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return method(*a, **kw)
            finally:
                model_s[0] += time.perf_counter() - t
        return wrapper

    for name, method in originals.items():  # time spent inside the VAE / text encoder
        setattr(LatentEncoder, name, timed(method))
    try:
        start = time.perf_counter()
        stats = run(args)
        total_s = time.perf_counter() - start
    finally:
        for name, method in originals.items():
            setattr(LatentEncoder, name, method)
    n = stats["written_this_run"]
    mds_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out_dir) for f in fs
                    if f.endswith(".mds"))
    return {
        "samples": n, "resolutions": resolutions, "batch_size": batch_size, "decode_workers": workers,
        "stage_s": round(total_s, 2), "model_load_s": round(load_s, 2),
        "samples_per_s_end_to_end": round(n / total_s, 2),
        "samples_per_s_excluding_load": round(n / max(total_s - load_s, 1e-9), 2),
        "model_compute_s": round(model_s[0], 2),
        # everything but loading and the two models: decode, resize/crop, MDS read/write, passthrough, merge
        "stage_overhead_ms_per_sample": round(1e3 * (total_s - load_s - model_s[0]) / n, 1),
        "mds_kb_per_sample": round(mds_bytes / 1e3 / n, 1),
        "load_avg_1min_before": round(load_before, 2),
    }


def to_markdown(result: dict) -> str:
    lines = [
        "# Precompute-latents stage throughput (CPU)", "",
        f"{result['machine']} - torch {result['torch']}, {result['torch_threads']} threads. "
        "Random weights (same compute as trained ones). Shared 2-core machine: see the load average column. "
        "Stage overhead = stage time minus model loading minus time inside the VAE and text encoder.", "",
        "| set-up | samples | resolutions | batch | stage s | load s | samples/s (end to end) "
        "| samples/s (excl. load) | model compute s | stage overhead ms/sample | MDS kB/sample | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["runs"].items():
        lines.append(f"| {name} | {r['samples']} | {' '.join(map(str, r['resolutions']))} | {r['batch_size']} | "
                     f"{r['stage_s']} | {r['model_load_s']} | {r['samples_per_s_end_to_end']} | "
                     f"{r['samples_per_s_excluding_load']} | {r['model_compute_s']} | {r['stage_overhead_ms_per_sample']} | "
                     f"{r['mds_kb_per_sample']} | {r['load_avg_1min_before']} |")
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join("benchmarks", "results"))
    p.add_argument("--tiny-n", type=int, default=128)
    p.add_argument("--sd2-n", type=int, default=8, help="0 skips the SD2-size set-up")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="latents_bench_") as tmp:
        inputs = make_inputs(os.path.join(tmp, "in_tiny"), args.tiny_n)
        models = save_models(os.path.join(tmp, "tiny"), "tiny")
        runs["tiny VAE + tiny CLIP"] = time_stage(inputs, models, os.path.join(tmp, "out_tiny"), [32, 64], 16,
                                                  args.workers)
        print(json.dumps(runs["tiny VAE + tiny CLIP"]))
        if args.sd2_n:
            inputs = make_inputs(os.path.join(tmp, "in_sd2"), args.sd2_n, seed=1)
            models = save_models(os.path.join(tmp, "sd2"), "sd2")
            runs["SD2-size VAE + SD2-size CLIP text"] = time_stage(inputs, models, os.path.join(tmp, "out_sd2"),
                                                                   [256], 4, args.workers)
            print(json.dumps(runs["SD2-size VAE + SD2-size CLIP text"]))
    result = {
        "benchmark": "latents_throughput", "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, no GPU", "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "command": "python -m benchmarks.latents_throughput " + " ".join(argv or []),
        "runs": runs,
    }
    write_result(args.out, "latents_throughput", result, to_markdown(result))
    return result


if __name__ == "__main__":
    main()

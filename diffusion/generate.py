"""Samples images from an exported pipeline folder or a training checkpoint.

    python -m diffusion.generate MODEL_DIR_OR_CHECKPOINT --prompt "a lighthouse at dusk" [--prompt ...]
        [--negative-prompt ...] [--n 4] [--steps 30] [--guidance 7] [--seed 0] [--sampler ddim|euler|dpm]
        [--height H --width W] [--out DIR] [--device cpu|cuda] [--no-ema]
        [--no-provenance] [--c2pa] [--sign-cert CHAIN.pem --sign-key KEY.pem] [--record-prompt] [--record-seed]

Writes DIR/p{prompt:03d}_s{seed}.png for each prompt and sample i (sample i of every prompt starts from the
noise of seed+i, the same noise diffusers' pipeline draws for torch.Generator().manual_seed(seed+i)), a
grid DIR/grid.png (rows: prompts, columns: samples) and DIR/generate.json with the settings. A rerun with the
same settings skips images already written; with other settings it refuses unless --overwrite.

Every image carries provenance (diffusion.provenance): an invisible watermark with the model's id, and a signed
C2PA manifest when --sign-cert/--sign-key are given (--c2pa: required). Check with
`python -m diffusion.provenance verify DIR/*.png`.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from data_prep.json_records import changed_settings, read_settings, write_json_atomic
from diffusion.inference import ModelLoadError, is_pipeline_folder, load_model
from diffusion.models.samplers import SAMPLERS
from diffusion.provenance import CLI_NAMES, Marker, ProvenanceConfig, add_cli_flags, config_from_args, prepare_signer

SETTINGS_FILE = "generate.json"
GRID_FILE = "grid.png"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def image_path(out_dir: str, prompt_index: int, seed: int) -> str:
    return os.path.join(out_dir, f"p{prompt_index:03d}_s{seed}.png")


def _to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8))


def write_grid(paths_by_prompt: list[list[str]], path: str, marker: Marker | None = None) -> str:
    from diffusion.callbacks.sample_images import image_grid

    images = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for row in paths_by_prompt for p in row]
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    grid = image_grid(tensor, rows=len(paths_by_prompt))
    if marker is None:
        grid.save(path)
    else:
        marker.save(grid, path)
    return path


def _check_settings(out_dir: str, settings: dict, overwrite: bool) -> None:
    recorded = None if overwrite else read_settings(os.path.join(out_dir, SETTINGS_FILE))
    if recorded is not None:
        changed = changed_settings(recorded, settings)
        if changed:
            raise FileExistsError(f"{out_dir}: holds images made with other settings ({', '.join(changed)} differ); "
                                  "use another --out or pass --overwrite")


def _check_size(model, height: int | None, width: int | None) -> tuple[int, int]:
    vae_factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    multiple = vae_factor * 2 ** (len(model.unet.config.block_out_channels) - 1)
    default = model.unet.config.sample_size * vae_factor
    height, width = height or default, width or default
    for name, value in (("--height", height), ("--width", width)):
        if value <= 0 or value % multiple:
            raise ValueError(f"{name} {value} is not a positive multiple of {multiple} (VAE x UNet downsampling)")
    return height, width


def generate_images(
    model_path: str,
    prompts: list[str],
    out_dir: str,
    negative_prompts: list[str] | None = None,
    n: int = 4,
    steps: int = 30,
    guidance: float = 7.0,
    seed: int = 0,
    sampler: str = "ddim",
    height: int | None = None,
    width: int | None = None,
    device: str = "cpu",
    ema: bool | None = None,
    config: str | None = None,
    dtype: str = "fp32",
    batch_size: int = 8,
    overwrite: bool = False,
    provenance: ProvenanceConfig | None = None,
) -> list[str]:
    """Writes the PNGs and the grid; returns the image paths (prompt-major). ema=None: EMA if present.
    provenance: what the images carry (default: watermark, plus C2PA when signing material is set)."""
    if not prompts:
        raise ValueError("--prompt: give at least one prompt")
    if sampler not in SAMPLERS:
        raise ValueError(f"--sampler {sampler!r} is not one of {sorted(SAMPLERS)}")
    if n < 1 or steps < 1 or batch_size < 1:
        raise ValueError("--n, --steps and --batch-size must be at least 1")
    if negative_prompts and len(negative_prompts) not in (1, len(prompts)):
        raise ValueError(f"--negative-prompt: give one, or one per prompt ({len(prompts)}), not {len(negative_prompts)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU visible")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not one of {sorted(DTYPES)}")
    negatives = (negative_prompts * len(prompts) if len(negative_prompts or []) == 1 else negative_prompts) or [""] * len(prompts)
    signer = prepare_signer(provenance, CLI_NAMES)  # before the model load: missing signing material fails at once

    model = load_model(model_path, ema=ema, device=device, config=config if not is_pipeline_folder(model_path) else None)
    marker = Marker.for_model(provenance, model, model_path, signer)  # the id of the weights as stored, before a cast
    model.to(dtype=DTYPES[dtype])
    height, width = _check_size(model, height, width)
    settings = {
        "model": os.path.abspath(model_path), "ema": ema, "prompts": list(prompts), "negative_prompts": negatives,
        "steps": steps, "guidance": guidance, "sampler": sampler, "height": height, "width": width, "dtype": dtype,
        "provenance": marker.record(),
    }  # n and seed are left out: changing them only adds or picks other files
    _check_settings(out_dir, settings, overwrite)
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, SETTINGS_FILE), settings)

    jobs = [(j, seed + i) for j in range(len(prompts)) for i in range(n)]
    todo = [(j, s) for j, s in jobs if overwrite or not os.path.isfile(image_path(out_dir, j, s))]
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="generating", unit="img") as progress:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            images = model.generate(
                [prompts[j] for j, _ in batch], negative_prompts=[negatives[j] for j, _ in batch],
                height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
                sampler=sampler, seed=[s for _, s in batch],
            )
            for (j, s), image in zip(batch, images):
                # written to a temporary name and renamed: a killed run never leaves a half-written PNG
                marker.save(_to_pil(image), image_path(out_dir, j, s), prompt=prompts[j], negative_prompt=negatives[j], seed=s)
            progress.update(len(batch))
    rows = [[image_path(out_dir, j, seed + i) for i in range(n)] for j in range(len(prompts))]
    write_grid(rows, os.path.join(out_dir, GRID_FILE), marker)
    return [p for row in rows for p in row]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.generate", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="exported pipeline folder (diffusion.export) or a Composer checkpoint .pt")
    parser.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    parser.add_argument("--negative-prompt", action="append", help="one for all prompts, or one per --prompt")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt (seeds seed..seed+n-1)")
    parser.add_argument("--steps", type=int, default=30, help="sampler steps")
    parser.add_argument("--guidance", type=float, default=7.0, help="classifier-free guidance scale (<=1: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="ddim")
    parser.add_argument("--height", type=int, help="pixels (default: the model's training resolution)")
    parser.add_argument("--width", type=int)
    parser.add_argument("--out", default="samples", help="folder for the PNGs, grid.png and generate.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:i]")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--batch-size", type=int, default=8, help="images per sampling batch")
    parser.add_argument("--no-ema", action="store_true", help="checkpoint: use the online weights (default: EMA if present)")
    parser.add_argument("--config", help="checkpoint: training yaml (default: train_config.yaml beside it)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate into an --out made with other settings")
    add_cli_flags(parser)
    args = parser.parse_args(argv)
    try:
        paths = generate_images(
            args.model, args.prompt, args.out, negative_prompts=args.negative_prompt, n=args.n, steps=args.steps,
            guidance=args.guidance, seed=args.seed, sampler=args.sampler, height=args.height, width=args.width,
            device=args.device, ema=False if args.no_ema else None, config=args.config, dtype=args.dtype,
            batch_size=args.batch_size, overwrite=args.overwrite, provenance=config_from_args(args),
        )
    except (ModelLoadError, FileNotFoundError, FileExistsError, ValueError, KeyError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    print(f"{len(paths)} images and {GRID_FILE} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generates the images an eval scores: one PNG per prompt per guidance scale, `<out_dir>/scale_<g>/<id>.png`.

    python -m eval.generate_images MODEL PROMPTS OUT_DIR --guidance-scales 1.5 2 3 4 5 6 7 8 [--steps 50 ...]
    composer -n 8 -m eval.generate_images ...            (each GPU generates its share)

MODEL: a Composer checkpoint (EMA weights unless --no-ema; train_config.yaml beside it) or an exported
diffusers folder, loaded by diffusion.inference.load_model. PROMPTS: a JSONL file of {"id", "prompt"} (the
FID job's prompts_file) or an MDS folder with a caption column and an id column (data_prep.coco's output,
or a captioned training set for the replication audit).

Reproducible and shardable: the prompt at global index i of the prompt list starts from noise seeded with
seed + i, whatever rank or batch it lands in, and with the same noise at every guidance scale, so scales
differ only by guidance. Each rank (RANK / WORLD_SIZE) takes a contiguous share of the prompts. A rerun skips
PNGs that exist (each is written to a temporary name and renamed, so none is ever half written), so an
interrupted run resumes; a generation.json in each scale folder makes a rerun with other settings fail
instead of mixing images of two models in one folder.

Every image carries provenance (diffusion.provenance) unless `provenance.enabled: false` / --no-provenance:
the invisible watermark with the model id, plus a signed C2PA manifest when signing material is configured.
The watermark changes pixels by ~43 dB PSNR; benchmarks/watermark_eval_effect.py measures what that does to
FID / CLIP score.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Union

import torch
from tqdm import tqdm

from data_prep.json_records import changed_settings, read_settings, write_json_atomic
from data_prep.shards import get_rank_world, read_columns, shard_for_rank
from diffusion.provenance import (CLI_NAMES, YAML_NAMES, Marker, ProvenanceConfig, add_cli_flags, config_from_args,
                                  prepare_signer)
from eval.config import resolve_device
from eval.images import IMAGE_EXTENSIONS, image_id
from eval.results import load_prompts

SETTINGS_FILE = "generation.json"
ID_COLUMNS = ("image_id", "photo_id")  # data_prep.coco's and the training sets' ids, tried in this order
# A barrier that waits this long: after a resume, one rank may have nothing left while others work for hours.
RANK_WAIT = datetime.timedelta(hours=72)

Prompts = Union[str, Sequence]


@dataclass
class GenerationSettings:
    """The generation fields an eval job config shares (FidClipEvalConfig, ReplicationEvalConfig)."""

    model: Optional[str] = None
    """Composer checkpoint (.pt, its train_config.yaml beside it) or exported diffusers folder. Set: the job first
    generates one image per prompt per guidance scale, then scores those; unset: it scores given folders."""
    generation_dir: Optional[str] = None
    """Where the generated images go (scale_<g>/<id>.png); default <out_dir>/generated. Resumable."""
    guidance_scales: List[float] = field(default_factory=lambda: [1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    """Classifier-free guidance scales to generate at (1 = no guidance)."""
    num_inference_steps: int = 50
    """Sampler steps per image."""
    sampler: str = "ddim"
    """"ddim", "euler" or "dpm" (diffusion.models.samplers)."""
    resolution: Optional[int] = None
    """Side of the square generated images; None: the model's native size."""
    ema: bool = True
    """Composer checkpoints: sample with the EMA weights (False: the online weights)."""
    generation_seed: int = 0
    """Prompt i (global index) is sampled from noise seeded with generation_seed + i."""
    max_prompts: Optional[int] = None
    """Generate for the first N prompts only (a quicker, noisier eval); None: all."""
    generation_batch_size: int = 8
    """Prompts per sampling batch (each guided batch runs the UNet on twice as many)."""
    negative_prompt: Optional[str] = None
    """Replaces the empty caption as the unconditional branch of guidance."""
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)
    """Watermark (and C2PA manifest, when sign_cert/sign_key are set) on every generated image; see
    diffusion/provenance. `provenance.enabled: false` leaves eval images unmarked."""


def scale_dir(out_dir: str, guidance_scale: float) -> str:
    return os.path.join(out_dir, f"scale_{float(guidance_scale):g}")


def load_prompt_list(source: Prompts, caption_key: str = "caption", id_key: Optional[str] = None,
                     max_prompts: Optional[int] = None) -> list[tuple[str, str]]:
    """[(id, prompt)] in source order from a JSONL prompts file, an MDS folder, a {id: prompt} dict or pairs."""
    if isinstance(source, str):
        if os.path.isdir(source):
            pairs = _mds_prompts(source, caption_key, id_key, max_prompts)
        elif os.path.isfile(source):
            pairs = list(load_prompts(source).items())
        else:
            raise FileNotFoundError(f"no prompts at {source} (a JSONL file of {{\"id\", \"prompt\"}} or an MDS folder)")
    elif isinstance(source, dict):
        pairs = list(source.items())
    else:
        pairs = list(source)
    pairs = [(str(i), str(p)) for i, p in pairs][:max_prompts]
    seen = set()
    for i, _ in pairs:
        if i in seen:
            raise ValueError(f"{_name(source)}: prompt id {i!r} appears twice (ids name the image files)")
        if not i or i in (".", "..") or "/" in i or os.sep in i:
            raise ValueError(f"{_name(source)}: prompt id {i!r} cannot be a file name")
        seen.add(i)
    if not pairs:
        raise ValueError(f"{_name(source)}: no prompts")
    return pairs


def _name(source) -> str:
    return source if isinstance(source, str) else "prompts"


def _mds_prompts(folder: str, caption_key: str, id_key: Optional[str], max_prompts: Optional[int]):
    from data_prep.shards import iter_mds

    columns = read_columns(folder)
    if id_key is None:
        id_key = next((c for c in ID_COLUMNS if c in columns), None)
        if id_key is None:
            raise KeyError(f"{folder}: no id column ({' or '.join(ID_COLUMNS)}) among {sorted(columns)}; name one")
    for key, what in ((caption_key, "caption"), (id_key, "id")):
        if key not in columns:
            raise KeyError(f"{folder}: no {what} column {key!r} among {sorted(columns)}")
    pairs = []
    # Only the two text columns are decoded: images are never read.
    for key, sample in iter_mds(folder, key_column=id_key, columns=[caption_key]):
        pairs.append((key, sample[caption_key]))
        if max_prompts is not None and len(pairs) >= max_prompts:
            break
    return pairs


def _settings(model_path, guidance_scale, num_inference_steps, sampler, height, width, seed, ema, negative_prompt,
              provenance: ProvenanceConfig):
    model = model_path if "://" in str(model_path) else os.path.abspath(model_path)
    return {"model": model, "ema": bool(ema), "guidance_scale": float(guidance_scale),
            "num_inference_steps": int(num_inference_steps), "sampler": sampler, "height": height, "width": width,
            "seed": int(seed), "negative_prompt": negative_prompt,
            "provenance": {"enabled": provenance.enabled, "record_prompt": provenance.record_prompt,
                           "record_seed": provenance.record_seed}}


def _claim_folder(folder: str, settings: dict, rank: int) -> None:
    """Records the settings a folder's images come from, or refuses a folder holding another run's images."""
    path = os.path.join(folder, SETTINGS_FILE)
    recorded = read_settings(path)
    if recorded is not None:
        changed = changed_settings(recorded, settings)
        if changed:
            detail = ", ".join(f"{k}: {recorded.get(k)!r} there, {settings.get(k)!r} now" for k in changed)
            raise ValueError(f"{folder} holds images generated with other settings ({detail}); "
                             f"use another folder or empty it")
        return
    existing = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)]
    if existing:
        raise ValueError(f"{folder} holds {len(existing)} images of unknown origin (no {SETTINGS_FILE}), "
                         f"e.g. {existing[0]}; use another folder or empty it")
    write_json_atomic(path, settings, tmp_suffix=f".rank{rank}.tmp")  # every rank writes the same content


def init_ranks() -> None:
    """Joins the ranks' process group (gloo, long timeout) when launched with several; a no-op for one process."""
    rank, world = get_rank_world()
    if world == 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise RuntimeError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set: launch with composer or torchrun")
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=RANK_WAIT)


def wait_for_ranks() -> None:
    if get_rank_world()[1] > 1:
        import torch.distributed as dist

        init_ranks()
        dist.barrier()


def generate_images(
    model_path: str,
    prompts: Prompts,
    out_dir: str,
    guidance_scales: Sequence[float],
    num_inference_steps: int = 50,
    sampler: str = "ddim",
    height: Optional[int] = None,
    width: Optional[int] = None,
    batch_size: int = 8,
    seed: int = 0,
    ema: bool = True,
    negative_prompt: Optional[str] = None,
    device: str = "auto",
    caption_key: str = "caption",
    id_key: Optional[str] = None,
    max_prompts: Optional[int] = None,
    provenance: Optional[ProvenanceConfig] = None,
    provenance_names: tuple = YAML_NAMES,
) -> dict[float, str]:
    """{guidance scale: folder} once every prompt has its image in every folder. `provenance`: what each image
    carries (default: the watermark; C2PA when signing material is set); `provenance_names`: how the user spells
    its signing settings, for error lines.

    Collective under a multi-rank launch: every rank calls it, generates its share, and all return together
    (after checking each folder holds exactly the expected images).
    """
    if not guidance_scales:
        raise ValueError("guidance_scales: give at least one")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    from diffusion.models.samplers import SAMPLERS

    if sampler not in SAMPLERS:  # checked before loading anything
        raise ValueError(f"sampler {sampler!r} is not one of {sorted(SAMPLERS)}")
    provenance = provenance or ProvenanceConfig()
    signer = prepare_signer(provenance, provenance_names)  # before any slow work: bad signing material fails first
    init_ranks()
    rank, world = get_rank_world()
    pairs = load_prompt_list(prompts, caption_key, id_key, max_prompts)
    indexed = shard_for_rank(list(enumerate(pairs)), rank, world)
    folders = {float(g): scale_dir(out_dir, g) for g in guidance_scales}

    todo = []  # (scale, [(global index, id, prompt)]) batches still to generate
    for scale, folder in folders.items():
        os.makedirs(folder, exist_ok=True)
        _claim_folder(folder, _settings(model_path, scale, num_inference_steps, sampler, height, width, seed, ema,
                                        negative_prompt, provenance), rank)
        missing = [(i, pid, p) for i, (pid, p) in indexed if not os.path.exists(os.path.join(folder, f"{pid}.png"))]
        todo += [(scale, missing[k:k + batch_size]) for k in range(0, len(missing), batch_size)]

    if todo:
        torch_device = resolve_device(device)
        from diffusion.inference import load_model

        model = load_model(model_path, ema=ema, device=str(torch_device)).eval()
        marker = Marker.for_model(provenance, model, model_path, signer)
        total = sum(len(batch) for _, batch in todo)
        desc = "generating" + (f" (rank {rank}/{world})" if world > 1 else "")
        with tqdm(total=total, desc=desc, unit="img") as bar:
            for scale, batch in todo:
                # bf16 autocast on GPU only: CPU autocast would just be slower here.
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch_device.type == "cuda"):
                    images = model.generate(
                        [p for _, _, p in batch],
                        negative_prompts=[negative_prompt] * len(batch) if negative_prompt else None,
                        height=height, width=width, num_inference_steps=num_inference_steps,
                        guidance_scale=scale, sampler=sampler, seed=[seed + i for i, _, _ in batch],
                    )
                pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                for (i, pid, prompt), array in zip(batch, pixels):
                    marker.save(array, os.path.join(folders[scale], f"{pid}.png"), prompt=prompt,
                                negative_prompt=negative_prompt, seed=seed + i)
                bar.update(len(batch))

    wait_for_ranks()
    expected = {pid for pid, _ in pairs}
    for folder in folders.values():
        found = {image_id(n) for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)}
        if found != expected:
            extra, lacking = sorted(found - expected), sorted(expected - found)
            detail = f"{len(extra)} not in the prompt list, e.g. {extra[0]}" if extra else f"{len(lacking)} missing, e.g. {lacking[0]}"
            raise ValueError(f"{folder}: images do not match the {len(expected)} prompts ({detail}); "
                             f"a smaller max_prompts than a previous run? use another folder")
    return folders


def generate_for_job(cfg: GenerationSettings, prompts: Prompts, out_dir: str, device: str, **prompt_keys) -> dict[float, str]:
    """Runs generate_images with a job config's generation fields; images under generation_dir or <out_dir>/generated."""
    return generate_images(
        cfg.model, prompts, cfg.generation_dir or os.path.join(out_dir, "generated"), list(cfg.guidance_scales),
        num_inference_steps=cfg.num_inference_steps, sampler=cfg.sampler, height=cfg.resolution, width=cfg.resolution,
        batch_size=cfg.generation_batch_size, seed=cfg.generation_seed, ema=cfg.ema,
        negative_prompt=cfg.negative_prompt, device=device, max_prompts=cfg.max_prompts, provenance=cfg.provenance,
        **prompt_keys,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.generate_images", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="Composer checkpoint (.pt) or exported diffusers folder")
    parser.add_argument("prompts", help="JSONL of {\"id\", \"prompt\"} or an MDS folder with caption + id columns")
    parser.add_argument("out_dir", help="images go to OUT_DIR/scale_<g>/<id>.png")
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=[7.5])
    parser.add_argument("--steps", type=int, default=50, help="sampler steps")
    parser.add_argument("--sampler", default="ddim", help="ddim | euler | dpm")
    parser.add_argument("--resolution", type=int, default=None, help="square side; default the model's")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    parser.add_argument("--no-ema", action="store_true", help="sample with the online weights, not EMA")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--max-prompts", type=int, default=None)
    parser.add_argument("--caption-key", default="caption", help="MDS prompts: the caption column")
    parser.add_argument("--id-key", default=None, help=f"MDS prompts: the id column (default {' or '.join(ID_COLUMNS)})")
    parser.add_argument("--device", default="auto")
    add_cli_flags(parser)
    args = parser.parse_args(argv)
    try:
        folders = generate_images(
            args.model, args.prompts, args.out_dir, args.guidance_scales, num_inference_steps=args.steps,
            sampler=args.sampler, height=args.resolution, width=args.resolution, batch_size=args.batch_size,
            seed=args.seed, ema=not args.no_ema, negative_prompt=args.negative_prompt, device=args.device,
            caption_key=args.caption_key, id_key=args.id_key, max_prompts=args.max_prompts,
            provenance=config_from_args(args), provenance_names=CLI_NAMES,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for scale, folder in folders.items():
        print(f"w={scale:g}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

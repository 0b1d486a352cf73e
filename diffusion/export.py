"""Exports a training checkpoint as a diffusers pipeline folder with a model card and attribution.

    python -m diffusion.export CHECKPOINT OUTDIR [--no-ema] [--dtype fp16|bf16|fp32] [--overwrite]
                               [--config train_config.yaml] [--shards DIR ...] [--eval-results JSON ...]

OUTDIR gets unet/ vae/ text_encoder/ tokenizer/ scheduler/ model_index.json (safetensors weights), loadable
offline with `StableDiffusionPipeline.from_pretrained(OUTDIR)` -- or, for the SDXL layouts (`sdxl`, two text
encoders and micro-conditioning), also text_encoder_2/ tokenizer_2/, loadable with
`StableDiffusionXLPipeline.from_pretrained(OUTDIR)` -- plus:
  README.md                 model card: architecture, data split (C / NC) decided from the licenses counted
                            in the training shards, images per license, training steps, eval results
  ATTRIBUTION.tsv / .md     one row per training image (data_prep.attribution), or ATTRIBUTION.txt pointing
                            at a sibling folder when there are more than --attribution-max-rows images
  attribution_counts.json   images per license
  train_config.yaml         the resolved training config
  commoncanvas_export.json  which weights (ema | online), dtype, source checkpoint and its step
  provenance.json           the watermark's model id (diffusion.provenance) and what generated images carry

The scheduler saved is DDIM (the project's default sampler) built from the training noise schedule, so the
prediction type, betas and timestep spacing match training. `sd2` and `sdxl_size` export to the plain
StableDiffusionPipeline: `sdxl_size` has SDXL's block layout but no micro-conditioning (no added size/crop
embeddings) and one 1024-d text encoder, which is exactly what StableDiffusionPipeline drives. `sdxl`
exports to StableDiffusionXLPipeline with `force_zeros_for_empty_prompt=False` (the unconditional branch is
the encoded empty caption, as classifier-free-guidance dropout trained it, not zeros) and diffusers' own
invisible watermark off (it has nothing to say about this model: see diffusion.provenance).

The folder is written under OUTDIR.partial and renamed into place at the end, so a crash never leaves a
half-written OUTDIR. --overwrite replaces only a folder that is itself an exported pipeline.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys

import torch
from tqdm import tqdm

from diffusion.inference import EXPORT_RECORD, LoadedCheckpoint, ModelLoadError, load_checkpoint
from diffusion.model_card import data_split, load_eval_results, write_model_card
from diffusion.provenance import PROVENANCE_FILE, export_record

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_ATTRIBUTION_MAX_ROWS = 1_000_000  # ~200 MB of TSV; beyond that it lives beside the model, not in it
SAMPLER = "ddim"


def check_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse an existing OUTDIR unless --overwrite, and even then only replace a previous export."""
    if not os.path.exists(out_dir) or (os.path.isdir(out_dir) and not os.listdir(out_dir)):
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir}: output folder exists; pass --overwrite to replace it")
    if not os.path.isfile(os.path.join(out_dir, "model_index.json")):
        raise FileExistsError(f"{out_dir}: exists and is not an exported pipeline (no model_index.json); refusing to replace it")


def shards_from_config(cfg) -> list[str]:
    """The local MDS folders the training read: dataset.local or each dataset.streams[*].local."""
    dataset = cfg.dataset
    if dataset.streams:
        paths = [s.get("local") or s.get("remote") for s in dataset.streams]
    else:
        paths = [dataset.local or dataset.remote]
    local = [p for p in paths if p and "://" not in p]
    if not local or len(local) != len(paths):
        raise FileNotFoundError(
            f"training shards are not all local ({paths}); pass --shards with local copies for the attribution list"
        )
    return local


def _check_shards(shards: list[str]) -> None:
    for shard_dir in shards:
        if not os.path.isfile(os.path.join(shard_dir, "index.json")):
            raise FileNotFoundError(f"{shard_dir}: no MDS index.json (training shards for the attribution list)")


def pipeline_class_name(model) -> str:
    from diffusion.models.sdxl import StableDiffusionXL

    return "StableDiffusionXLPipeline" if isinstance(model, StableDiffusionXL) else "StableDiffusionPipeline"


def build_pipeline(loaded: LoadedCheckpoint):
    import diffusers

    from diffusion.models.samplers import inference_scheduler

    model = loaded.model
    scheduler = inference_scheduler(SAMPLER, model.noise_scheduler.config)
    if pipeline_class_name(model) == "StableDiffusionXLPipeline":
        return diffusers.StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
            tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=model.unet, scheduler=scheduler,
            force_zeros_for_empty_prompt=False, add_watermarker=False,
        )
    if model.unet.config.get("addition_embed_type"):
        raise ModelLoadError(
            f"{loaded.path}: UNet uses addition_embed_type={model.unet.config.addition_embed_type!r} "
            "(micro-conditioning), which StableDiffusionPipeline cannot drive"
        )
    return diffusers.StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def architecture(loaded: LoadedCheckpoint) -> dict:
    model, cfg = loaded.model, loaded.cfg
    unet, noise = model.unet.config, model.noise_scheduler.config
    factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    resolution = int(cfg.dataset.resolution)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    layout = str(cfg.model.unet) + (" (with model.unet_overrides)" if cfg.model.unet_overrides else "")
    schedule = f"{noise.beta_schedule} betas {noise.beta_start}-{noise.beta_end}, {noise.num_train_timesteps} steps"
    if noise.get("rescale_betas_zero_snr"):
        schedule += ", rescaled to zero terminal SNR"
    note = None
    pipeline = pipeline_class_name(model)
    text_params = count(model.text_encoder)
    if str(cfg.model.unet) == "sdxl_size":
        note = ("SDXL-size UNet without micro-conditioning and with one text encoder: it loads with "
                "StableDiffusionPipeline, not StableDiffusionXLPipeline.")
    if pipeline == "StableDiffusionXLPipeline":
        text_params += count(model.text_encoder_2)
        note = (f"SDXL conditioning: two text encoders (hidden states concatenated to {unet.cross_attention_dim} "
                "channels, plus the second encoder's pooled embedding) and size/crop micro-conditioning. "
                "Loads with StableDiffusionXLPipeline; its defaults (original_size = target_size = the requested "
                f"size, crops_coords_top_left = (0, 0)) match how it was sampled in training; native {resolution} px.")
    return {
        "unet_layout": layout,
        "down_blocks": list(unet.down_block_types),
        "block_out_channels": list(unet.block_out_channels),
        "layers_per_block": unet.layers_per_block,
        "transformer_layers": unet.get("transformer_layers_per_block", 1),
        "cross_attention_dim": unet.cross_attention_dim,
        "params": {"unet": count(model.unet), "vae": count(model.vae), "text_encoder": text_params},
        "pipeline_class": pipeline,
        "resolution": resolution,
        "latent_size": resolution // factor,
        "vae_factor": factor,
        "noise_schedule": schedule,
        "prediction_type": noise.prediction_type,
        "scheduler": f"{SAMPLER.upper()}Scheduler",
        "note": note,
    }


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_attribution_files(shards: list[str], staging: str, out_dir: str, max_rows: int) -> tuple[dict, str]:
    """Attribution inside the model folder, or (over max_rows) in OUTDIR-attribution/ with a pointer file.
    Returns (counts, the card's sentence about where the list is)."""
    from data_prep.attribution import COUNTS_FILE, TSV_FILE, write_attribution
    from data_prep.shards import count_samples

    total = sum(count_samples(s) for s in shards)  # an upper bound: duplicates across folders count once later
    if total <= max_rows:
        counts = write_attribution(shards, staging)
        return counts, ("The full attribution list (title, author, source page, license of every training image) "
                        "is in `ATTRIBUTION.tsv` and `ATTRIBUTION.md` in this folder.")
    outside = out_dir.rstrip("/\\") + "-attribution"
    counts = write_attribution(shards, outside)
    shutil.copy(os.path.join(outside, COUNTS_FILE), os.path.join(staging, COUNTS_FILE))
    tsv = os.path.join(outside, TSV_FILE)
    with open(os.path.join(staging, "ATTRIBUTION.txt"), "w") as f:
        f.write(f"The attribution list of the {counts['images']} training images is too large to ship inside the "
                f"model folder (over {max_rows} rows).\nIt was written to: {os.path.abspath(outside)}\n"
                f"{TSV_FILE} sha256: {_sha256(tsv)}\nPublish it next to this model and keep this file to verify it.\n")
    return counts, (f"The attribution list has {counts['images']:,} rows, too many to ship inside the model folder: "
                    f"`ATTRIBUTION.txt` says where it was written and gives its sha256. It must be published with the model.")


def _write_folder(loaded: LoadedCheckpoint, staging: str, out_dir: str, dtype: str, shards: list[str],
                  evals: list, attribution_max_rows: int, allow_uncleared_licenses: bool, steps: tqdm) -> None:
    steps.set_postfix_str("counting licenses")
    counts, attribution_line = write_attribution_files(shards, staging, out_dir, attribution_max_rows)
    split = data_split(counts["per_license"])
    if split.uncleared and not allow_uncleared_licenses:
        raise ValueError(f"training shards {shards} hold images under licenses no split admits "
                         f"({split.uncleared}); pass --allow-uncleared-licenses to export anyway")
    steps.update()

    steps.set_postfix_str("writing weights")
    arch = architecture(loaded)
    pipeline = build_pipeline(loaded)
    if dtype != "fp32":  # the model is fp32; casting to fp32 only makes diffusers warn
        pipeline.to(dtype=DTYPES[dtype])
    pipeline.save_pretrained(staging, safe_serialization=True)
    shutil.copy(loaded.config_path, os.path.join(staging, "train_config.yaml"))
    steps.update()

    steps.set_postfix_str("model card")
    ts, cfg = loaded.timestamp, loaded.cfg
    record = {
        "weights": loaded.weights, "dtype": dtype, "checkpoint": os.path.abspath(loaded.path),
        "batches": int(ts.get("batch", 0)), "samples": int(ts.get("sample", 0)), "epochs": int(ts.get("epoch", 0)),
        "split": split.name, "per_license": counts["per_license"], "shards": [os.path.abspath(s) for s in shards],
    }
    with open(os.path.join(staging, EXPORT_RECORD), "w") as f:
        json.dump(record, f, indent=2)
    # the id of the weights as saved (after any fp16/bf16 cast), which is what loading the folder gives back
    provenance = export_record(pipeline.unet, os.path.basename(out_dir), split.name, split.summary)
    with open(os.path.join(staging, PROVENANCE_FILE), "w") as f:
        json.dump(provenance, f, indent=2)
    write_model_card(staging, {
        "name": os.path.basename(out_dir), "split": split, "per_license": counts["per_license"],
        "images": counts["images"], "architecture": arch, "weights": loaded.weights, "dtype": dtype,
        "training": {
            "batches": record["batches"], "samples": record["samples"], "epochs": record["epochs"],
            "global_batch": cfg.trainer.train_batch_size, "lr": cfg.optimizer.lr,
            "checkpoint": os.path.basename(loaded.path), "run_name": cfg.run_name,
        },
        "attribution": attribution_line, "eval_results": evals, "provenance": provenance,
    })
    steps.update()


def export_pipeline(
    checkpoint: str,
    out_dir: str,
    ema: bool = True,
    dtype: str = "fp32",
    overwrite: bool = False,
    config: str | None = None,
    shards: list[str] | None = None,
    eval_results: list[str] | None = None,
    attribution_max_rows: int = DEFAULT_ATTRIBUTION_MAX_ROWS,
    allow_uncleared_licenses: bool = False,
) -> str:
    """Writes the pipeline folder (see module doc) and returns its path."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint file")
    out_dir = os.path.abspath(out_dir)
    check_out_dir(out_dir, overwrite)
    evals = load_eval_results(eval_results or [])  # read early: a typo should not cost a model load
    staging = out_dir + ".partial"
    with tqdm(total=4, desc="export", unit="step") as steps:
        steps.set_postfix_str("loading checkpoint")
        loaded = load_checkpoint(checkpoint, ema=ema, config=config)
        shards = list(shards) if shards else shards_from_config(loaded.cfg)
        _check_shards(shards)
        steps.update()
        if os.path.exists(staging):
            shutil.rmtree(staging)  # a crashed earlier export; only ever written by us
        os.makedirs(staging)
        try:
            _write_folder(loaded, staging, out_dir, dtype, shards, evals, attribution_max_rows,
                          allow_uncleared_licenses, steps)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)  # check_out_dir allowed it: empty, or a previous export with --overwrite
    os.replace(staging, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.export", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="Composer checkpoint .pt (train_config.yaml is read from beside it)")
    parser.add_argument("out_dir", help="pipeline folder to write (must not exist unless --overwrite)")
    parser.add_argument("--no-ema", action="store_true", help="export the online weights instead of the EMA ones")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the saved weights")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it is a previous export")
    parser.add_argument("--config", help="training yaml to rebuild the model from (default: beside the checkpoint)")
    parser.add_argument("--shards", nargs="+", help="training MDS folders for the attribution list and license "
                        "counts (default: dataset.local / dataset.streams[*].local of the training config)")
    parser.add_argument("--eval-results", nargs="+", default=[], help="eval results JSON(s) to put in the model card")
    parser.add_argument("--attribution-max-rows", type=int, default=DEFAULT_ATTRIBUTION_MAX_ROWS,
                        help="above this many images the attribution list goes to OUT_DIR-attribution/ and a "
                        "pointer file stays in the folder")
    parser.add_argument("--allow-uncleared-licenses", action="store_true",
                        help="export even if some training images are under licenses no split admits")
    args = parser.parse_args(argv)
    try:
        out = export_pipeline(
            args.checkpoint, args.out_dir, ema=not args.no_ema, dtype=args.dtype, overwrite=args.overwrite,
            config=args.config, shards=args.shards, eval_results=args.eval_results,
            attribution_max_rows=args.attribution_max_rows, allow_uncleared_licenses=args.allow_uncleared_licenses,
        )
    except (ModelLoadError, FileNotFoundError, FileExistsError, ValueError, KeyError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    print(f"exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

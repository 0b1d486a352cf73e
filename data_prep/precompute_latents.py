"""Precompute VAE image latents and text-encoder caption latents into new MDS shards.

    python -m data_prep.precompute_latents IN_DIR OUT_DIR --vae NAME_OR_PATH --text-encoder NAME_OR_PATH \
        --tokenizer NAME_OR_PATH [--resolutions 256 512] [--caption-key blip2_caption] [--dtype fp16]

Every input column is copied (JPEG bytes unchanged, see data_prep.stage_loop; `--drop-image` leaves the
image out) and these are added, as diffusion.datasets.text_image reads them with `precomputed_latents`:

  latents_{res}    for each resolution: the image's short side resized to `res` (bicubic, antialiased),
                   center-cropped to res x res, scaled to [-1, 1] (the same transform the training dataset
                   applies to pixels), then  vae.encode(x).latent_dist.mean * vae.config.scaling_factor.
                   The MEAN, not a sample: it is deterministic (a re-run or another rank gives the same
                   bytes) and the usual choice for precomputed latents; the VAE's posterior std is tiny
                   next to the diffusion noise added in training. Scaled ONCE here; diffusion/ never
                   rescales a stored latent. Shape (latent_channels, res/f, res/f).
  caption_latents  the text encoder's last hidden state for the `--caption-key` column, tokenized exactly
                   as StableDiffusion.tokenize does (padding to model_max_length, truncation).
                   Shape (model_max_length, hidden_size).

With `--text-encoder-2/--tokenizer-2` (SDXL, for `model.unet: sdxl`), caption_latents are instead both
encoders' penultimate hidden states concatenated (diffusion.models.sdxl.encode_sdxl_text), and these are added:
  pooled_caption_latents   the second encoder's projected text embedding, (projection_dim,)
  original_size            the stored image's (height, width), int32
  crop_top_left_{res}      where the square crop of latents_{res} sits in the resized image, (top, left) int32
and OUT_DIR/empty_pooled_caption_latents.npy (model.empty_pooled_caption_latents).

With `--extra-caption-keys title description` (multi-caption training, the paper's synthetic-vs-alt-text
ablation), each listed column's text gets its own caption_latents_{key} (and for SDXL
pooled_caption_latents_{key}), encoded the same way, and has_{key} (int 0/1); a sample whose text there is
empty has has_{key} = 0 and a 1-element placeholder array, and training falls back to the main caption
(dataset.caption_selection_probs).

Arrays are stored as `ndarray` columns in float16 (default) or float32. OUT_DIR/empty_caption_latents.npy
holds the empty caption's latents, in the same dtype, for classifier-free-guidance dropout
(model.empty_caption_latents in a training yaml), so dropped captions match stored ones exactly.

Rank-sharded (RANK/WORLD_SIZE, one GPU per rank via LOCAL_RANK) and resumable: re-run the same command
after any interruption. The flags that decide the stored values and the input's fingerprint are kept in
OUT_DIR/fingerprint.json (data_prep.fingerprint), and what the loaded models say of themselves (scaling factor,
tokenizer length) in OUT_DIR/latents_settings.json; a re-run with a different input, flags or models is
refused rather than mixing two kinds of latents in one dataset (--overwrite starts over).

With `--aspect-buckets` (diffusion.datasets.buckets), each image is instead resized to cover the SDXL-style
bucket closest to its own aspect ratio at each resolution (sides multiples of `--bucket-multiple`) and
centre-cropped to it, so latents_{res} is (C, h/f, w/f); original_size and crop_top_left_{res} are stored for
every model, and the samples are written into one sub-dataset per bucket, OUT_DIR/bucket_<h>x<w>[_<h>x<w>...]/
(sizes in --resolutions order), with OUT_DIR/buckets.json listing them and OUT_DIR/index.json covering all.
Train on it with dataset.aspect_buckets: true. Within a batch the VAE runs once per bucket present, so its
calls are smaller than --batch-size (a larger --batch-size gives each bucket more images per call).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from data_prep import schema
from data_prep.json_records import changed_settings, read_settings, write_json_atomic
from data_prep.shards import get_rank_world, iter_mds, read_columns
from data_prep.stage_loop import (StageError, add_stage_loop_args, default_device, prepare_stage_output,
                                  run_batched_stage, run_stage_cli)
from diffusion.datasets.buckets import BUCKET_PREFIX, BUCKETS_FILE, bucket_name, write_buckets_file

log = logging.getLogger(__name__)

STAGE = "precompute_latents"
SETTINGS_FILE = "latents_settings.json"
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NUMPY_DTYPES = {"fp32": np.float32, "fp16": np.float16}  # numpy has no bfloat16: not a storage option
# Settings that decide the stored arrays (a resume may change batch size, workers, device).
FINGERPRINT_FLAGS = ("vae", "vae_subfolder", "text_encoder", "text_encoder_subfolder", "tokenizer",
                     "tokenizer_subfolder", "resolutions", "caption_key", "dtype", "compute_dtype", "drop_image",
                     "text_encoder_2", "text_encoder_2_subfolder", "tokenizer_2", "tokenizer_2_subfolder",
                     "extra_caption_keys", "aspect_buckets", "bucket_multiple")


def pixel_transform(resolution: int, aspect_buckets: bool = False, bucket_multiple: int = 64):
    """PIL RGB image -> ((3, h, w) float tensor in [-1, 1], crop top-left): the training dataset's own
    centre-crop transform (diffusion.datasets.text_image.SquareCrop), so precomputed and on-the-fly agree;
    or with aspect_buckets the image's bucket (diffusion.datasets.buckets.BucketCrop)."""
    if aspect_buckets:
        from diffusion.datasets.buckets import BucketCrop

        return BucketCrop(resolution, bucket_multiple)
    from diffusion.datasets.text_image import SquareCrop

    return SquareCrop(resolution, random_crop=False)


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids exactly as StableDiffusion.tokenize makes them (the model the latents are for)."""
    return tokenizer(
        list(captions), padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids


@dataclass
class LatentEncoder:
    """The frozen VAE and text encoder on one device, computing in `compute_dtype`."""

    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    device: torch.device
    compute_dtype: torch.dtype = torch.float32
    text_encoder_2: torch.nn.Module | None = None  # SDXL's second encoder (CLIPTextModelWithProjection)
    tokenizer_2: object = None

    def __post_init__(self):
        for model in (self.vae, self.text_encoder, self.text_encoder_2):
            if model is None:
                continue
            model.requires_grad_(False)
            model.eval()
            model.to(self.device)
            if self.compute_dtype != torch.float32:
                model.to(dtype=self.compute_dtype)
        self.scaling_factor = float(self.vae.config.scaling_factor)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, C, H/f, W/f) float32: posterior mean times the scaling factor."""
        posterior = self.vae.encode(pixels.to(self.device, self.compute_dtype)).latent_dist
        return posterior.mean.float() * self.scaling_factor

    @torch.inference_mode()
    def encode_captions(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """{caption_latents: (N, max_length, hidden)} float32 (the text encoder's last hidden state), or for
        SDXL the concatenated penultimate states plus {pooled_caption_latents: (N, projection_dim)}."""
        ids = tokenize(self.tokenizer, captions).to(self.device)
        if self.text_encoder_2 is None:
            return {schema.CAPTION_LATENTS: self.text_encoder(ids)[0].float()}
        from diffusion.models.sdxl import encode_sdxl_text

        hidden, pooled = encode_sdxl_text(self.text_encoder, self.text_encoder_2, ids,
                                          tokenize(self.tokenizer_2, captions).to(self.device))
        return {schema.CAPTION_LATENTS: hidden.float(), schema.POOLED_CAPTION_LATENTS: pooled.float()}


def load_encoder(args: argparse.Namespace, device: torch.device) -> LatentEncoder:
    from diffusion.models.components import (load_text_encoder, load_text_encoder_with_projection, load_tokenizer,
                                             load_vae)

    second = {}
    try:
        tokenizer = load_tokenizer(args.tokenizer, args.tokenizer_subfolder)
        text_encoder = load_text_encoder(args.text_encoder, args.text_encoder_subfolder, tokenizer=tokenizer)
        if args.text_encoder_2:
            tokenizer_2 = load_tokenizer(args.tokenizer_2, args.tokenizer_2_subfolder, key="--tokenizer-2")
            second = dict(tokenizer_2=tokenizer_2, text_encoder_2=load_text_encoder_with_projection(
                args.text_encoder_2, args.text_encoder_2_subfolder, tokenizer=tokenizer_2))
        vae = load_vae(args.vae, args.vae_subfolder)
    except FileNotFoundError:
        raise
    except OSError as exc:  # a hub name that does not resolve, a folder without weights, ...
        raise StageError(f"loading the models: {str(exc).splitlines()[0]}") from exc
    return LatentEncoder(vae, text_encoder, tokenizer, device, TORCH_DTYPES[args.compute_dtype], **second)


def output_columns(in_columns: dict[str, str], resolutions: list[int], drop_image: bool, sdxl: bool = False,
                   extra_caption_keys: list[str] = (), crops: bool = False) -> dict[str, str]:
    """`crops`: store original_size and crop_top_left_{res} (always for SDXL's micro-conditioning)."""
    crops = crops or sdxl
    columns = {k: v for k, v in in_columns.items() if not (drop_image and k == schema.IMAGE)}
    for res in resolutions:
        columns[schema.image_latents_key(res)] = schema.LATENT_ENCODING
        if crops:
            columns[schema.crop_top_left_key(res)] = schema.LATENT_ENCODING
    columns[schema.CAPTION_LATENTS] = schema.LATENT_ENCODING
    if sdxl:
        columns[schema.POOLED_CAPTION_LATENTS] = schema.LATENT_ENCODING
    if crops:
        columns[schema.ORIGINAL_SIZE] = schema.LATENT_ENCODING
    for key in extra_caption_keys:
        columns[schema.has_caption_key(key)] = "int"
        columns[schema.caption_latents_key(key)] = schema.LATENT_ENCODING
        if sdxl:
            columns[schema.pooled_caption_latents_key(key)] = schema.LATENT_ENCODING
    return columns


def check_input(in_dir: str, in_columns: dict[str, str], caption_key: str, resolutions: list[int],
                extra_caption_keys: list[str] = ()) -> None:
    index = os.path.join(in_dir, "index.json")
    if not in_columns:
        raise StageError(f"{index} lists no samples")
    for needed in (schema.IMAGE, caption_key, "photo_id", *extra_caption_keys):
        if needed not in in_columns:
            hint = " (run data_prep.caption first, or pass --caption-key)" if needed == caption_key else ""
            raise StageError(f"{index} has no column {needed!r}{hint}; its columns are {sorted(in_columns)}")
    produced = [schema.image_latents_key(r) for r in resolutions] + [schema.CAPTION_LATENTS]
    clash = [c for c in produced if c in in_columns]
    if clash:
        raise StageError(f"{index} already has column(s) {clash}: this stage would overwrite them")


def check_settings(out_dir: str, settings: dict, rank: int) -> None:
    """Refuse to resume into an out_dir whose latents came from models with other facts (scaling factor,
    tokenizer length); record them on the first run. Flags and input are checked by the fingerprint."""
    path = os.path.join(out_dir, SETTINGS_FILE)
    recorded = read_settings(path)
    if recorded is not None:
        changed = changed_settings({k: recorded.get(k) for k in settings}, settings)  # older records hold more keys
        if changed:
            raise StageError(f"{path} records models with other {', '.join(changed)}: the model folders changed "
                             f"since this output was started; use a new OUT_DIR (or --overwrite)")
    elif rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        write_json_atomic(path, settings)


EMPTY_FILES = {schema.CAPTION_LATENTS: schema.EMPTY_CAPTION_LATENTS_FILE,
               schema.POOLED_CAPTION_LATENTS: schema.EMPTY_POOLED_CAPTION_LATENTS_FILE}


def save_empty_caption_latents(out_dir: str, encoder: LatentEncoder, np_dtype) -> list[str]:
    """The latents of "" ((max_length, hidden), and for SDXL the pooled (projection_dim,)) in the storage
    dtype, each written atomically."""
    paths = []
    for key, array in encoder.encode_captions([""]).items():
        path = os.path.join(out_dir, EMPTY_FILES[key])
        tmp = path + ".tmp.npy"
        np.save(tmp, array[0].cpu().numpy().astype(np_dtype))
        os.replace(tmp, path)
        paths.append(path)
    return paths


def extra_caption_latents(encoder: LatentEncoder, texts: list[str], caption_key: str) -> dict[str, list]:
    """Per sample, has_{key} and the latents of another caption column (a 1-element placeholder where its
    text is empty), keyed by the columns they are stored in. Only non-empty texts are encoded."""
    present = [i for i, t in enumerate(texts) if t.strip()]
    encoded = encoder.encode_captions([texts[i] for i in present]) if present else {}
    names = {schema.CAPTION_LATENTS: schema.caption_latents_key(caption_key),
             schema.POOLED_CAPTION_LATENTS: schema.pooled_caption_latents_key(caption_key)}
    kinds = [schema.CAPTION_LATENTS] + ([schema.POOLED_CAPTION_LATENTS] if encoder.text_encoder_2 is not None else [])
    out = {names[k]: [np.zeros((1,), np.float32)] * len(texts) for k in kinds}
    for k, values in encoded.items():
        for row, value in zip(present, values.cpu().numpy()):
            out[names[k]][row] = value
    return out, [int(i in present) for i in range(len(texts))]


def _decode(item):
    """(key, sample as read, undecoded) -> pixels per resolution, or the reason it cannot be used. Runs in a
    thread pool: Pillow releases the GIL while decoding and resizing."""
    key, sample, transforms_by_res = item
    try:
        image = sample[schema.IMAGE].decode().convert("RGB")
        return {"size": (image.height, image.width), **{res: t(image) for res, t in transforms_by_res.items()}}, None
    except (OSError, ValueError) as exc:  # Pillow's truncated/corrupt data errors
        log.warning("sample %s: image cannot be decoded: %s", key, exc)
        return None, "undecodable_image"


def run(args: argparse.Namespace) -> dict:
    rank, world = get_rank_world()
    in_columns = read_columns(args.in_dir)
    check_input(args.in_dir, in_columns, args.caption_key, args.resolutions, args.extra_caption_keys)
    sdxl = bool(args.text_encoder_2)
    columns = output_columns(in_columns, args.resolutions, args.drop_image, sdxl, args.extra_caption_keys,
                             crops=args.aspect_buckets)
    np_dtype = NUMPY_DTYPES[args.dtype]
    record = prepare_stage_output(STAGE, args, {k: getattr(args, k) for k in FINGERPRINT_FLAGS}, rank, world,
                                  extra_patterns=(SETTINGS_FILE, schema.EMPTY_CAPTION_LATENTS_FILE + "*",
                                                  schema.EMPTY_POOLED_CAPTION_LATENTS_FILE + "*",
                                                  BUCKET_PREFIX + "*", BUCKETS_FILE + "*"))

    device = torch.device(args.device) if args.device else default_device()
    encoder = load_encoder(args, device)
    if "tiny" in (args.vae, args.text_encoder, args.tokenizer):
        log.warning("'tiny' builds NEW random weights on every call: for smoke tests only, never resume with it")
    # What the fingerprint cannot see: it names the models, and a folder's content can change under its name.
    settings = {"scaling_factor": encoder.scaling_factor,
                "tokenizer_max_length": int(encoder.tokenizer.model_max_length)}
    check_settings(args.out_dir, settings, rank)
    if rank == 0:
        save_empty_caption_latents(args.out_dir, encoder, np_dtype)

    transforms_by_res = {res: pixel_transform(res, args.aspect_buckets, args.bucket_multiple)
                         for res in args.resolutions}

    def encode_images_by_shape(good) -> dict[int, list[np.ndarray]]:
        """Per resolution, each sample's latents; samples of one pixel shape (one bucket) are encoded together."""
        groups: dict[tuple, list[int]] = {}
        for i, (_, _, pixels) in enumerate(good):
            groups.setdefault(tuple(tuple(pixels[res][0].shape) for res in args.resolutions), []).append(i)
        latents = {res: [None] * len(good) for res in args.resolutions}
        for rows in groups.values():
            for res in args.resolutions:
                encoded = encoder.encode_images(torch.stack([good[i][2][res][0] for i in rows])).cpu().numpy()
                for i, value in zip(rows, encoded):
                    latents[res][i] = value
        return latents

    def flush(batch, out, pool):
        decoded = list(pool.map(_decode, [(key, sample, transforms_by_res) for key, sample in batch]))
        good = []
        for (key, sample), (pixels, reason) in zip(batch, decoded):
            if pixels is None:
                out.skip(key, reason, sample)
            else:
                good.append((key, sample, pixels))
        if not good:
            return
        latents = encode_images_by_shape(good)
        text = {k: v.cpu().numpy() for k, v in
                encoder.encode_captions([str(g[1][args.caption_key].decode()) for g in good]).items()}
        extra = {k: extra_caption_latents(encoder, [str(g[1][k].decode() or "") for g in good], k)
                 for k in args.extra_caption_keys}
        for i, (key, sample, decoded) in enumerate(good):
            arrays = {schema.image_latents_key(res): latents[res][i] for res in args.resolutions}
            arrays.update({k: v[i] for k, v in text.items()})
            for caption_key, (columns_of_key, present) in extra.items():
                arrays.update({k: v[i] for k, v in columns_of_key.items()})
            if not all(np.isfinite(a).all() for a in arrays.values()):  # e.g. a VAE overflowing in fp16
                out.skip(key, "nonfinite_latents", sample)
                continue
            kept = {k: v for k, v in sample.items() if k in columns}  # still Encoded: copied byte for byte
            kept.update({k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in arrays.items()})
            kept.update({schema.has_caption_key(k): present[i] for k, (_, present) in extra.items()})
            if sdxl or args.aspect_buckets:  # where each crop sits, for micro-conditioning
                kept[schema.ORIGINAL_SIZE] = np.asarray(decoded["size"], dtype=np.int32)
                kept.update({schema.crop_top_left_key(res): np.asarray(decoded[res][1], dtype=np.int32)
                             for res in args.resolutions})
            if args.aspect_buckets:
                out.write(key, kept, subset=bucket_name([tuple(decoded[r][0].shape[1:]) for r in args.resolutions]))
            else:
                out.write(key, kept)

    def manifest_flags(merged: int) -> dict:
        shapes = _array_shapes(args.out_dir, columns) if merged else {}
        flags = {k: v for k, v in vars(args).items() if k not in ("in_dir", "out_dir")}
        flags.update(
            scaling_factor=encoder.scaling_factor, storage_dtype=np.dtype(np_dtype).name, array_shapes=shapes,
            image_latents="vae.encode(x).latent_dist.mean * scaling_factor (scaled once, here)",
            pixels=("resized to cover the image's aspect bucket (bicubic, antialias), center crop, [-1, 1]"
                    if args.aspect_buckets else "short side resized to res (bicubic, antialias), center crop res x res, [-1, 1]"),
            caption_latents="text_encoder(tokenizer(caption, padding=max_length, truncation))[0]",
            empty_caption_latents=schema.EMPTY_CAPTION_LATENTS_FILE, device=str(device),
        )
        return flags

    stats = run_batched_stage(STAGE, args.in_dir, args.out_dir, columns, flush, rank=rank, world=world,
                              batch_size=args.batch_size, part_size=args.part_size, workers=args.workers,
                              progress_desc=f"latents rank {rank}", show_progress=not args.no_progress,
                              manifest_flags=manifest_flags, fingerprint_record=record,
                              subset_prefix=BUCKET_PREFIX if args.aspect_buckets else None)
    if "subsets" in stats:
        write_buckets_file(args.out_dir, args.resolutions, args.bucket_multiple, stats["subsets"])
    return stats


def _array_shapes(out_dir: str, columns: dict[str, str]) -> dict[str, list[int]]:
    samples = iter_mds(out_dir)
    try:
        _, first = next(samples)
    finally:
        samples.close()
    return {k: list(first[k].shape) for k, enc in columns.items() if enc == schema.LATENT_ENCODING}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep.precompute_latents", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("in_dir", help="merged MDS folder from data_prep.caption (or any with image + caption columns)")
    p.add_argument("out_dir", help="output MDS folder (re-run the same command to resume)")
    p.add_argument("--vae", required=True, help="hub name or local folder of a diffusers AutoencoderKL")
    p.add_argument("--vae-subfolder", default="vae", help="'' for a folder that is the VAE itself")
    p.add_argument("--text-encoder", required=True, help="hub name or local folder of a CLIPTextModel")
    p.add_argument("--text-encoder-subfolder", default="text_encoder")
    p.add_argument("--tokenizer", required=True, help="hub name or local folder of a CLIPTokenizer")
    p.add_argument("--tokenizer-subfolder", default="tokenizer")
    p.add_argument("--text-encoder-2", help="SDXL only: hub name or local folder of the second text encoder "
                   "(CLIPTextModelWithProjection); stores concatenated hidden states, pooled embedding and crops")
    p.add_argument("--text-encoder-2-subfolder", default="text_encoder_2")
    p.add_argument("--tokenizer-2", help="SDXL only: the second text encoder's tokenizer")
    p.add_argument("--tokenizer-2-subfolder", default="tokenizer_2")
    p.add_argument("--resolutions", type=int, nargs="+", default=[256, 512], help="square center-crop sides")
    p.add_argument("--caption-key", default=schema.BLIP2_CAPTION, help="input column holding the caption")
    p.add_argument("--extra-caption-keys", nargs="*", default=[], metavar="KEY",
                   help="more caption columns to encode (e.g. title description) for dataset.caption_selection_probs")
    p.add_argument("--dtype", choices=sorted(NUMPY_DTYPES), default="fp16", help="storage dtype of the arrays")
    p.add_argument("--compute-dtype", choices=sorted(TORCH_DTYPES), default="fp32",
                   help="dtype the VAE and text encoder run in (fp16/bf16 are faster on GPU)")
    p.add_argument("--aspect-buckets", action="store_true",
                   help="encode each image at its aspect-ratio bucket (SDXL's list scaled to each resolution) and "
                        "write one sub-dataset per bucket, for dataset.aspect_buckets: true")
    p.add_argument("--bucket-multiple", type=int, default=64,
                   help="bucket sides are multiples of this (pixels); the latents must divide through the UNet")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--drop-image", action="store_true", help="do not copy the image column into the output")
    add_stage_loop_args(p)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.part_size < 1 or args.workers < 1:
        sys.exit(f"{STAGE}: --batch-size, --part-size and --workers must be >= 1")
    if min(args.resolutions) < 8:
        sys.exit(f"{STAGE}: --resolutions must be >= 8, got {args.resolutions}")
    args.resolutions = sorted(set(args.resolutions))
    if args.aspect_buckets and not 1 <= args.bucket_multiple <= min(args.resolutions):
        sys.exit(f"{STAGE}: --bucket-multiple must be between 1 and the smallest resolution, got {args.bucket_multiple}")
    if bool(args.text_encoder_2) != bool(args.tokenizer_2):
        sys.exit(f"{STAGE}: --text-encoder-2 and --tokenizer-2 go together (SDXL's second text encoder)")
    for name in ("vae_subfolder", "text_encoder_subfolder", "tokenizer_subfolder", "text_encoder_2_subfolder",
                 "tokenizer_2_subfolder"):
        setattr(args, name, getattr(args, name) or None)
    return run_stage_cli(STAGE, run, args)


if __name__ == "__main__":
    main()

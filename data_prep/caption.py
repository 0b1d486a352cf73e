"""Caption every image with BLIP-2 ("telephoning", CommonCanvas section 3) into new MDS shards.

    python -m data_prep.caption IN_DIR OUT_DIR --model Salesforce/blip2-opt-2.7b [--batch-size 32]
        [--dtype bf16] [--max-new-tokens 30] [--num-beams 1] [--prompt ""]

Every input column is copied (JPEG bytes unchanged, see data_prep.stage_loop), so the original alt-text
(`title`, `description`) and all attribution fields sit next to the new `blip2_caption` column: the text
the model generates after the image (and after `--prompt`, which is not part of the stored caption),
special tokens removed, whitespace stripped. Decoding is greedy with --num-beams 1, beam search otherwise.

The model and processor load with transformers' Blip2ForConditionalGeneration / Blip2Processor from a
hub name or a local folder. On GPU it runs in --dtype (bf16 default); on CPU always in fp32.
Rank-sharded (RANK/WORLD_SIZE, one GPU per rank via LOCAL_RANK) and resumable: re-run the same command
after any interruption; OUT_DIR is fingerprinted (input, model and decoding settings) and a re-run with
others is refused (--overwrite starts over). Images that cannot be decoded are skipped (`undecodable_image`).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from data_prep import schema
from data_prep.shards import get_rank_world, read_columns
from data_prep.stage_loop import (StageError, add_stage_loop_args, default_device, prepare_stage_output,
                                  run_batched_stage, run_stage_cli)

log = logging.getLogger(__name__)

STAGE = "caption"
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Settings that decide the captions (a resume may change batch size, workers, device).
FINGERPRINT_FLAGS = ("model", "dtype", "max_new_tokens", "num_beams", "prompt")


def strip_prompt(generated: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The newly generated tokens. Depending on the transformers version and the language model, generate()
    returns either only them or the prompt (image tokens + BOS + prompt text) followed by them."""
    n = input_ids.shape[1]
    if generated.shape[1] >= n and torch.equal(generated[:, :n], input_ids.to(generated.device)):
        return generated[:, n:]
    return generated


class Blip2Captioner:
    """A BLIP-2 checkpoint and its processor on one device; call it with a list of RGB PIL images."""

    def __init__(self, name_or_path: str, device: torch.device, dtype: torch.dtype = torch.bfloat16,
                 max_new_tokens: int = 30, num_beams: int = 1, prompt: str = ""):
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        looks_local = name_or_path.startswith((".", "/", "~")) or os.path.isdir(name_or_path)
        if looks_local and not os.path.isfile(os.path.join(os.path.expanduser(name_or_path), "config.json")):
            raise StageError(f"--model: no BLIP-2 checkpoint (config.json) in folder {name_or_path}")
        if device.type == "cpu" and dtype != torch.float32:
            log.info("running BLIP-2 in fp32 on CPU (half precision is for GPUs)")
            dtype = torch.float32
        self.device, self.dtype = device, dtype
        # use_fast left unset: transformers then loads the image processor the checkpoint names (BLIP-2's
        # published ones are the slow, reference one) and the fast tokenizer; use_fast=False would also
        # force the slow tokenizer.
        try:
            self.processor = Blip2Processor.from_pretrained(name_or_path)
            self.model = Blip2ForConditionalGeneration.from_pretrained(name_or_path, torch_dtype=dtype)
        except OSError as exc:  # transformers' "not a local folder and not a valid model identifier", etc.
            raise StageError(f"--model {name_or_path}: {str(exc).splitlines()[0]}") from exc
        self.model.to(device).eval()
        self._check_image_tokens(name_or_path)
        self.generate_kwargs = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)
        self.prompt = prompt

    def _check_image_tokens(self, name: str) -> None:
        """generate() finds where the image goes by `config.image_token_index` in the input ids the processor
        builds from `num_query_tokens`; checkpoints saved before transformers 4.47 lack one or both."""
        config, tokenizer = self.model.config, self.processor.tokenizer
        image_token = self.processor.image_token  # an AddedToken, or a str where the tokenizer defines one
        image_token_id = tokenizer.convert_tokens_to_ids(getattr(image_token, "content", image_token))
        if self.processor.num_query_tokens is None:
            self.processor.num_query_tokens = config.num_query_tokens
        if config.image_token_index is None:
            if image_token_id >= self.model.get_input_embeddings().num_embeddings:
                raise StageError(f"--model {name}: config has no image_token_index and the tokenizer's image "
                                 f"token (id {image_token_id}) is outside the embedding table; re-save the "
                                 f"checkpoint with a recent transformers")
            config.image_token_index = image_token_id
        if config.image_token_index != image_token_id:
            raise StageError(f"--model {name}: config.image_token_index={config.image_token_index} but the "
                             f"processor's image token has id {image_token_id}")

    @torch.inference_mode()
    def __call__(self, images: list) -> list[str]:
        inputs = self.processor(images=images, text=[self.prompt] * len(images), return_tensors="pt")
        input_ids = inputs["input_ids"].to(self.device)
        generated = self.model.generate(
            pixel_values=inputs["pixel_values"].to(self.device, self.dtype), input_ids=input_ids,
            attention_mask=inputs["attention_mask"].to(self.device), **self.generate_kwargs,
        )
        new_tokens = strip_prompt(generated, input_ids)
        return [text.strip() for text in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]


def check_input(in_dir: str, in_columns: dict[str, str]) -> None:
    index = os.path.join(in_dir, "index.json")
    if not in_columns:
        raise StageError(f"{index} lists no samples")
    for needed in (schema.IMAGE, "photo_id"):
        if needed not in in_columns:
            raise StageError(f"{index} has no column {needed!r}; its columns are {sorted(in_columns)}")
    if schema.BLIP2_CAPTION in in_columns:
        raise StageError(f"{index} already has a {schema.BLIP2_CAPTION!r} column: this stage would overwrite it")


def _decode(item):
    """(key, sample as read, undecoded) -> RGB image, or None if it cannot be decoded. Runs in a thread pool
    (Pillow releases the GIL while decoding)."""
    key, sample = item
    try:
        return sample[schema.IMAGE].decode().convert("RGB")
    except (OSError, ValueError) as exc:  # Pillow's truncated/corrupt data errors
        log.warning("sample %s: image cannot be decoded: %s", key, exc)
        return None


def run(args: argparse.Namespace) -> dict:
    rank, world = get_rank_world()
    in_columns = read_columns(args.in_dir)
    check_input(args.in_dir, in_columns)
    columns = {**in_columns, schema.BLIP2_CAPTION: "str"}
    record = prepare_stage_output(STAGE, args, {k: getattr(args, k) for k in FINGERPRINT_FLAGS}, rank, world)
    device = torch.device(args.device) if args.device else default_device()
    captioner = Blip2Captioner(args.model, device, TORCH_DTYPES[args.dtype], args.max_new_tokens,
                               args.num_beams, args.prompt)

    empty_captions = {"empty_captions_this_run": 0}

    def flush(batch, out, pool):
        images = list(pool.map(_decode, batch))
        good = [(item, image) for item, image in zip(batch, images) if image is not None]
        for (key, sample), image in zip(batch, images):
            if image is None:
                out.skip(key, "undecodable_image", sample)
        if not good:
            return
        captions = captioner([image for _, image in good])
        for ((key, sample), _), caption in zip(good, captions):
            empty_captions["empty_captions_this_run"] += not caption
            out.write(key, {**sample, schema.BLIP2_CAPTION: caption})  # the input's columns stay Encoded

    def manifest_flags(merged: int) -> dict:
        flags = {k: v for k, v in vars(args).items() if k not in ("in_dir", "out_dir")}
        flags.update(model_dtype=str(captioner.dtype).removeprefix("torch."), device=str(device),
                     decoding="greedy" if args.num_beams == 1 else f"beam search ({args.num_beams} beams)",
                     caption_column=schema.BLIP2_CAPTION, alt_text_columns=["title", "description"])
        return flags

    stats = run_batched_stage(STAGE, args.in_dir, args.out_dir, columns, flush, rank=rank, world=world,
                              batch_size=args.batch_size, part_size=args.part_size, workers=args.workers,
                              progress_desc=f"caption rank {rank}", show_progress=not args.no_progress,
                              manifest_flags=manifest_flags, fingerprint_record=record)
    return {**stats, **empty_captions}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep.caption", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("in_dir", help="merged MDS folder from the fetch stage (image + attribution columns)")
    p.add_argument("out_dir", help="output MDS folder (re-run the same command to resume)")
    p.add_argument("--model", required=True,
                   help="hub name or local folder of a BLIP-2 checkpoint; the paper used Salesforce/blip2-opt-2.7b")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="bf16", help="on GPU; CPU always uses fp32")
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--num-beams", type=int, default=1, help="1 = greedy decoding")
    p.add_argument("--prompt", default="", help="text the caption continues (not stored), e.g. 'a photo of'")
    add_stage_loop_args(p)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "part_size", "workers", "max_new_tokens", "num_beams"):
        if getattr(args, name) < 1:
            sys.exit(f"{STAGE}: --{name.replace('_', '-')} must be >= 1")
    return run_stage_cli(STAGE, run, args)


if __name__ == "__main__":
    main()

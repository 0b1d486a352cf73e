"""Part d: the data-prep models on the device, real sizes with random weights (the compute does not depend
on the weights; none can be downloaded).

  latents   data_prep.precompute_latents' LatentEncoder, loaded by its own load_encoder from the suite's
            SD2-layout folder (VAE 8x + OpenCLIP ViT-H text tower): image + caption latents, samples/s at
            256 and 512 px, in bf16 (the stage's --compute-dtype bf16).
  caption   data_prep.caption's Blip2Captioner around a Blip2ForConditionalGeneration of
            Salesforce/blip2-opt-2.7b's layout (ViT-g 39 layers, Q-Former, OPT-2.7b), images/s, bf16,
            greedy, 30 new tokens. Built in place on the GPU rather than saved and reloaded (7.7 GB), so
            the captioner is assembled around it; random weights would stop at EOS at random, so every
            caption is forced to the full 30 tokens (more work than real captions, which stop earlier).
Model throughput only: the stages also decode JPEGs on CPU threads (benchmarks.latents_throughput times the
whole stage). --quick: the tiny models, fp32, on CPU.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from benchmarks.gpu.common import Suite, free_device_memory, timed

NEW_TOKENS = 30
WORDS = 50_000  # OPT's vocabulary is 50272; the stand-in tokenizer needs only ids inside it


def latents_rows(suite: Suite) -> list[dict]:
    from data_prep.precompute_latents import build_parser, load_encoder

    comp = suite.components()
    dtype = "bf16" if suite.cuda else "fp32"
    args = build_parser().parse_args(["in", "out", "--vae", comp, "--text-encoder", comp, "--tokenizer", comp,
                                      "--compute-dtype", dtype])
    encoder = load_encoder(args, suite.device)
    rows = []
    settings = [(32, 4, 2)] if suite.quick else [(256, 64, 4), (512, 32, 4)]  # (resolution, batch, timed batches)
    gen = torch.Generator().manual_seed(0)
    for resolution, batch, repeats in settings:
        pixels = torch.rand(batch, 3, resolution, resolution, generator=gen) * 2 - 1  # on the host, as decoded
        captions = [" ".join(f"word{i % 37} photo of a red lake" for _ in range(6)) for i in range(batch)]

        def step():
            encoder.encode_images(pixels)
            encoder.encode_captions(captions)

        step()  # warm-up: kernels chosen, memory pooled
        seconds = sum(timed(step, suite.device) for _ in range(repeats))
        rows.append({"name": f"latents_sd2_vae_openclip_h_{resolution}" if not suite.quick else f"latents_tiny_{resolution}",
                     "samples_per_s": round(batch * repeats / seconds, 2), "batch_size": batch,
                     "resolution": resolution, "compute_dtype": dtype})
        suite.log(f"  latents {resolution}px: {rows[-1]['samples_per_s']} samples/s")
    del encoder
    free_device_memory(suite.device)
    return rows


def stand_in_opt_tokenizer(words: int):
    """A word-level tokenizer with OPT's special tokens and `words` plain tokens: only ids and sequence
    lengths matter for speed, and every id it can decode."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left")


def blip2_config(quick: bool, tokenizer):
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, OPTConfig

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if quick:
        vision = Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                   image_size=32, patch_size=8)
        qformer = Blip2QFormerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     encoder_hidden_size=32)
        text = OPTConfig(vocab_size=len(tokenizer) + 8, hidden_size=32, word_embed_proj_dim=32, ffn_dim=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=128, **ids)
        return Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                           num_query_tokens=4), 32
    # Salesforce/blip2-opt-2.7b: transformers' Blip2Vision/QFormer defaults are its ViT-g and Q-Former
    text = OPTConfig(vocab_size=50272, hidden_size=2560, ffn_dim=10240, num_hidden_layers=32, num_attention_heads=32,
                     word_embed_proj_dim=2560, max_position_embeddings=2048, **ids)
    return Blip2Config(vision_config=Blip2VisionConfig().to_dict(), qformer_config=Blip2QFormerConfig().to_dict(),
                       text_config=text.to_dict(), num_query_tokens=32), 224


def build_captioner(suite: Suite):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    from data_prep.caption import Blip2Captioner

    tokenizer = stand_in_opt_tokenizer(200 if suite.quick else WORDS)
    config, image_size = blip2_config(suite.quick, tokenizer)
    processor = Blip2Processor(BlipImageProcessor(size={"height": image_size, "width": image_size}), tokenizer,
                               num_query_tokens=config.num_query_tokens)  # adds the "<image>" token
    config.image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    dtype = torch.bfloat16 if suite.cuda else torch.float32
    torch.manual_seed(0)
    with torch.device(suite.device):  # initialised where it runs: no host copy of 3.8 B parameters
        model = Blip2ForConditionalGeneration._from_config(config, torch_dtype=dtype)
    captioner = Blip2Captioner.__new__(Blip2Captioner)  # its __init__ loads from a folder; same fields
    captioner.device, captioner.dtype, captioner.processor, captioner.model = suite.device, dtype, processor, model.eval()
    captioner.generate_kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, num_beams=1, do_sample=False)
    captioner.prompt = ""
    captioner._check_image_tokens("the random BLIP-2")
    params = sum(p.numel() for p in model.parameters())
    return captioner, params


def caption_row(suite: Suite) -> dict:
    captioner, params = build_captioner(suite)
    batch, repeats = (4, 1) if suite.quick else (64, 3)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(batch)]
    captions = captioner(images)  # warm-up
    seconds = sum(timed(lambda: captioner(images), suite.device) for _ in range(repeats))
    row = {"name": "caption_blip2_opt_2.7b_size" if not suite.quick else "caption_blip2_tiny",
           "images_per_s": round(batch * repeats / seconds, 2), "batch_size": batch, "params": params,
           "new_tokens": NEW_TOKENS, "dtype": str(captioner.dtype).removeprefix("torch."),
           "words_in_first_caption": len(captions[0].split())}
    suite.log(f"  caption: {row['images_per_s']} images/s ({params / 1e9:.2f} B parameters)")
    del captioner
    free_device_memory(suite.device)
    return row


def run(suite: Suite, budget_s: float) -> dict:
    rows, errors = [], []
    for name, fn in (("latents", latents_rows), ("caption", lambda s: [caption_row(s)])):
        try:  # the two halves fail separately
            rows += fn(suite)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            rows.append({"name": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]})
            free_device_memory(suite.device)
    return {"rows": rows, "notes": ["model throughput (batches already decoded); bf16 on GPU, fp32 on CPU"]}

"""The frozen parts at their real sizes, random weights: SD2's VAE and OpenCLIP-H text tower (saved as a pipeline
folder for the timed rows), and SDXL-base's VAE, CLIP ViT-L and OpenCLIP bigG on the meta device, for counting an
`sdxl` training step's FLOPs (`benchmarks.train_throughput --config sdxl --flops-only`) without weights.

Layouts as stabilityai/stable-diffusion-2-base and -xl-base-1.0 publish them in their config files; only shapes
matter for speed.
"""
from __future__ import annotations

import os
import tempfile

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from diffusion.models import tiny
from diffusion.models.noise import training_scheduler
from diffusion.models.sdxl import CAPTIONS_2, POOLED_CAPTION_LATENTS, StableDiffusionXL
from diffusion.models.unet_configs import unet_config


def sd2_size_vae(scaling_factor: float = 0.18215, sample_size: int = 768) -> AutoencoderKL:
    """stabilityai/stable-diffusion-2-base's VAE layout (8x downsampling), random weights. SDXL's VAE has the
    same layout with scaling factor 0.13025."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2, norm_num_groups=32, sample_size=sample_size, scaling_factor=scaling_factor,
    )


def sd2_size_text_encoder() -> CLIPTextModel:
    """SD2's text encoder layout (OpenCLIP ViT-H text tower, penultimate layer: 23 layers, 1024 hidden)."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
    ))


def save_sd2_size_components(folder: str) -> str:
    """vae/, text_encoder/, tokenizer/ under `folder`, as a diffusers pipeline folder lays them out. The
    tokenizer is the offline tiny one padded to 77 tokens: only the sequence length matters for speed."""
    tiny.save_tiny_tokenizer(os.path.join(folder, "tokenizer"), model_max_length=77)
    sd2_size_vae().save_pretrained(os.path.join(folder, "vae"))
    sd2_size_text_encoder().save_pretrained(os.path.join(folder, "text_encoder"))
    return folder


def _text_config(hidden: int, layers: int, heads: int, intermediate: int, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                          num_attention_heads=heads, max_position_embeddings=77, hidden_act="gelu", **extra)


def meta_sdxl_model(config: str) -> StableDiffusionXL:
    """An `sdxl` (or other micro-conditioned layout) model at SDXL-base sizes on the meta device."""
    tokenizer = CLIPTokenizer.from_pretrained(tiny.save_tiny_tokenizer(tempfile.mkdtemp(prefix="bench_tok_"),
                                                                       model_max_length=77))
    with torch.device("meta"):
        vae = sd2_size_vae(scaling_factor=0.13025, sample_size=1024)
        clip_l = CLIPTextModel(_text_config(768, 12, 12, 3072))
        big_g = CLIPTextModelWithProjection(_text_config(1280, 32, 20, 5120, projection_dim=1280))
        return StableDiffusionXL(
            unet=UNet2DConditionModel(**unet_config(config)), vae=vae, text_encoder=clip_l, tokenizer=tokenizer,
            text_encoder_2=big_g, tokenizer_2=tokenizer, noise_scheduler=training_scheduler(),
            empty_caption_latents=torch.zeros(77, 768 + 1280), empty_pooled_caption_latents=torch.zeros(1280),
        )


def latent_extras(model, n: int) -> dict:
    """What a precomputed SDXL batch carries besides image and caption latents (size/crop default to none)."""
    if not isinstance(model, StableDiffusionXL):
        return {}
    return {POOLED_CAPTION_LATENTS: torch.zeros(n, model.text_encoder_2.config.projection_dim, device="meta")}


def pixel_extras(model, tokens: torch.Tensor) -> dict:
    """What a pixel SDXL batch carries besides image and first tokens: the second tokenizer's ids."""
    return {CAPTIONS_2: tokens} if isinstance(model, StableDiffusionXL) else {}

"""`model:` section of a training yaml -> StableDiffusion. Each argument here is a yaml key of that section."""
from __future__ import annotations

import tempfile

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from diffusion.models.components import load_text_encoder, load_tokenizer, load_vae
from diffusion.models.noise import training_scheduler
from diffusion.models.stable_diffusion import StableDiffusion
from diffusion.models.unet_configs import unet_config
from diffusion.remote_files import local_copy


def build_stable_diffusion(
    unet: str = "sd2",
    unet_overrides: dict | None = None,
    vae: str = "stabilityai/stable-diffusion-2-base",
    vae_subfolder: str | None = "vae",
    text_encoder: str = "stabilityai/stable-diffusion-2-base",
    text_encoder_subfolder: str | None = "text_encoder",
    tokenizer: str = "stabilityai/stable-diffusion-2-base",
    tokenizer_subfolder: str | None = "tokenizer",
    prediction_type: str = "epsilon",
    zero_terminal_snr: bool = False,
    offset_noise: float = 0.0,
    min_snr_gamma: float | None = None,
    caption_drop_prob: float = 0.1,
    empty_caption_latents: str | None = None,
) -> StableDiffusion:
    """A from-scratch UNet of layout `unet` (sd2 | sdxl_size | tiny) with frozen VAE and text encoder.

    `empty_caption_latents`: path of the .npy the latents stage writes; used for CFG dropout so it matches
    the stored caption latents exactly. Without it the empty caption is encoded once here.
    """
    tok = load_tokenizer(tokenizer, tokenizer_subfolder)
    text_model = load_text_encoder(text_encoder, text_encoder_subfolder, tokenizer=tok)
    config = unet_config(unet, unet_overrides)
    if config["cross_attention_dim"] != text_model.config.hidden_size:
        raise ValueError(
            f"model.unet_overrides.cross_attention_dim={config['cross_attention_dim']} does not match the text "
            f"encoder's hidden size {text_model.config.hidden_size} ({text_encoder})"
        )
    empty = None
    if empty_caption_latents:
        with tempfile.TemporaryDirectory() as tmp:  # on object storage beside the shards in the recipes
            empty = torch.from_numpy(np.load(local_copy(empty_caption_latents, tmp))).float()
        empty = empty[0] if empty.ndim == 3 else empty
    return StableDiffusion(
        unet=UNet2DConditionModel(**config),
        vae=load_vae(vae, vae_subfolder),
        text_encoder=text_model,
        tokenizer=tok,
        noise_scheduler=training_scheduler(prediction_type, zero_terminal_snr),
        caption_drop_prob=caption_drop_prob,
        offset_noise=offset_noise,
        min_snr_gamma=min_snr_gamma,
        empty_caption_latents=empty,
    )

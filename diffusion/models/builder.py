"""`model:` section of a training yaml -> StableDiffusion (S, L) or StableDiffusionXL (XL).

Each argument here is a yaml key of that section. The UNet layout decides the conditioning scheme: a layout
with SDXL's micro-conditioning (`sdxl`, `tiny_xl`, or `addition_embed_type: text_time` by override) builds
StableDiffusionXL and needs `text_encoder_2`/`tokenizer_2`; every other layout builds StableDiffusion.
"""
from __future__ import annotations

import tempfile

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from diffusion.models.components import load_text_encoder, load_text_encoder_with_projection, load_tokenizer, load_vae
from diffusion.models.noise import training_scheduler
from diffusion.models.sdxl import StableDiffusionXL
from diffusion.models.stable_diffusion import StableDiffusion
from diffusion.models.unet_configs import unet_config, uses_micro_conditioning
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
    text_encoder_2: str | None = None,
    text_encoder_2_subfolder: str | None = "text_encoder_2",
    tokenizer_2: str | None = None,
    tokenizer_2_subfolder: str | None = "tokenizer_2",
    empty_pooled_caption_latents: str | None = None,
    micro_conditioning_drop_prob: float = 0.0,
) -> StableDiffusion:
    """A from-scratch UNet of layout `unet` (sd2 | sdxl_size | sdxl | tiny | tiny_xl) with frozen VAE and text
    encoder(s).

    `empty_caption_latents` (and for XL `empty_pooled_caption_latents`): paths of the .npy files the latents
    stage writes; used for CFG dropout so it matches the stored caption latents exactly. Without them the
    empty caption is encoded once here. `text_encoder_2`, `tokenizer_2`, `empty_pooled_caption_latents` and
    `micro_conditioning_drop_prob` belong to XL layouts only.
    """
    config = unet_config(unet, unet_overrides)
    xl = uses_micro_conditioning(config)
    if not xl and (text_encoder_2 or tokenizer_2):
        raise ValueError(f"model.text_encoder_2 / model.tokenizer_2 are for SDXL layouts (sdxl, tiny_xl); "
                         f"model.unet={unet} has one text encoder")
    if xl and not (text_encoder_2 and tokenizer_2):
        raise ValueError(f"model.unet={unet} uses SDXL micro-conditioning: set model.text_encoder_2 and model.tokenizer_2")
    tok = load_tokenizer(tokenizer, tokenizer_subfolder)
    text_model = load_text_encoder(text_encoder, text_encoder_subfolder, tokenizer=tok)
    shared = dict(
        unet=None, vae=load_vae(vae, vae_subfolder), text_encoder=text_model, tokenizer=tok,
        noise_scheduler=training_scheduler(prediction_type, zero_terminal_snr),
        caption_drop_prob=caption_drop_prob, offset_noise=offset_noise, min_snr_gamma=min_snr_gamma,
        empty_caption_latents=_load_npy(empty_caption_latents, squeeze_to=2),
    )
    if not xl:
        _check_dim("cross_attention_dim", config["cross_attention_dim"], text_model.config.hidden_size,
                   f"the text encoder's hidden size ({text_encoder})")
        return StableDiffusion(**{**shared, "unet": UNet2DConditionModel(**config)})
    tok_2 = load_tokenizer(tokenizer_2, tokenizer_2_subfolder, key="model.tokenizer_2")
    text_model_2 = load_text_encoder_with_projection(text_encoder_2, text_encoder_2_subfolder, tokenizer=tok_2)
    hidden = text_model.config.hidden_size + text_model_2.config.hidden_size
    _check_dim("cross_attention_dim", config["cross_attention_dim"], hidden,
               f"the two text encoders' hidden sizes added ({hidden})")
    pooled_dim = 6 * config["addition_time_embed_dim"] + text_model_2.config.projection_dim
    _check_dim("projection_class_embeddings_input_dim", config["projection_class_embeddings_input_dim"], pooled_dim,
               f"6 time ids x addition_time_embed_dim + text_encoder_2's projection_dim ({pooled_dim})")
    return StableDiffusionXL(
        **{**shared, "unet": UNet2DConditionModel(**config)}, text_encoder_2=text_model_2, tokenizer_2=tok_2,
        micro_conditioning_drop_prob=micro_conditioning_drop_prob,
        empty_pooled_caption_latents=_load_npy(empty_pooled_caption_latents, squeeze_to=1),
    )


def _check_dim(key: str, value: int, expected: int, what: str) -> None:
    if value != expected:
        raise ValueError(f"model.unet_overrides.{key}={value} does not match {what}")


def _load_npy(path: str | None, squeeze_to: int) -> torch.Tensor | None:
    """An empty-caption array the latents stage saved (with or without a leading batch axis of 1)."""
    if not path:
        return None
    with tempfile.TemporaryDirectory() as tmp:  # on object storage beside the shards in the recipes
        array = torch.from_numpy(np.load(local_copy(path, tmp))).float()
    return array[0] if array.ndim == squeeze_to + 1 else array

"""SDXL conditioning: two frozen text encoders, a pooled text embedding and size/crop micro-conditioning.

The scheme of CommonCanvas-XL (and of diffusers' StableDiffusionXLPipeline), as its own model class over the
shared noise, loss and sampling loop of `StableDiffusion`:
  - hidden states: the penultimate layer of `text_encoder` (CLIP ViT-L) and of `text_encoder_2` (OpenCLIP
    bigG, a CLIPTextModelWithProjection), concatenated on the channel axis (768 + 1280 = 2048 for SDXL);
  - pooled: `text_encoder_2`'s projected text embedding (1280);
  - time ids per sample: (original height, original width, crop top, crop left, target height, target width),
    embedded by the UNet (`addition_embed_type: text_time`).

Batches carry token ids of both tokenizers (`captions`, `captions_2`) or precomputed `caption_latents` (the
concatenated hidden states) and `pooled_caption_latents`; `original_size` and `crop_top_left` (each (B, 2),
height first) when the data recorded them, else the sample is taken as uncropped at its training size.
Classifier-free-guidance dropout replaces hidden states *and* pooled embedding with the empty caption's;
micro-conditioning dropout (optional) replaces a sample's size/crop by the neutral values sampling uses
(original = target size, crop at 0, 0).
"""
from __future__ import annotations

from typing import Sequence

import torch

from data_prep.schema import ORIGINAL_SIZE, POOLED_CAPTION_LATENTS
from diffusion.models.stable_diffusion import CAPTION_LATENTS, CAPTIONS, StableDiffusion

CAPTIONS_2 = "captions_2"
CROP_TOP_LEFT = "crop_top_left"
__all__ = ["StableDiffusionXL", "CAPTIONS_2", "POOLED_CAPTION_LATENTS", "ORIGINAL_SIZE", "CROP_TOP_LEFT"]


@torch.no_grad()
def encode_sdxl_text(text_encoder, text_encoder_2, token_ids, token_ids_2) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states (B, T, d1 + d2), pooled (B, projection_dim)), as diffusers' SDXL pipeline encodes: both
    encoders' penultimate layers concatenated, and the second encoder's projected text embedding. Training,
    sampling and data_prep.precompute_latents all call this, so stored and live captions agree."""
    first = text_encoder(token_ids.to(text_encoder.device), output_hidden_states=True)
    second = text_encoder_2(token_ids_2.to(text_encoder_2.device), output_hidden_states=True)
    return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second.text_embeds


class StableDiffusionXL(StableDiffusion):
    def __init__(
        self,
        unet,
        vae,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        noise_scheduler,
        caption_drop_prob: float = 0.1,
        micro_conditioning_drop_prob: float = 0.0,
        offset_noise: float = 0.0,
        min_snr_gamma: float | None = None,
        empty_caption_latents: torch.Tensor | None = None,
        empty_pooled_caption_latents: torch.Tensor | None = None,
    ):
        self._init_shared(unet, vae, noise_scheduler, caption_drop_prob, offset_noise, min_snr_gamma)
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self._freeze("vae", "text_encoder", "text_encoder_2")
        self.micro_conditioning_drop_prob = micro_conditioning_drop_prob
        if tokenizer.model_max_length != tokenizer_2.model_max_length:
            raise ValueError(f"the two tokenizers' model_max_length differ ({tokenizer.model_max_length} vs "
                             f"{tokenizer_2.model_max_length}): their hidden states are concatenated per token")
        if empty_caption_latents is None or empty_pooled_caption_latents is None:
            hidden, pooled = self.encode_prompts([""])
            empty_caption_latents, empty_pooled_caption_latents = hidden[0], pooled[0]
        self._register_constant("empty_caption_latents", empty_caption_latents)
        self._register_constant("empty_pooled_caption_latents", empty_pooled_caption_latents)

    # ---- text ---------------------------------------------------------------------------------------------
    def tokenize_2(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer_2(
            list(prompts), padding="max_length", max_length=self.tokenizer_2.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids

    def encode_tokens(self, token_ids: torch.Tensor, token_ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_sdxl_text(self.text_encoder, self.text_encoder_2, token_ids, token_ids_2)

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_tokens(self.tokenize(prompts), self.tokenize_2(prompts))

    # ---- conditioning -------------------------------------------------------------------------------------
    def time_ids(self, original_size: torch.Tensor, crop_top_left: torch.Tensor, target_size: torch.Tensor) -> torch.Tensor:
        """(B, 6) float: original (h, w), crop (top, left), target (h, w), in pixels."""
        return torch.cat([original_size, crop_top_left, target_size], dim=1).float()

    def drop_captions(self, caption_latents: torch.Tensor, pooled: torch.Tensor | None = None, generator=None):
        """One draw per sample swaps hidden states and pooled embedding together for the empty caption's."""
        if not self.caption_drop_prob:
            return caption_latents, pooled
        drop = torch.rand(caption_latents.shape[0], generator=generator, device=caption_latents.device)
        drop = drop < self.caption_drop_prob
        empty = self.empty_caption_latents.to(caption_latents.dtype).expand_as(caption_latents)
        empty_pooled = self.empty_pooled_caption_latents.to(pooled.dtype).expand_as(pooled)
        return torch.where(drop[:, None, None], empty, caption_latents), torch.where(drop[:, None], empty_pooled, pooled)

    def drop_micro_conditioning(self, original_size, crop_top_left, target_size, generator=None):
        if not self.micro_conditioning_drop_prob:
            return original_size, crop_top_left
        drop = torch.rand(original_size.shape[0], generator=generator, device=original_size.device)
        drop = (drop < self.micro_conditioning_drop_prob)[:, None]
        return torch.where(drop, target_size, original_size), torch.where(drop, torch.zeros_like(crop_top_left), crop_top_left)

    def batch_conditioning(self, batch, latents: torch.Tensor) -> dict:
        if CAPTION_LATENTS in batch:
            hidden, pooled = batch[CAPTION_LATENTS], batch[POOLED_CAPTION_LATENTS]
        else:
            hidden, pooled = self.encode_tokens(batch[CAPTIONS], batch[CAPTIONS_2])
        hidden, pooled = self.drop_captions(hidden, pooled)
        n, device = latents.shape[0], latents.device
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        target = torch.tensor([latents.shape[-2] * factor, latents.shape[-1] * factor], device=device).expand(n, 2)
        original = batch[ORIGINAL_SIZE].to(device) if ORIGINAL_SIZE in batch else target
        crop = batch[CROP_TOP_LEFT].to(device) if CROP_TOP_LEFT in batch else torch.zeros_like(target)
        original, crop = self.drop_micro_conditioning(original, crop, target)
        time_ids = self.time_ids(original, crop, target).to(hidden.dtype)
        return {"encoder_hidden_states": hidden, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}

    def prompt_conditioning(self, prompts: Sequence[str], height: int, width: int) -> dict:
        """Sampling conditioning with diffusers' defaults: original size = target size, crop at (0, 0)."""
        hidden, pooled = self.encode_prompts(prompts)
        size = torch.tensor([[height, width]], device=hidden.device).expand(len(prompts), 2)
        time_ids = self.time_ids(size, torch.zeros_like(size), size).to(hidden.dtype)
        return {"encoder_hidden_states": hidden, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}

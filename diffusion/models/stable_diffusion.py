"""The training model: a trainable UNet conditioned on a frozen text encoder, in a frozen VAE's latent space.

Batches carry either pixels and token ids (`image`, `captions`) or precomputed latents
(`image_latents`, already multiplied by the VAE scaling factor at precompute time, and `caption_latents`);
the VAE and text encoder are skipped for whatever is precomputed. Classifier-free-guidance dropout
swaps a caption's *latents* for the empty caption's, so it works the same in both cases.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from composer.models import ComposerModel
from torchmetrics import MeanMetric

from diffusion.models.noise import min_snr_weights, sample_noise
from diffusion.models.samplers import inference_scheduler

IMAGE, CAPTIONS, IMAGE_LATENTS, CAPTION_LATENTS = "image", "captions", "image_latents", "caption_latents"


class StableDiffusion(ComposerModel):
    def __init__(
        self,
        unet,
        vae,
        text_encoder,
        tokenizer,
        noise_scheduler,
        caption_drop_prob: float = 0.1,
        offset_noise: float = 0.0,
        min_snr_gamma: float | None = None,
        empty_caption_latents: torch.Tensor | None = None,
    ):
        self._init_shared(unet, vae, noise_scheduler, caption_drop_prob, offset_noise, min_snr_gamma)
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self._freeze("vae", "text_encoder")
        if empty_caption_latents is None:
            empty_caption_latents = self.encode_prompts([""])[0]
        self._register_constant("empty_caption_latents", empty_caption_latents)

    def _init_shared(self, unet, vae, noise_scheduler, caption_drop_prob, offset_noise, min_snr_gamma) -> None:
        """What every conditioning scheme has: the trainable UNet, the frozen VAE, the noise and its loss."""
        ComposerModel.__init__(self)
        self.unet, self.vae = unet, vae
        self.noise_scheduler = noise_scheduler
        self.caption_drop_prob = caption_drop_prob
        self.offset_noise = offset_noise
        self.min_snr_gamma = min_snr_gamma
        self.latent_scale = vae.config.scaling_factor
        self.train_loss = MeanMetric()

    def _freeze(self, *names: str) -> None:
        self._frozen = names
        for name in names:
            getattr(self, name).requires_grad_(False)
            getattr(self, name).eval()

    def _register_constant(self, name: str, value: torch.Tensor) -> None:
        # A buffer, so it follows the model to its device and into checkpoints.
        self.register_buffer(name, value.float().detach(), persistent=True)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in getattr(self, "_frozen", ()):
            getattr(self, name).eval()
        return self

    # ---- conditioning -------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids

    @torch.no_grad()
    def encode_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(token_ids.to(self.text_encoder.device))[0]

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.encode_tokens(self.tokenize(prompts))

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled latents. The only place the scaling factor is applied."""
        return self.vae.encode(images).latent_dist.sample() * self.latent_scale

    def drop_captions(self, caption_latents: torch.Tensor, generator=None) -> torch.Tensor:
        """Replaces each caption by the empty caption with probability `caption_drop_prob` (CFG training)."""
        if not self.caption_drop_prob:
            return caption_latents
        drop = torch.rand(caption_latents.shape[0], generator=generator, device=caption_latents.device)
        drop = (drop < self.caption_drop_prob)[:, None, None]
        empty = self.empty_caption_latents.to(caption_latents.dtype).expand_as(caption_latents)
        return torch.where(drop, empty, caption_latents)

    def batch_conditioning(self, batch, latents: torch.Tensor) -> dict:
        """The UNet's conditioning keyword arguments for a training batch, after CFG dropout."""
        if CAPTION_LATENTS in batch:
            caption_latents = batch[CAPTION_LATENTS]
        else:
            caption_latents = self.encode_tokens(batch[CAPTIONS])
        return {"encoder_hidden_states": self.drop_captions(caption_latents)}

    def prompt_conditioning(self, prompts: Sequence[str], height: int, width: int) -> dict:
        """The UNet's conditioning keyword arguments for sampling `prompts` at height x width pixels."""
        return {"encoder_hidden_states": self.encode_prompts(prompts)}

    # ---- training -------------------------------------------------------------------------------
    def forward(self, batch):
        latents = batch[IMAGE_LATENTS] if IMAGE_LATENTS in batch else self.encode_images(batch[IMAGE])
        conditioning = self.batch_conditioning(batch, latents)
        noise = sample_noise(latents, self.offset_noise)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
        )
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        prediction = self.unet(noisy, timesteps, **conditioning).sample
        return prediction, target, timesteps

    def loss(self, outputs, batch):
        prediction, target, timesteps = outputs
        per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.min_snr_gamma:
            per_sample = per_sample * min_snr_weights(self.noise_scheduler, timesteps, self.min_snr_gamma)
        return per_sample.mean()

    def eval_forward(self, batch, outputs=None):
        return outputs if outputs is not None else self.forward(batch)

    def get_metrics(self, is_train: bool = False):
        return {} if is_train else {"loss": self.train_loss}

    def update_metric(self, batch, outputs, metric) -> None:
        metric.update(self.loss(outputs, batch))

    # ---- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        sampler: str = "ddim",
        seed: int | Sequence[int] = 0,
        progress: bool = False,
    ) -> torch.Tensor:
        """Images in [0, 1], (N, 3, H, W). Sample i starts from noise seeded with `seed + i` (or seed[i]),
        the same noise diffusers' pipeline draws for a list of generators with those seeds."""
        device = self.empty_caption_latents.device
        n = len(prompts)
        seeds = list(seed) if isinstance(seed, Sequence) else [seed + i for i in range(n)]
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        height = height or self.unet.config.sample_size * factor
        width = width or self.unet.config.sample_size * factor
        cond = self.prompt_conditioning(prompts, height, width)
        uncond = self.prompt_conditioning(negative_prompts or [""] * n, height, width)
        dtype = cond["encoder_hidden_states"].dtype
        scheduler = inference_scheduler(sampler, self.noise_scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (self.unet.config.in_channels, height // factor, width // factor)
        latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        latents = latents.to(device=device, dtype=dtype) * scheduler.init_noise_sigma
        use_cfg = guidance_scale > 1.0
        context = _concat_conditioning(uncond, cond) if use_cfg else cond
        steps = scheduler.timesteps
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="sampling")
        for t in steps:
            model_input = torch.cat([latents] * 2) if use_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            pred = self.unet(model_input, t, **context).sample
            if use_cfg:
                pred_uncond, pred_cond = pred.chunk(2)
                pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
            latents = scheduler.step(pred, t, latents).prev_sample
        images = self.vae.decode(latents / self.latent_scale).sample
        return (images / 2 + 0.5).clamp(0, 1).float()


def _concat_conditioning(first: dict, second: dict) -> dict:
    """Batch-concatenates two conditioning dicts (nested ones, e.g. SDXL's added_cond_kwargs, too)."""
    return {
        key: _concat_conditioning(value, second[key]) if isinstance(value, dict) else torch.cat([value, second[key]])
        for key, value in first.items()
    }

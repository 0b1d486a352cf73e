"""Training-noise choices: the DDPM schedule, offset noise and Min-SNR-gamma loss weights."""
from __future__ import annotations

import torch
from diffusers import DDPMScheduler


def training_scheduler(
    prediction_type: str = "epsilon", zero_terminal_snr: bool = False, num_train_timesteps: int = 1000
) -> DDPMScheduler:
    """SD's schedule: scaled_linear betas 0.00085-0.012. `zero_terminal_snr` rescales them so the last
    step is pure noise (Lin et al. 2023); pair it with v-prediction."""
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"model.prediction_type: {prediction_type!r} is not 'epsilon' or 'v_prediction'")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", prediction_type=prediction_type,
        rescale_betas_zero_snr=zero_terminal_snr, clip_sample=False,
        timestep_spacing="trailing" if zero_terminal_snr else "leading", steps_offset=1,
    )


def sample_noise(latents: torch.Tensor, offset_noise: float, generator=None) -> torch.Tensor:
    """Gaussian noise; offset noise adds a per-channel constant so the model can shift mean brightness."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if offset_noise:
        noise = noise + offset_noise * torch.randn(
            latents.shape[:2] + (1, 1), generator=generator, device=latents.device, dtype=latents.dtype
        )
    return noise


def snr(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    return alphas_cumprod / (1 - alphas_cumprod)


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023) per-sample loss weights for epsilon or v targets."""
    s = snr(scheduler, timesteps).float()
    clipped = torch.clamp(s, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (s + 1)
    # epsilon: min(snr, gamma)/snr; at zero terminal SNR the last step has snr=0, weight it as gamma-capped 1
    return torch.where(s > 0, clipped / s.clamp(min=1e-8), torch.ones_like(s))

"""UNet layouts selectable from yaml (`model.unet`): the CommonCanvas S, L and XL models and tiny ones for tests.

Written out here (not downloaded) because the recipes train from scratch: only the layout is needed.
`attention_head_dim` follows diffusers' legacy meaning for SD2 (it holds the number of heads per level:
320/5 = 640/10 = 1280/20 = 64 channels per head).
"""
from __future__ import annotations

import copy

# SD2-base UNet ("S"): 4 levels 320/640/1280/1280, head dim 64, cross-attention 1024, linear projection.
SD2 = dict(
    sample_size=32,  # latent side at 256px; only a default for sampling, the UNet takes any multiple of 8
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[320, 640, 1280, 1280],
    layers_per_block=2,
    attention_head_dim=[5, 10, 20, 20],
    cross_attention_dim=1024,
    use_linear_projection=True,
    flip_sin_to_cos=True,
    freq_shift=0,
    norm_num_groups=32,
)

# SDXL-size UNet ("L"): SDXL's 3-level layout with 1/2/10 transformer layers, but no micro-conditioning
# (no added size/crop embeddings) and a single 1024-d text encoder, as CommonCanvas-L.
SDXL_SIZE = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[320, 640, 1280],
    layers_per_block=2,
    transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[5, 10, 20],
    cross_attention_dim=1024,
    use_linear_projection=True,
    flip_sin_to_cos=True,
    freq_shift=0,
    norm_num_groups=32,
)

# SDXL-base UNet ("XL", as CommonCanvas-XL): SDXL_SIZE's blocks with 2048-d cross-attention (two text encoders'
# hidden states concatenated) and micro-conditioning: 6 time ids x 256 + the 1280-d pooled embedding = 2816.
# sample_size 64: CommonCanvas-XL's native 512 px.
SDXL = dict(
    SDXL_SIZE,
    sample_size=64,
    cross_attention_dim=2048,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)

# A few-hundred-thousand-parameter UNet for CPU tests and the demo.
TINY = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[32, 64],
    layers_per_block=1,
    attention_head_dim=8,
    cross_attention_dim=32,
    use_linear_projection=True,
    norm_num_groups=8,
)

# TINY with SDXL's conditioning, for two tiny 32-d text encoders (projection 32): 6 x 8 + 32 = 80.
TINY_XL = dict(
    TINY,
    cross_attention_dim=64,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=80,
)

UNET_CONFIGS = {"sd2": SD2, "sdxl_size": SDXL_SIZE, "sdxl": SDXL, "tiny": TINY, "tiny_xl": TINY_XL}


def uses_micro_conditioning(config: dict) -> bool:
    """SDXL's scheme (pooled text embedding + size/crop time ids), which needs StableDiffusionXL."""
    return config.get("addition_embed_type") == "text_time"


def unet_config(name: str, overrides: dict | None = None) -> dict:
    """The named layout with `overrides` (any UNet2DConditionModel config key) applied on top."""
    if name not in UNET_CONFIGS:
        raise ValueError(f"model.unet: unknown UNet layout {name!r}; choose one of {sorted(UNET_CONFIGS)}")
    config = copy.deepcopy(UNET_CONFIGS[name])
    config.update(overrides or {})
    return config

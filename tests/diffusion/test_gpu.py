"""GPU-only: one training step of the real SD2 UNet at 256px in bf16 with every speed-up (skipped without CUDA).

Throughput tables come from benchmarks/train_throughput.py; this only proves the full-size path runs.
"""
import time

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_sd2_step_bf16_with_all_speedups():
    from composer.algorithms.low_precision_groupnorm import apply_low_precision_groupnorm
    from composer.algorithms.low_precision_layernorm import apply_low_precision_layernorm
    from composer.core import Precision
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffusion.algorithms.fast_attention import choose_backend, set_attention
    from diffusion.models.noise import training_scheduler
    from diffusion.models.stable_diffusion import StableDiffusion
    from diffusion.models.tiny import save_tiny_tokenizer
    from diffusion.models.unet_configs import unet_config
    from transformers import CLIPTokenizer
    import tempfile

    tok = CLIPTokenizer.from_pretrained(save_tiny_tokenizer(tempfile.mkdtemp(), model_max_length=77))
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=4096,
                                        num_hidden_layers=2, num_attention_heads=16, max_position_embeddings=77))
    model = StableDiffusion(UNet2DConditionModel(**unet_config("sd2")), AutoencoderKL(), text, tok,
                            training_scheduler()).cuda()
    assert 860e6 < sum(p.numel() for p in model.unet.parameters()) < 870e6
    set_attention(model.unet, choose_backend("auto"))
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=1e-4)
    apply_low_precision_groupnorm(model.unet, Precision.AMP_BF16, optimizer)
    apply_low_precision_layernorm(model.unet, Precision.AMP_BF16, optimizer)
    batch = {"image_latents": torch.randn(16, 4, 32, 32, device="cuda"),
             "caption_latents": torch.randn(16, 77, 1024, device="cuda")}
    for step in range(3):
        torch.cuda.synchronize()
        start = time.time()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.loss(model(batch), batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        torch.cuda.synchronize()
        assert torch.isfinite(loss)
    print(f"sd2 256px bf16: {16 / (time.time() - start):.1f} images/s (batch 16, one step)")

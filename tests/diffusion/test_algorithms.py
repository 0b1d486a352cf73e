"""FastAttention and low-precision-norm surgery on the UNet; channels_last and compile switches build."""
import pytest
import torch
from composer.algorithms.low_precision_groupnorm.low_precision_groupnorm import LPGroupNorm
from composer.algorithms.low_precision_layernorm.low_precision_layernorm import LPLayerNorm
from composer.core import Precision
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from diffusion.algorithms.fast_attention import FastAttention, choose_backend, set_attention
from diffusion.algorithms.low_precision_norms import LowPrecisionNorms
from tests.diffusion.test_model import tiny_model


class FakeState:
    def __init__(self, model, precision):
        self.model, self.precision = model, precision
        self.optimizers = [torch.optim.AdamW(model.unet.parameters())]


class FakeLogger:
    def __init__(self):
        self.hparams = {}

    def log_hyperparameters(self, h):
        self.hparams.update(h)


def unet_call(model, n=2):
    torch.manual_seed(0)
    x = torch.randn(n, 4, 8, 8)
    context = torch.randn(n, 16, 32)
    return model.unet(x, torch.tensor([10, 500][:n]), encoder_hidden_states=context).sample


def test_auto_backend_on_cpu_is_sdpa():
    assert choose_backend("auto") == ("xformers" if torch.cuda.is_available() else "sdpa")
    with pytest.raises(ValueError):
        choose_backend("flash3")


def test_fast_attention_sets_processors_and_logs_which():
    model = tiny_model()
    logger = FakeLogger()
    algorithm = FastAttention("auto")
    algorithm.apply(None, FakeState(model, Precision.FP32), logger)
    processors = list(model.unet.attn_processors.values()) + list(model.vae.attn_processors.values())
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)
    assert logger.hparams["attention_backend"] == "sdpa"


def test_sdpa_matches_math_path_in_fp32_and_bf16():
    model = tiny_model().eval()
    set_attention(model.unet, "math")
    assert all(isinstance(p, AttnProcessor) for p in model.unet.attn_processors.values())
    with torch.no_grad():
        reference = unet_call(model)
        set_attention(model.unet, "sdpa")
        fast = unet_call(model)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast_bf16 = unet_call(model).float()
        set_attention(model.unet, "math")
        math_bf16 = unet_call(model).float()
    torch.testing.assert_close(fast_bf16, math_bf16, rtol=5e-2, atol=5e-2)


def test_low_precision_norms_replace_unet_modules_only():
    model = tiny_model()
    groupnorms = sum(isinstance(m, torch.nn.GroupNorm) for m in model.unet.modules())
    layernorms = sum(isinstance(m, torch.nn.LayerNorm) for m in model.unet.modules())
    assert groupnorms and layernorms
    with torch.no_grad():
        before = unet_call(model)
    LowPrecisionNorms().apply(None, FakeState(model, Precision.AMP_BF16), FakeLogger())
    assert sum(isinstance(m, LPGroupNorm) for m in model.unet.modules()) == groupnorms
    assert sum(isinstance(m, LPLayerNorm) for m in model.unet.modules()) == layernorms
    # the frozen VAE and text encoder keep their own norms
    assert not any(isinstance(m, (LPGroupNorm, LPLayerNorm)) for m in model.vae.modules())
    assert not any(isinstance(m, (LPGroupNorm, LPLayerNorm)) for m in model.text_encoder.modules())
    with torch.no_grad():
        after = unet_call(model)  # outside autocast the LP modules compute exactly as before
    torch.testing.assert_close(after, before)


def test_low_precision_norms_do_nothing_in_fp32():
    model = tiny_model()
    with pytest.warns(Warning):
        LowPrecisionNorms().apply(None, FakeState(model, Precision.FP32), FakeLogger())
    assert not any(isinstance(m, LPGroupNorm) for m in model.unet.modules())

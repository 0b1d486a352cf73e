"""The StableDiffusion model on tiny components: training options, CFG dropout, latent scaling, sampling."""
import pytest
import torch

from diffusion.models.builder import build_stable_diffusion
from diffusion.models.noise import min_snr_weights, training_scheduler


def tiny_model(**kwargs):
    torch.manual_seed(0)
    return build_stable_diffusion(unet="tiny", vae="tiny", text_encoder="tiny", tokenizer="tiny", **kwargs)


def pixel_batch(model, n=4):
    torch.manual_seed(1)
    return {"image": torch.rand(n, 3, 32, 32) * 2 - 1, "captions": model.tokenize(["a red circle"] * n)}


@pytest.mark.parametrize("options", [
    dict(prediction_type="epsilon"),
    dict(prediction_type="v_prediction"),
    dict(prediction_type="v_prediction", zero_terminal_snr=True),
    dict(offset_noise=0.1),
    dict(min_snr_gamma=5.0),
    dict(prediction_type="v_prediction", min_snr_gamma=5.0),
])
def test_each_option_trains(options):
    model = tiny_model(**options)
    batch = pixel_batch(model)
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.unet.parameters()]
    for _ in range(3):
        loss = model.loss(model(batch), batch)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.unet.parameters()))
    # frozen parts get no gradients
    assert all(p.grad is None for p in model.vae.parameters())
    assert all(p.grad is None for p in model.text_encoder.parameters())


def test_v_prediction_target_is_velocity():
    model = tiny_model(prediction_type="v_prediction")
    batch = pixel_batch(model)
    torch.manual_seed(3)
    latents = model.encode_images(batch["image"])
    torch.manual_seed(3)
    _, target, t = model(batch)
    # velocity = sqrt(a) * noise - sqrt(1 - a) * x0: not the noise itself
    assert target.shape == latents.shape
    assert not torch.allclose(target, torch.zeros_like(target))


def test_zero_terminal_snr_ends_at_pure_noise():
    assert training_scheduler(zero_terminal_snr=True).alphas_cumprod[-1] == 0
    assert training_scheduler(zero_terminal_snr=False).alphas_cumprod[-1] > 0


def test_min_snr_weights_cap_low_noise_steps():
    scheduler = training_scheduler("epsilon")
    w = min_snr_weights(scheduler, torch.tensor([0, 500, 999]), gamma=5.0)
    assert w[0] < 0.1 and w[2] == pytest.approx(1.0)  # small t: huge SNR, weight gamma/snr


def test_cfg_dropout_substitutes_empty_caption_latents_at_the_configured_rate():
    model = tiny_model(caption_drop_prob=0.3)
    precomputed = torch.randn(4000, *model.empty_caption_latents.shape)
    dropped = model.drop_captions(precomputed, generator=torch.Generator().manual_seed(0))
    is_empty = torch.isclose(dropped, model.empty_caption_latents).flatten(1).all(1)
    is_original = (dropped == precomputed).flatten(1).all(1)
    assert torch.all(is_empty ^ is_original)  # every row is either kept whole or fully replaced
    assert is_empty.float().mean().item() == pytest.approx(0.3, abs=0.03)


def test_cfg_dropout_reaches_forward_with_precomputed_latents(monkeypatch):
    model = tiny_model(caption_drop_prob=1.0)
    seen = {}
    real_unet_forward = model.unet.forward

    def spy(sample, t, encoder_hidden_states, **kw):
        seen["context"] = encoder_hidden_states
        return real_unet_forward(sample, t, encoder_hidden_states=encoder_hidden_states, **kw)

    monkeypatch.setattr(model.unet, "forward", spy)
    batch = {"image_latents": torch.randn(2, 4, 8, 8), "caption_latents": torch.randn(2, *model.empty_caption_latents.shape)}
    model(batch)
    assert torch.allclose(seen["context"], model.empty_caption_latents.expand(2, -1, -1))


def test_empty_caption_latents_loaded_from_precompute_file(tmp_path):
    import numpy as np

    stored = np.random.RandomState(0).randn(16, 32).astype("float16")
    np.save(tmp_path / "empty.npy", stored)
    model = tiny_model(empty_caption_latents=str(tmp_path / "empty.npy"))
    assert torch.allclose(model.empty_caption_latents, torch.from_numpy(stored).float())


def test_precomputed_latents_skip_vae_and_text_encoder_and_are_not_rescaled(monkeypatch):
    model = tiny_model(caption_drop_prob=0.0)
    monkeypatch.setattr(model.vae, "encode", lambda *a, **k: pytest.fail("VAE ran on precomputed latents"))
    monkeypatch.setattr(model.text_encoder, "forward", lambda *a, **k: pytest.fail("text encoder ran"))
    seen = {}
    real_unet_forward = model.unet.forward

    def spy(sample, t, encoder_hidden_states, **kw):
        seen["noisy"] = sample
        return real_unet_forward(sample, t, encoder_hidden_states=encoder_hidden_states, **kw)

    monkeypatch.setattr(model.unet, "forward", spy)
    latents = torch.randn(2, 4, 8, 8)
    _, noise, t = model({"image_latents": latents, "caption_latents": torch.randn(2, 16, 32)})
    # the UNet saw exactly add_noise(latents as stored, noise, t): no second scaling
    assert torch.allclose(seen["noisy"], model.noise_scheduler.add_noise(latents, noise, t), atol=1e-6)


def test_latent_scaling_applied_once_on_the_pixel_path():
    model = tiny_model()
    model.vae.register_to_config(scaling_factor=0.5)
    model.latent_scale = 0.5
    images = pixel_batch(model)["image"]
    mean = model.vae.encode(images).latent_dist.mean
    torch.manual_seed(0)
    encoded = model.encode_images(images)
    torch.manual_seed(0)
    sampled = model.vae.encode(images).latent_dist.sample()
    assert torch.allclose(encoded, sampled * 0.5)
    assert not torch.allclose(mean * 0.25, encoded, atol=1e-3)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpm"])
def test_generate_is_seeded_and_guided(sampler):
    model = tiny_model().eval()
    a = model.generate(["a red circle", "a blue square"], num_inference_steps=3, sampler=sampler, seed=7)
    b = model.generate(["a red circle", "a blue square"], num_inference_steps=3, sampler=sampler, seed=[7, 8])
    c = model.generate(["a red circle"], num_inference_steps=3, sampler=sampler, seed=8, negative_prompts=["blue"])
    assert a.shape == (2, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert torch.allclose(a, b)  # seed + i is the per-sample seed
    d = model.generate(["a blue square"], num_inference_steps=3, sampler=sampler, seed=8)
    assert torch.allclose(b[1:], d, atol=1e-5)  # a sample does not depend on its batch mates
    assert not torch.allclose(c, d)  # the negative prompt changes the guidance


def test_cross_attention_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="cross_attention_dim"):
        tiny_model(unet_overrides={"cross_attention_dim": 64})


def test_unknown_unet_layout():
    with pytest.raises(ValueError, match="model.unet"):
        build_stable_diffusion(unet="huge", vae="tiny", text_encoder="tiny", tokenizer="tiny")


def test_tiny_tokenizer_is_the_same_on_every_build_and_keeps_each_word_whole(tmp_path):
    from transformers import CLIPTokenizer

    from diffusion.models.tiny import DEFAULT_WORDS, save_tiny_tokenizer

    a, b = (save_tiny_tokenizer(str(tmp_path / name)) for name in ("a", "b"))
    for name in ("merges.txt", "vocab.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    tokenizer = CLIPTokenizer.from_pretrained(a)
    assert all(len(tokenizer(w).input_ids) == 3 for w in DEFAULT_WORDS)  # <start> word <end>
    assert len(tokenizer("zebra").input_ids) > 3  # an unknown word still tokenizes, into pieces

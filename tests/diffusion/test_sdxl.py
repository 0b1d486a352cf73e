"""SDXL conditioning on tiny models: time ids, CFG and micro-conditioning dropout, the dataset's crop record,
training through the yaml, and export to diffusers' StableDiffusionXLPipeline (same images as our generate)."""
import glob
import os

import pytest
import torch
from PIL import Image

from diffusion.config import load_config
from diffusion.export import export_pipeline
from diffusion.inference import load_model
from diffusion.models.builder import build_stable_diffusion
from diffusion.models.sdxl import CAPTIONS_2, CROP_TOP_LEFT, ORIGINAL_SIZE, POOLED_CAPTION_LATENTS, StableDiffusionXL
from diffusion.models.stable_diffusion import CAPTION_LATENTS, CAPTIONS, IMAGE_LATENTS
from diffusion.train import TrainConfig, build_trainer
from tests.diffusion.conftest import REPO, demo_overrides

DEMO = os.path.join(REPO, "yamls", "demo-cpu.yaml")
PROMPTS = ["a red circle on a blue background", "a yellow square on a black background"]
XL_OVERRIDES = {"model.unet": "tiny_xl"}


@pytest.fixture(scope="module")
def second_encoder(demo_dir, tmp_path_factory):
    """A saved tiny second tokenizer + projection text encoder: `tiny` would train a fresh BPE tokenizer on every
    load, and its tie-breaking is not deterministic, so a reloaded model could tokenize differently."""
    import shutil

    from transformers import CLIPTokenizer

    from diffusion.models import tiny

    root = tmp_path_factory.mktemp("xl_second_encoder")
    shutil.copytree(os.path.join(demo_dir, "models", "tokenizer"), root / "tokenizer_2")
    torch.manual_seed(1)
    tiny.tiny_text_encoder_with_projection(len(CLIPTokenizer.from_pretrained(str(root / "tokenizer_2")))).save_pretrained(
        root / "text_encoder_2")
    return {"model.text_encoder_2": str(root), "model.tokenizer_2": str(root)}


@pytest.fixture(scope="module")
def tiny_xl():
    torch.manual_seed(0)
    return build_stable_diffusion(unet="tiny_xl", vae="tiny", text_encoder="tiny", tokenizer="tiny",
                                  text_encoder_2="tiny", tokenizer_2="tiny").eval()


def test_builder_picks_the_class_by_conditioning_scheme_and_checks_dims(tiny_xl):
    assert isinstance(tiny_xl, StableDiffusionXL)
    assert tiny_xl.empty_caption_latents.shape == (16, 64) and tiny_xl.empty_pooled_caption_latents.shape == (32,)
    with pytest.raises(ValueError, match="set model.text_encoder_2 and model.tokenizer_2"):
        build_stable_diffusion(unet="tiny_xl", vae="tiny", text_encoder="tiny", tokenizer="tiny")
    with pytest.raises(ValueError, match="are for SDXL layouts"):
        build_stable_diffusion(unet="tiny", vae="tiny", text_encoder="tiny", tokenizer="tiny", text_encoder_2="tiny")
    with pytest.raises(ValueError, match="projection_class_embeddings_input_dim=90"):
        build_stable_diffusion(unet="tiny_xl", unet_overrides={"projection_class_embeddings_input_dim": 90}, vae="tiny",
                               text_encoder="tiny", tokenizer="tiny", text_encoder_2="tiny", tokenizer_2="tiny")


def test_sdxl_layout_is_sdxl_base():
    from diffusion.models.unet_configs import unet_config

    config = unet_config("sdxl")
    assert config["block_out_channels"] == [320, 640, 1280] and config["transformer_layers_per_block"] == [1, 2, 10]
    assert config["cross_attention_dim"] == 2048 and config["addition_embed_type"] == "text_time"
    assert config["projection_class_embeddings_input_dim"] == 6 * config["addition_time_embed_dim"] + 1280
    assert config["sample_size"] == 64


def test_time_ids_change_the_unet_output(tiny_xl):
    torch.manual_seed(1)
    noisy, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 500])
    cond = tiny_xl.prompt_conditioning(PROMPTS, 32, 32)
    base = tiny_xl.unet(noisy, t, **cond).sample
    again = tiny_xl.unet(noisy, t, **cond).sample
    cropped = dict(cond, added_cond_kwargs=dict(cond["added_cond_kwargs"]))
    cropped["added_cond_kwargs"]["time_ids"] = tiny_xl.time_ids(
        torch.tensor([[64, 48]] * 2), torch.tensor([[16, 0]] * 2), torch.tensor([[32, 32]] * 2))
    torch.testing.assert_close(base, again)
    assert (tiny_xl.unet(noisy, t, **cropped).sample - base).abs().max() > 1e-4


def _precomputed_batch(n):
    return {IMAGE_LATENTS: torch.randn(n, 4, 8, 8), CAPTION_LATENTS: torch.randn(n, 16, 64) + 5,
            POOLED_CAPTION_LATENTS: torch.randn(n, 32) + 5,
            ORIGINAL_SIZE: torch.tensor([[64, 48]] * n), CROP_TOP_LEFT: torch.tensor([[8, 0]] * n)}


def test_cfg_dropout_swaps_hidden_states_and_pooled_together(tiny_xl):
    tiny_xl.caption_drop_prob = 0.3
    try:
        batch = _precomputed_batch(4000)
        torch.manual_seed(3)
        cond = tiny_xl.batch_conditioning(batch, batch[IMAGE_LATENTS])
    finally:
        tiny_xl.caption_drop_prob = 0.1
    hidden_dropped = (cond["encoder_hidden_states"] == tiny_xl.empty_caption_latents).all(dim=(1, 2))
    pooled_dropped = (cond["added_cond_kwargs"]["text_embeds"] == tiny_xl.empty_pooled_caption_latents).all(dim=1)
    assert torch.equal(hidden_dropped, pooled_dropped)
    assert abs(hidden_dropped.float().mean().item() - 0.3) < 0.03
    kept = ~hidden_dropped
    assert torch.equal(cond["encoder_hidden_states"][kept], batch[CAPTION_LATENTS][kept])
    # the recorded size and crop reach the time ids; the target size comes from the latents (8 x 4 = 32 px)
    assert cond["added_cond_kwargs"]["time_ids"][0].tolist() == [64, 48, 8, 0, 32, 32]


def test_a_wide_bucket_trains_with_its_own_target_size(tiny_xl):
    """Aspect buckets: latents of a 24x40-px bucket; the time ids carry that target, and the loss is finite."""
    batch = {**_precomputed_batch(2), IMAGE_LATENTS: torch.randn(2, 4, 6, 10), CROP_TOP_LEFT: torch.tensor([[0, 4]] * 2)}
    cond = tiny_xl.batch_conditioning(batch, batch[IMAGE_LATENTS])
    assert cond["added_cond_kwargs"]["time_ids"][0, 2:].tolist() == [0, 4, 24, 40]
    torch.manual_seed(0)
    assert torch.isfinite(tiny_xl.loss(tiny_xl(batch), batch))


def test_micro_conditioning_dropout_uses_the_sampling_defaults(tiny_xl):
    tiny_xl.micro_conditioning_drop_prob, tiny_xl.caption_drop_prob = 0.5, 0.0
    try:
        batch = _precomputed_batch(2000)
        torch.manual_seed(4)
        time_ids = tiny_xl.batch_conditioning(batch, batch[IMAGE_LATENTS])["added_cond_kwargs"]["time_ids"]
    finally:
        tiny_xl.micro_conditioning_drop_prob, tiny_xl.caption_drop_prob = 0.0, 0.1
    neutral = (time_ids == torch.tensor([32.0, 32, 0, 0, 32, 32])).all(dim=1)
    recorded = (time_ids == torch.tensor([64.0, 48, 8, 0, 32, 32])).all(dim=1)
    assert torch.all(neutral | recorded) and abs(neutral.float().mean().item() - 0.5) < 0.05


@pytest.mark.parametrize("random_crop", [False, True])
def test_square_crop_records_where_it_cropped(random_crop):
    from torchvision import transforms

    from diffusion.datasets.text_image import SquareCrop

    crop = SquareCrop(32, random_crop=random_crop)
    wide = Image.effect_noise((128, 64), 40).convert("RGB")
    torch.manual_seed(0)
    pixels, (top, left) = crop(wide)
    assert pixels.shape == (3, 32, 32) and top == 0 and 0 <= left <= 32  # resized to 64 x 32
    torch.manual_seed(0)
    reference_crop = transforms.RandomCrop(32) if random_crop else transforms.CenterCrop(32)
    reference = transforms.Compose([crop.resize, reference_crop, crop.to_tensor])(wide)
    torch.testing.assert_close(pixels, reference)  # the same pixels the torchvision pipeline gives
    assert random_crop or left == 16
    torch.testing.assert_close(pixels, crop.to_tensor(crop.resize(wide))[:, top:top + 32, left:left + 32])


def _train_xl(demo_dir, out_dir, batches, second_encoder):
    overrides = {"trainer.max_duration": f"{batches}ba", "trainer.save_interval": f"{batches}ba",
                 "algorithms.ema.half_life": "1ba", "scheduler.t_warmup": "1ba", "trainer.seed": 5, **XL_OVERRIDES,
                 **second_encoder,
                 # the pixel path: the demo's precomputed latents are the one-encoder model's
                 "dataset.local": f"{demo_dir}/data/shapes", "dataset.precomputed_latents": False,
                 "dataset.caption_key": "caption", "model.empty_caption_latents": None}
    trainer = build_trainer(load_config(DEMO, demo_overrides(demo_dir, out_dir, **overrides), TrainConfig))
    seen = []  # the batch keys the model saw
    original_forward = trainer.state.model.forward

    def forward(batch):
        seen.append(sorted(batch))
        return original_forward(batch)

    trainer.state.model.forward = forward
    trainer.fit()
    trainer.close()
    (checkpoint,) = glob.glob(os.path.join(out_dir, "checkpoints", f"ep*-ba{batches}-rank0.pt"))
    return checkpoint, seen


def test_xl_trains_from_yaml_and_exports_to_sdxl_pipeline(demo_dir, second_encoder, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    checkpoint, seen = _train_xl(demo_dir, str(tmp_path / "run"), batches=2, second_encoder=second_encoder)
    assert seen and all({CAPTIONS, CAPTIONS_2, ORIGINAL_SIZE, CROP_TOP_LEFT} <= set(keys) for keys in seen)
    model = load_model(checkpoint, ema=True)
    assert isinstance(model, StableDiffusionXL)
    exported = export_pipeline(checkpoint, str(tmp_path / "pipeline"), ema=True)
    for part in ("text_encoder_2/model.safetensors", "tokenizer_2/vocab.json", "model_index.json"):
        assert os.path.isfile(os.path.join(exported, part)), part
    card = open(os.path.join(exported, "README.md")).read()
    assert "StableDiffusionXLPipeline.from_pretrained" in card and "micro-conditioning" in card

    pipe = StableDiffusionXLPipeline.from_pretrained(exported, local_files_only=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    expected = model.generate(PROMPTS, num_inference_steps=3, guidance_scale=4.0, seed=7)
    got = pipe(PROMPTS, num_inference_steps=3, guidance_scale=4.0, output_type="pt", height=32, width=32,
               generator=[torch.Generator().manual_seed(7 + i) for i in range(len(PROMPTS))]).images
    assert got.shape == expected.shape == (2, 3, 32, 32)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    other_seed = model.generate(PROMPTS, num_inference_steps=3, guidance_scale=4.0, seed=8)
    assert (other_seed - expected).abs().max() > 1e-2  # the comparison above is not vacuous
    again = load_model(exported).generate(PROMPTS, num_inference_steps=3, guidance_scale=4.0, seed=7)
    assert isinstance(load_model(exported), StableDiffusionXL)
    torch.testing.assert_close(again, expected, rtol=0, atol=1e-5)

    # our sampling CLI takes the SDXL folder and the checkpoint alike (eval's generation goes through load_model too)
    from diffusion.generate import main as generate_main

    for source in (exported, checkpoint):
        out = tmp_path / ("gen_" + os.path.basename(source))
        assert generate_main([source, "--prompt", PROMPTS[0], "--n", "2", "--steps", "2", "--out", str(out)]) == 0
        assert sorted(os.listdir(out)) == ["generate.json", "grid.png", "p000_s0.png", "p000_s1.png"]


def test_flops_only_counts_an_sdxl_step_at_real_size():
    from benchmarks.train_throughput import count_train_flops_per_image, meta_model

    model = meta_model("sdxl")
    assert isinstance(model, StableDiffusionXL)
    assert 2.5e9 < sum(p.numel() for p in model.unet.parameters()) < 2.6e9  # SDXL-base's UNet: 2.57B
    flops = count_train_flops_per_image(model, 256, latents=True)
    assert 1.0e12 < flops < 1.5e12

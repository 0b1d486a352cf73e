"""data_prep.precompute_latents for SDXL (two text encoders): stored hidden states, pooled embeddings, original
sizes and crops equal what StableDiffusionXL computes, and the shards train the XL model through the yaml."""
import io
import os

import numpy as np
import pytest
import torch
from mds_inputs import write_inputs
from PIL import Image

from data_prep import schema
from data_prep.precompute_latents import main
from data_prep.shards import iter_mds
from diffusion.config import load_config
from diffusion.datasets.text_image import SquareCrop
from diffusion.models import tiny
from diffusion.models.builder import build_stable_diffusion
from diffusion.models.sdxl import CROP_TOP_LEFT, ORIGINAL_SIZE, POOLED_CAPTION_LATENTS
from diffusion.train import TrainConfig, build_trainer
from tests.diffusion.conftest import REPO, demo_overrides

N, RESOLUTIONS = 6, (16, 32)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """Tiny VAE and both tokenizer/text-encoder pairs saved once, so the stage and the test load the same weights."""
    from transformers import CLIPTokenizer

    root = tmp_path_factory.mktemp("xl_models")
    torch.manual_seed(0)
    tiny.tiny_vae().save_pretrained(root / "vae")
    for tok, enc, build in (("tokenizer", "text_encoder", tiny.tiny_text_encoder),
                            ("tokenizer_2", "text_encoder_2", tiny.tiny_text_encoder_with_projection)):
        tok_dir = tiny.save_tiny_tokenizer(str(root / tok))
        build(len(CLIPTokenizer.from_pretrained(tok_dir))).save_pretrained(root / enc)
    return str(root)


@pytest.fixture(scope="module")
def stage(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("xl_latents")
    inputs = write_inputs(root / "in", N, caption_column=schema.BLIP2_CAPTION)
    m = models_dir
    main([str(root / "in"), str(root / "out"), "--vae", m, "--text-encoder", m, "--tokenizer", m,
          "--text-encoder-2", m, "--tokenizer-2", m, "--resolutions", *map(str, RESOLUTIONS), "--dtype", "fp32",
          "--batch-size", "4", "--workers", "1", "--no-progress"])
    model = build_stable_diffusion(unet="tiny_xl", vae=m, text_encoder=m, tokenizer=m, text_encoder_2=m, tokenizer_2=m)
    return str(root / "out"), inputs, model.eval()


def test_stored_sdxl_conditioning_equals_the_models(stage):
    out, inputs, model = stage
    rows = dict(iter_mds(out))
    assert len(rows) == N
    for key, sample in rows.items():
        caption = inputs[key][schema.BLIP2_CAPTION]
        hidden, pooled = model.encode_prompts([caption])
        np.testing.assert_allclose(sample[schema.CAPTION_LATENTS], hidden[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(sample[schema.POOLED_CAPTION_LATENTS], pooled[0].numpy(), atol=1e-5)
        image = Image.open(io.BytesIO(inputs[key][schema.IMAGE])).convert("RGB")
        assert sample[schema.ORIGINAL_SIZE].tolist() == [image.height, image.width]
        for res in RESOLUTIONS:
            _, crop = SquareCrop(res)(image)
            assert sample[schema.crop_top_left_key(res)].tolist() == list(crop)
    assert any(sample[schema.crop_top_left_key(32)].any() for sample in rows.values())  # some crops are off-centre 0
    empty_hidden, empty_pooled = model.encode_prompts([""])
    np.testing.assert_allclose(np.load(os.path.join(out, schema.EMPTY_CAPTION_LATENTS_FILE)), empty_hidden[0], atol=1e-5)
    np.testing.assert_allclose(np.load(os.path.join(out, schema.EMPTY_POOLED_CAPTION_LATENTS_FILE)), empty_pooled[0], atol=1e-5)


def test_xl_trains_on_its_precomputed_latents(stage, models_dir, tmp_path):
    out, _, _ = stage
    m = models_dir
    overrides = demo_overrides(m, str(tmp_path), **{
        "dataset.local": out, "dataset.precomputed_latents": True, "dataset.resolution": 32,
        "model.unet": "tiny_xl", "model.vae": m, "model.text_encoder": m, "model.tokenizer": m,
        "model.text_encoder_2": m, "model.tokenizer_2": m,
        "model.empty_caption_latents": os.path.join(out, schema.EMPTY_CAPTION_LATENTS_FILE),
        "model.empty_pooled_caption_latents": os.path.join(out, schema.EMPTY_POOLED_CAPTION_LATENTS_FILE),
        "trainer.max_duration": "2ba", "trainer.train_batch_size": 2, "trainer.save_interval": "2ba",
    })
    trainer = build_trainer(load_config(os.path.join(REPO, "yamls", "demo-cpu.yaml"), overrides, TrainConfig))
    model = trainer.state.model
    np.testing.assert_array_equal(model.empty_pooled_caption_latents.numpy(),
                                  np.load(os.path.join(out, schema.EMPTY_POOLED_CAPTION_LATENTS_FILE)))
    seen, forward = [], model.forward
    model.forward = lambda batch: (seen.append(batch), forward(batch))[1]
    trainer.fit()
    trainer.close()
    assert int(trainer.state.timestamp.batch) == 2 and len(seen) == 2
    for batch in seen:
        assert batch[POOLED_CAPTION_LATENTS].shape == (2, 32) and batch[ORIGINAL_SIZE].shape == (2, 2)
        assert batch[CROP_TOP_LEFT].shape == (2, 2)

"""Multi-caption training: the latents stage encodes extra caption columns (empty ones flagged as absent)
and the dataset trains each sample on one caption drawn reproducibly with the configured probabilities."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from streaming import MDSWriter

from data_prep import schema
from data_prep.precompute_latents import main as precompute
from diffusion.datasets.text_image import CaptionSelection, TextImageDataset
from diffusion.models import tiny
from diffusion.models.builder import build_stable_diffusion
from diffusion.models.stable_diffusion import CAPTION_LATENTS, CAPTIONS

N = 12


def test_draws_follow_the_probabilities_and_are_reproducible():
    selection = CaptionSelection("blip2_caption", {"blip2_caption": 0.25, "title": 0.75}, seed=3)
    draws = [selection.draw(i) for i in range(8000)]
    assert abs(draws.count("title") / len(draws) - 0.75) < 0.02
    assert draws == [CaptionSelection("blip2_caption", {"blip2_caption": 1, "title": 3}, seed=3).draw(i) for i in range(8000)]
    assert draws != [CaptionSelection("blip2_caption", {"blip2_caption": 0.25, "title": 0.75}, seed=4).draw(i)
                     for i in range(8000)]
    assert CaptionSelection("caption", None, 0).draw(5) == "caption"
    with pytest.raises(ValueError, match="caption_selection_probs"):
        CaptionSelection("caption", {"title": -1}, 0)
    # an empty drawn caption falls back to the default column
    only_title = CaptionSelection("blip2_caption", {"title": 1.0}, 0)
    assert only_title.text_column(0, {"title": "", "blip2_caption": "x"}) == "blip2_caption"
    assert only_title.text_column(0, {"title": "a dog", "blip2_caption": "x"}) == "title"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """N samples whose titles are empty at odd indices, their latents with --extra-caption-keys title, and the
    tiny saved models that made them."""
    from transformers import CLIPTokenizer

    root = tmp_path_factory.mktemp("multi_caption")
    torch.manual_seed(0)
    tiny.tiny_vae().save_pretrained(root / "models" / "vae")
    tok_dir = tiny.save_tiny_tokenizer(str(root / "models" / "tokenizer"))
    tiny.tiny_text_encoder(len(CLIPTokenizer.from_pretrained(tok_dir))).save_pretrained(root / "models" / "text_encoder")
    rng = np.random.default_rng(0)
    columns = {**schema.FETCH_COLUMNS, schema.BLIP2_CAPTION: "str"}
    with MDSWriter(out=str(root / "in"), columns=columns) as writer:
        for i in range(N):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(buffer, format="JPEG")
            sample = {k: "" for k, enc in schema.ATTRIBUTION_COLUMNS.items() if enc == "str"}
            sample.update(photo_id=f"p{i:03d}", orig_width=40, orig_height=24, license="CC-BY",
                          title="" if i % 2 else f"red square {i}", blip2_caption=f"a blue circle {i}")
            writer.write({**sample, schema.IMAGE: Image.open(buffer)})
    m = str(root / "models")
    precompute([str(root / "in"), str(root / "out"), "--vae", m, "--text-encoder", m, "--tokenizer", m,
                "--resolutions", "32", "--dtype", "fp32", "--extra-caption-keys", "title", "--workers", "1",
                "--no-progress"])
    model = build_stable_diffusion(unet="tiny", vae=m, text_encoder=m, tokenizer=m).eval()
    return root, model


def test_latents_stage_stores_extra_captions_and_zero_length_for_empty(shards):
    from data_prep.shards import iter_mds

    root, model = shards
    rows = dict(iter_mds(str(root / "out")))
    assert len(rows) == N
    for key, sample in rows.items():
        i = int(key[1:]) if key.startswith("p") else int(sample["photo_id"][1:])
        stored = sample[schema.caption_latents_key("title")]
        assert sample[schema.has_caption_key("title")] == (0 if i % 2 else 1)
        if i % 2:
            assert stored.size == 1  # a placeholder
        else:
            np.testing.assert_allclose(stored, model.encode_prompts([f"red square {i}"])[0].numpy(), atol=1e-5)


def test_dataset_trains_on_the_drawn_caption(shards, tmp_path):
    root, model = shards
    probs = {"blip2_caption": 0.5, "title": 0.5}
    precomputed = TextImageDataset(local=str(root / "out"), precomputed_latents=True, resolution=32, shuffle=False,
                                   caption_selection_probs=probs, caption_selection_seed=11, batch_size=1)
    pixels = TextImageDataset(local=str(root / "out"), tokenizer=model.tokenizer, resolution=32, shuffle=False,
                              caption_selection_probs=probs, caption_selection_seed=11, batch_size=1)
    selection = CaptionSelection("blip2_caption", probs, 11)
    used_title = 0
    for index in range(N):
        raw = precomputed.get_item(index)
        i = int(raw["photo_id"][1:])
        wants_title = selection.draw(index) == "title" and i % 2 == 0
        used_title += wants_title
        expected_text = f"red square {i}" if wants_title else f"a blue circle {i}"
        np.testing.assert_allclose(precomputed[index][CAPTION_LATENTS].numpy(),
                                   model.encode_prompts([expected_text])[0].numpy(), atol=1e-5)
        assert torch.equal(pixels[index][CAPTIONS], model.tokenize([expected_text])[0])
    assert 0 < used_title < N  # both captions were used

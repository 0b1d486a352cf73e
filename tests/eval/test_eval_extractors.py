import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from eval.extractors import INCEPTION_FILE, INCEPTION_URL, load_clip, load_inception, tiny_clip_model_and_tokenizer
from eval.features import extract_features
from eval.images import list_images

from eval_testdata import synthetic_image, write_folder


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


class _FakeLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 16, stride=16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(8, 2048, 1)

    def forward(self, x):
        return self.head(self.pool(self.conv(x)))  # (B, 2048, 1, 1), as Inception's pooled layers


class _FakeInception(nn.Module):
    """Has what clean-fid's InceptionV3W reads from the TorchScript file: `.layers` taking [-1, 1] input."""

    def __init__(self):
        super().__init__()
        self.layers = _FakeLayers()

    def forward(self, x, return_features: bool = False):
        return self.layers(x)


def test_missing_inception_names_the_file_place_and_source(tmp_path):
    path = str(tmp_path / "weights" / INCEPTION_FILE)
    with pytest.raises(FileNotFoundError) as e:
        load_inception(path, torch.device("cpu"))
    message = str(e.value)
    assert f"place {INCEPTION_FILE} at {path}" in message and INCEPTION_URL in message
    with pytest.raises(FileNotFoundError, match="place inception-2015-12-05.pt at"):
        load_inception(str(tmp_path), torch.device("cpu"))  # a folder without the file
    with pytest.raises(ValueError, match="must end in inception-2015-12-05.pt"):
        load_inception(str(tmp_path / "inception.pt"), torch.device("cpu"))


def test_inception_torchscript_file_loads_through_cleanfid_without_download(tmp_path):
    torch.manual_seed(0)
    fake = _FakeInception().eval()
    torch.jit.script(fake).save(str(tmp_path / INCEPTION_FILE))
    extractor = load_inception(str(tmp_path), torch.device("cpu"))  # folder form
    assert extractor.name == "inception_v3_clean"
    folder = write_folder(tmp_path / "imgs", [synthetic_image(np.random.default_rng(0), 64) for _ in range(3)])
    feats = extract_features(list_images(folder), extractor, batch_size=2)
    assert feats.shape == (3, 2048)
    from cleanfid.resize import build_resizer

    x = torch.from_numpy(build_resizer("clean")(np.array(Image.open(list_images(folder)[0]).convert("RGB"))))
    with torch.no_grad():
        direct = fake.layers((x.permute(2, 0, 1)[None] - 128) / 128).flatten()
    np.testing.assert_allclose(feats[0], direct.numpy(), rtol=1e-4, atol=1e-4)


def test_missing_clip_folder_says_what_to_place(tmp_path):
    with pytest.raises(FileNotFoundError, match="place a transformers CLIP folder"):
        load_clip(str(tmp_path / "clip-vit-large-patch14"), torch.device("cpu"))


def test_clip_folder_loads_offline_with_its_processor(tmp_path):
    from transformers import CLIPImageProcessor

    model, tokenizer = tiny_clip_model_and_tokenizer(seed=3)
    folder = tmp_path / "clip"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                       image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]).save_pretrained(folder)
    clip = load_clip(str(folder), torch.device("cpu"))
    assert clip.image_size == 32
    assert clip.mean.flatten().tolist() == [0.5, 0.5, 0.5] and clip.std.flatten().tolist() == [0.25] * 3
    images = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():
        expected = model.get_image_features(pixel_values=(images / 255 - 0.5) / 0.25)
    np.testing.assert_allclose(clip.embed_images(images).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        expected_text = model.get_text_features(**tokenizer(["red circle"], return_tensors="pt"))
    np.testing.assert_allclose(clip.embed_texts(["red circle"]), expected_text.numpy(), rtol=1e-5, atol=1e-6)

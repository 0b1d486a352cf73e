"""Feature models for FID/KID (clean-fid's Inception) and for CLIP-FID / CLIP score (a transformers CLIP).

Weights only ever come from local paths: these machines have no internet, and an eval that silently
downloads "the" Inception can silently change what FID means. A missing file fails up front with one
message saying which file to place where. `RANDOM_TINY` builds a tiny randomly initialised model
instead: tests and the CPU demo only, its numbers measure nothing.

A `FeatureExtractor` is what clean-fid's feature loop calls: it takes a batch of images as float
tensors in [0, 255] (already resized by `resize`, or by clean-fid's own "clean" resize to 299 when
`resize` is None) and returns one feature row per image.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn

from eval.config import RANDOM_TINY

INCEPTION_FILE = "inception-2015-12-05.pt"
# Where clean-fid itself downloads it from; quoted in the error so a user knows what to fetch.
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
CLIP_HINT = (
    "a transformers CLIP folder (config.json, model.safetensors or pytorch_model.bin, tokenizer files, "
    "preprocessor_config.json), e.g. openai/clip-vit-large-patch14 saved with save_pretrained or "
    "`huggingface-cli download` on a connected machine"
)
# OpenAI CLIP's normalisation, used when a CLIP folder has no preprocessor_config.json.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class FeatureExtractor:
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    resize: Optional[Callable[[np.ndarray], np.ndarray]] = None  # None: clean-fid's clean-mode resize to 299


# ---------------------------------------------------------------- Inception (FID, KID)

def inception_file(path: str) -> str:
    """`path` may name the file or the folder holding it; clean-fid loads it by its fixed name."""
    if os.path.isdir(path):
        path = os.path.join(path, INCEPTION_FILE)
    if os.path.basename(path) != INCEPTION_FILE:
        raise ValueError(f"inception_path must end in {INCEPTION_FILE} (clean-fid loads it by that name): got {path}")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"place {INCEPTION_FILE} at {path} (it is clean-fid's FID Inception, a TorchScript file; "
            f"download it on a connected machine from {INCEPTION_URL})"
        )
    return path


def load_inception(path: str, device: torch.device) -> FeatureExtractor:
    if path == RANDOM_TINY:
        return random_tiny_fid_extractor(device)
    from cleanfid.inception_torchscript import InceptionV3W

    path = inception_file(path)
    # download=False: clean-fid must never reach the network, the file is checked above.
    model = InceptionV3W(os.path.dirname(path), download=False, resize_inside=False).to(device).eval()
    return FeatureExtractor(name="inception_v3_clean", fn=model)


class _TinyConvFeatures(nn.Module):
    """Stands in for Inception in tests: [0, 255] images of any size -> 64 features."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 7, stride=4), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, 64),
        )

    def forward(self, x):
        return self.net((x - 128.0) / 128.0)


def _seeded(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    # Same random weights on every call, without disturbing the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def random_tiny_fid_extractor(device: torch.device) -> FeatureExtractor:
    model = _seeded(_TinyConvFeatures).to(device).eval()
    return FeatureExtractor(name=f"{RANDOM_TINY}-conv", fn=model)


# ---------------------------------------------------------------- CLIP (CLIP-FID, CLIP score)

class ClipEmbedder:
    """Image and text embeddings of one CLIP model, in its own projection space (not yet normalised)."""

    def __init__(self, model, tokenizer, image_size: int, mean, std, name: str, device: torch.device):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.name = name
        self.device = device

    def resize(self, image: np.ndarray) -> np.ndarray:
        """CLIP's own preprocessing geometry (bicubic short side, centre crop), kept as uint8 like clean-fid's CLIP."""
        from torchvision.transforms import functional as TF
        from torchvision.transforms import InterpolationMode

        img = Image.fromarray(image.astype(np.uint8)).convert("RGB")
        img = TF.resize(img, self.image_size, interpolation=InterpolationMode.BICUBIC)
        img = TF.center_crop(img, self.image_size)
        return np.asarray(img, dtype=np.uint8)

    @torch.no_grad()
    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(self.device, torch.float32) / 255.0 - self.mean) / self.std
        return self.model.get_image_features(pixel_values=x)

    def image_extractor(self) -> FeatureExtractor:
        return FeatureExtractor(name=self.name, fn=self.embed_images, resize=self.resize)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        max_len = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(
                texts[start:start + batch_size], padding=True, truncation=True, max_length=max_len,
                return_tensors="pt",
            ).to(self.device)
            out.append(self.model.get_text_features(**tokens).float().cpu().numpy())
        return np.concatenate(out)


def load_clip(path: str, device: torch.device) -> ClipEmbedder:
    if path == RANDOM_TINY:
        return random_tiny_clip(device)
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"place {CLIP_HINT} at {path}")
    model = CLIPModel.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    size, mean, std = model.config.vision_config.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    if os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
        size, mean, std = processor.crop_size["height"], processor.image_mean, processor.image_std
    return ClipEmbedder(model, tokenizer, size, mean, std, name=f"clip:{os.path.basename(os.path.normpath(path))}", device=device)


def tiny_clip_model_and_tokenizer(seed: int = 0):
    """A small random CLIPModel (32px images) and an offline tokenizer: tests and the demo only."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from diffusion.models.tiny import save_tiny_tokenizer

    tokenizer = CLIPTokenizer.from_pretrained(save_tiny_tokenizer(tempfile.mkdtemp(prefix="tiny_clip_tok_")))
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8,
        ),
        projection_dim=16,
    )
    model = _seeded(lambda: CLIPModel(config), seed)
    return model.eval(), tokenizer


def random_tiny_clip(device: torch.device) -> ClipEmbedder:
    model, tokenizer = tiny_clip_model_and_tokenizer()
    return ClipEmbedder(model, tokenizer, 32, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, name=f"clip:{RANDOM_TINY}", device=device)

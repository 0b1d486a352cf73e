"""Training batches from MDS shards written by data_prep: pixels + caption tokens, or precomputed latents.

Streaming does the sharding across ranks and dataloader workers, shuffling and resumption; this class only
turns one stored sample into the tensors `StableDiffusion.forward` reads. For SDXL (`tokenizer_2` given, or
shards holding pooled caption latents) a sample also carries the second tokenizer's ids (or the pooled
embedding) and its micro-conditioning: the original size and the crop's top-left corner, height first.
"""
from __future__ import annotations

import numpy as np
import torch
from streaming import Stream, StreamingDataset
from torch.utils.data import DataLoader
from torchvision import transforms

from data_prep import schema
from diffusion.models.sdxl import CAPTIONS_2, CROP_TOP_LEFT, ORIGINAL_SIZE, POOLED_CAPTION_LATENTS
from diffusion.models.stable_diffusion import CAPTION_LATENTS, CAPTIONS, IMAGE, IMAGE_LATENTS


class TextImageDataset(StreamingDataset):
    def __init__(
        self,
        *,
        tokenizer=None,
        tokenizer_2=None,
        caption_key: str = schema.BLIP2_CAPTION,
        resolution: int = 256,
        precomputed_latents: bool = False,
        random_crop: bool = False,
        **streaming_kwargs,
    ):
        super().__init__(**streaming_kwargs)
        if not precomputed_latents and tokenizer is None:
            raise ValueError("dataset: a tokenizer is needed unless precomputed_latents is true")
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.caption_key = caption_key
        self.precomputed_latents = precomputed_latents
        self.latents_key = schema.image_latents_key(resolution)
        self.crop_key = schema.crop_top_left_key(resolution)
        self.crop = SquareCrop(resolution, random_crop)

    def __getitem__(self, index):
        sample = super().__getitem__(index)
        if self.precomputed_latents:
            item = {
                IMAGE_LATENTS: _float_tensor(sample[self.latents_key]),
                CAPTION_LATENTS: _float_tensor(sample[schema.CAPTION_LATENTS]),
            }
            if POOLED_CAPTION_LATENTS in sample:
                item[POOLED_CAPTION_LATENTS] = _float_tensor(sample[POOLED_CAPTION_LATENTS])
                for key, stored in ((ORIGINAL_SIZE, ORIGINAL_SIZE), (CROP_TOP_LEFT, self.crop_key)):
                    if stored in sample:
                        item[key] = torch.tensor(np.asarray(sample[stored]), dtype=torch.long)
            return item
        image = sample[schema.IMAGE].convert("RGB")
        pixels, crop_top_left = self.crop(image)
        item = {IMAGE: pixels, CAPTIONS: _tokens(self.tokenizer, sample[self.caption_key])}
        if self.tokenizer_2 is not None:
            item[CAPTIONS_2] = _tokens(self.tokenizer_2, sample[self.caption_key])
            item[ORIGINAL_SIZE] = torch.tensor([image.height, image.width])
            item[CROP_TOP_LEFT] = torch.tensor(crop_top_left)
        return item


class SquareCrop:
    """Shorter side resized to `resolution`, then a square crop (centre or random) as a [-1, 1] tensor (the
    VAE's input range), with the crop's top-left corner in the resized image: SDXL's micro-conditioning is
    told where the crop was. Same pixels as Resize + CenterCrop/RandomCrop + ToTensor + Normalize."""

    def __init__(self, resolution: int, random_crop: bool = False):
        self.size, self.random_crop = resolution, random_crop
        self.resize = transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True)
        self.to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])

    def __call__(self, image) -> tuple[torch.Tensor, tuple[int, int]]:
        resized, size = self.resize(image), self.size
        if self.random_crop:
            top, left, _, _ = transforms.RandomCrop.get_params(resized, (size, size))
        else:
            top, left = int(round((resized.height - size) / 2.0)), int(round((resized.width - size) / 2.0))
        return self.to_tensor(resized.crop((left, top, left + size, top + size))), (top, left)


def _float_tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))  # a copy: stored arrays are read-only


def _tokens(tokenizer, caption: str) -> torch.Tensor:
    return tokenizer(
        caption, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt",
    ).input_ids[0]


def build_dataloader(
    batch_size: int,
    tokenizer=None,
    tokenizer_2=None,
    remote: str | None = None,
    local: str | None = None,
    streams: list[dict] | None = None,
    caption_key: str = schema.BLIP2_CAPTION,
    resolution: int = 256,
    precomputed_latents: bool = False,
    random_crop: bool = False,
    shuffle: bool = True,
    shuffle_seed: int = 9176,
    num_canonical_nodes: int | None = None,
    cache_limit: str | None = None,
    num_workers: int = 8,
    prefetch_factor: int | None = 2,
    persistent_workers: bool = True,
    pin_memory: bool = True,
    drop_last: bool = True,
) -> DataLoader:
    """`batch_size` is the per-rank batch (train.py divides the yaml's global batch by the world size).

    `streams`: a list of {remote, local, proportion | repeat | choose} to mix datasets, e.g. C shards with
    a weighted NC subset; or a single `remote`/`local` pair.
    """
    dataset = TextImageDataset(
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, caption_key=caption_key, resolution=resolution,
        precomputed_latents=precomputed_latents, random_crop=random_crop,
        streams=[Stream(**s) for s in streams] if streams else None,
        remote=remote, local=local, batch_size=batch_size, shuffle=shuffle, shuffle_seed=shuffle_seed,
        num_canonical_nodes=num_canonical_nodes, cache_limit=cache_limit,
    )
    return DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
        pin_memory=pin_memory and torch.cuda.is_available(),
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=persistent_workers and num_workers > 0,
    )

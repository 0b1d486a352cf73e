"""Training batches from MDS shards written by data_prep: pixels + caption tokens, or precomputed latents.

Streaming does the sharding across ranks and dataloader workers, shuffling and resumption; this class only
turns one stored sample into the tensors `StableDiffusion.forward` reads.
"""
from __future__ import annotations

import numpy as np
import torch
from streaming import Stream, StreamingDataset
from torch.utils.data import DataLoader
from torchvision import transforms

from data_prep import schema
from diffusion.models.stable_diffusion import CAPTION_LATENTS, CAPTIONS, IMAGE, IMAGE_LATENTS


class TextImageDataset(StreamingDataset):
    def __init__(
        self,
        *,
        tokenizer=None,
        caption_key: str = schema.BLIP2_CAPTION,
        resolution: int = 256,
        precomputed_latents: bool = False,
        random_crop: bool = False,
        **streaming_kwargs,
    ):
        super().__init__(**streaming_kwargs)
        if not precomputed_latents and tokenizer is None:
            raise ValueError("dataset: a tokenizer is needed unless precomputed_latents is true")
        self.tokenizer = tokenizer
        self.caption_key = caption_key
        self.precomputed_latents = precomputed_latents
        self.latents_key = schema.image_latents_key(resolution)
        crop = transforms.RandomCrop(resolution) if random_crop else transforms.CenterCrop(resolution)
        self.transform = transforms.Compose([
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
            crop,
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),  # [0, 1] -> [-1, 1], the VAE's input range
        ])

    def __getitem__(self, index):
        sample = super().__getitem__(index)
        if self.precomputed_latents:
            return {
                IMAGE_LATENTS: torch.from_numpy(np.asarray(sample[self.latents_key], dtype=np.float32)),
                CAPTION_LATENTS: torch.from_numpy(np.asarray(sample[schema.CAPTION_LATENTS], dtype=np.float32)),
            }
        caption = sample[self.caption_key]
        tokens = self.tokenizer(
            caption, padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids[0]
        return {IMAGE: self.transform(sample[schema.IMAGE].convert("RGB")), CAPTIONS: tokens}


def build_dataloader(
    batch_size: int,
    tokenizer=None,
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
        tokenizer=tokenizer, caption_key=caption_key, resolution=resolution,
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

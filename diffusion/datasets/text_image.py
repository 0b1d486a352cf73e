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
from diffusion.datasets.buckets import BUCKETS_FILE, bucket_streams, read_buckets_file
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
        caption_selection_probs: dict[str, float] | None = None,
        caption_selection_seed: int = 0,
        **streaming_kwargs,
    ):
        super().__init__(**streaming_kwargs)
        self.captions = CaptionSelection(caption_key, caption_selection_probs, caption_selection_seed)
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
            hidden_key, pooled_key = self.captions.latents_columns(index, sample)
            item = {
                IMAGE_LATENTS: _float_tensor(sample[self.latents_key]),
                CAPTION_LATENTS: _float_tensor(sample[hidden_key]),
            }
            if POOLED_CAPTION_LATENTS in sample:
                item[POOLED_CAPTION_LATENTS] = _float_tensor(sample[pooled_key])
                for key, stored in ((ORIGINAL_SIZE, ORIGINAL_SIZE), (CROP_TOP_LEFT, self.crop_key)):
                    if stored in sample:
                        item[key] = torch.tensor(np.asarray(sample[stored]), dtype=torch.long)
            return item
        image = sample[schema.IMAGE].convert("RGB")
        pixels, crop_top_left = self.crop(image)
        caption = sample[self.captions.text_column(index, sample)]
        item = {IMAGE: pixels, CAPTIONS: _tokens(self.tokenizer, caption)}
        if self.tokenizer_2 is not None:
            item[CAPTIONS_2] = _tokens(self.tokenizer_2, caption)
            item[ORIGINAL_SIZE] = torch.tensor([image.height, image.width])
            item[CROP_TOP_LEFT] = torch.tensor(crop_top_left)
        return item


class CaptionSelection:
    """Which caption a sample trains on (multi-caption training, e.g. BLIP-2 caption vs original title).

    `probs` maps caption columns to weights ({blip2_caption: 0.5, title: 0.5}); each sample draws from them
    with a generator seeded by (seed, sample index), so a run, a resumed run and every rank agree. A drawn
    caption that is empty for this sample (no title) falls back to `default` (dataset.caption_key).
    """

    def __init__(self, default: str, probs: dict[str, float] | None, seed: int):
        self.default, self.seed = default, seed
        probs = dict(probs or {})
        bad = {k: v for k, v in probs.items() if not isinstance(v, (int, float)) or v < 0}
        if bad or (probs and sum(probs.values()) <= 0):
            raise ValueError(f"dataset.caption_selection_probs: weights must be >= 0 and not all 0, got {probs}")
        self.keys = list(probs)
        self.weights = np.array([probs[k] for k in self.keys], dtype=np.float64) / max(sum(probs.values()), 1e-12)

    def draw(self, index: int) -> str:
        if not self.keys:
            return self.default
        return self.keys[np.random.default_rng([self.seed, index]).choice(len(self.keys), p=self.weights)]

    def text_column(self, index: int, sample: dict) -> str:
        key = self.draw(index)
        if key not in sample:
            raise KeyError(f"dataset.caption_selection_probs names {key!r}, which the shards do not have")
        return key if str(sample[key] or "").strip() else self.default

    def latents_columns(self, index: int, sample: dict) -> tuple[str, str]:
        """(hidden-states column, pooled column) of the drawn caption, as data_prep.precompute_latents names them."""
        key = self.draw(index)
        if key == self.default:
            return schema.CAPTION_LATENTS, POOLED_CAPTION_LATENTS
        hidden = schema.caption_latents_key(key)
        if hidden not in sample:
            raise KeyError(f"dataset.caption_selection_probs names {key!r}, but the shards have no {hidden!r} "
                           f"(run data_prep.precompute_latents with --extra-caption-keys {key})")
        if not int(sample.get(schema.has_caption_key(key), 1)):  # this sample has no such caption
            return schema.CAPTION_LATENTS, POOLED_CAPTION_LATENTS
        return hidden, schema.pooled_caption_latents_key(key)


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
    caption_selection_probs: dict | None = None,
    aspect_buckets: bool = False,
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
    `caption_selection_probs`: weights per caption column, e.g. {blip2_caption: 0.5, title: 0.5}; each sample
    trains on one, drawn reproducibly (seeded by shuffle_seed and the sample index). See CaptionSelection.
    `aspect_buckets`: `remote`/`local` hold data_prep.precompute_latents --aspect-buckets output; each bucket is
    streamed as its own stream and every global batch comes from one bucket (diffusion.datasets.buckets).
    """
    remote, local, streams, batching = _streams_and_batching(remote, local, streams, resolution,
                                                             precomputed_latents, aspect_buckets, batch_size)
    dataset = TextImageDataset(
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, caption_key=caption_key, resolution=resolution,
        precomputed_latents=precomputed_latents, random_crop=random_crop,
        caption_selection_probs=caption_selection_probs, caption_selection_seed=shuffle_seed,
        streams=[Stream(**s) for s in streams] if streams else None,
        remote=remote, local=local, batch_size=batch_size, shuffle=shuffle, shuffle_seed=shuffle_seed,
        num_canonical_nodes=num_canonical_nodes, cache_limit=cache_limit, batching_method=batching,
    )
    return DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
        pin_memory=pin_memory and torch.cuda.is_available(),
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=persistent_workers and num_workers > 0,
    )


def _streams_and_batching(remote, local, streams, resolution, precomputed_latents, aspect_buckets, batch_size):
    """(remote, local, streams, Streaming batching_method): with aspect_buckets, the per-bucket streams batched
    per stream in place of remote/local; else the yaml's own. A bucketed dataset read without aspect_buckets is
    refused: its batches would mix shapes."""
    if not aspect_buckets:
        if not streams and read_buckets_file(remote, local) is not None:
            raise ValueError(f"dataset: {local or remote} holds aspect-bucketed latents ({BUCKETS_FILE}); "
                             f"set dataset.aspect_buckets: true")
        return remote, local, streams, "random"
    if streams:
        raise ValueError("dataset.aspect_buckets reads one bucketed dataset (remote/local), not dataset.streams")
    if not precomputed_latents:
        raise ValueError("dataset.aspect_buckets needs dataset.precomputed_latents: true (the buckets are made "
                         "by data_prep.precompute_latents --aspect-buckets)")
    from composer.utils import dist

    return None, None, bucket_streams(remote, local, resolution, batch_size * dist.get_world_size()), "per_stream"

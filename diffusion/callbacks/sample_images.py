"""Samples fixed prompts with fixed seeds during training and writes PNG grids (rows: prompts, columns: seeds).

Uses the EMA weights when EMA is on, as the exported model will. Every rank samples (FSDP needs all
ranks in the forward pass); rank 0 writes the files and logs the images to any configured logger.
Grids carry provenance like every generated image (diffusion.provenance; `provenance: {enabled: false}` to
turn it off): the watermark holds the id of the weights sampled with (grids under 256x256 pixels stay unmarked).
"""
from __future__ import annotations

import contextlib
import os

import torch
from composer.core import Callback, State, get_precision_context
from composer.loggers import Logger
from composer.utils import dist
from PIL import Image

from diffusion.callbacks.ema_swap import ema_weights_active
from diffusion.provenance import Marker, ProvenanceConfig, model_id, prepare_signer

SIGNING_NAMES = tuple(f"callbacks.sample_images.provenance.{k}" for k in ("sign_cert", "sign_key", "signing_alg"))


def unwrap(model):
    return model.module if hasattr(model, "module") and not hasattr(model, "generate") else model


def image_grid(images: torch.Tensor, rows: int) -> Image.Image:
    """(N, 3, H, W) in [0, 1] -> one PIL grid of `rows` rows."""
    n, _, h, w = images.shape
    cols = -(-n // rows)
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, image in enumerate(images):
        array = (image.permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
        grid.paste(Image.fromarray(array), ((i % cols) * w, (i // cols) * h))
    return grid


def save_upscaled_copy(grid: Image.Image, path: str, cell: int, min_cell: int) -> str | None:
    """Writes `path` with an `_x{k}` suffix: the grid enlarged k times (nearest neighbour, so pixels stay
    sharp and colours exact) until each cell is at least `min_cell` px. None when cells are big enough."""
    factor = -(-min_cell // cell) if min_cell else 1
    if factor <= 1:
        return None
    root, ext = os.path.splitext(path)
    large = f"{root}_x{factor}{ext}"
    grid.resize((grid.width * factor, grid.height * factor), Image.NEAREST).save(large)
    return large


class SampleImages(Callback):
    def __init__(
        self,
        prompts: list,
        seeds: list = (0,),
        every_n_batches: int = 1000,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        sampler: str = "ddim",
        height: int | None = None,
        width: int | None = None,
        folder: str = "samples",  # relative to the trainer's save_folder
        upscaled_cell_px: int = 128,  # also write an enlarged copy when cells are smaller (0: don't)
        provenance: dict | None = None,  # diffusion.provenance.ProvenanceConfig fields
    ):
        self.prompts, self.seeds = list(prompts), list(seeds)
        self.every_n_batches = every_n_batches
        self.kwargs = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                           sampler=sampler, height=height, width=width)
        self.folder = folder
        self.upscaled_cell_px = upscaled_cell_px
        self.written: list[str] = []
        self.provenance = ProvenanceConfig(**(provenance or {}))
        self.signer = prepare_signer(self.provenance, SIGNING_NAMES) if dist.get_global_rank() == 0 else None

    def sample(self, state: State, logger: Logger, tag: str) -> str | None:
        model = unwrap(state.model)
        prompts = [p for p in self.prompts for _ in self.seeds]
        seeds = [s for _ in self.prompts for s in self.seeds]
        was_training = model.training
        model.eval()
        fsdp = contextlib.nullcontext()
        if getattr(state, "fsdp_enabled", False):
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            fsdp = FSDP.summon_full_params(state.model, writeback=False, recurse=True)
        with ema_weights_active(state), fsdp, torch.no_grad():
            with get_precision_context(state.precision):
                images = model.generate(prompts, seed=seeds, **self.kwargs)
            marked = self.provenance.enabled and dist.get_global_rank() == 0
            identity = model_id(model.unet) if marked else ""  # the weights just sampled with (EMA when on)
        model.train(was_training)
        if dist.get_global_rank() != 0:
            return None
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, f"samples_{tag}.png")
        grid = image_grid(images, rows=len(self.prompts))
        Marker(self.provenance, identity, f"training samples {tag}", signer=self.signer).save(grid, path)
        save_upscaled_copy(grid, path, min(images.shape[-2:]), self.upscaled_cell_px)
        self.written.append(path)
        logger.log_images(images, name="samples", step=int(state.timestamp.batch))
        return path

    def fit_start(self, state: State, logger: Logger) -> None:
        self.sample(state, logger, f"ba{int(state.timestamp.batch):07d}")

    def batch_end(self, state: State, logger: Logger) -> None:
        batch = int(state.timestamp.batch)
        if self.every_n_batches and batch % self.every_n_batches == 0:
            self.sample(state, logger, f"ba{batch:07d}")

    def fit_end(self, state: State, logger: Logger) -> None:
        batch = int(state.timestamp.batch)
        path = os.path.join(self.folder, f"samples_ba{batch:07d}.png")
        if path not in self.written:
            self.sample(state, logger, f"ba{batch:07d}")

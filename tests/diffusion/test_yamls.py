"""Every training yaml in yamls/ loads, builds and trains a batch on CPU with its sizes shrunk by override,
so no recipe rots. What cannot run on a CPU (bf16, FSDP, auto microbatching) is checked as written."""
import glob
import os

import numpy as np
import pytest
import torch
from composer.core import Callback
from omegaconf import OmegaConf
from streaming import MDSWriter

from diffusion.config import load_config
from diffusion.train import TrainConfig, build_trainer
from tests.diffusion.conftest import REPO

RECIPES = sorted(glob.glob(os.path.join(REPO, "yamls", "commoncanvas-*.yaml")))
SHRINK = {
    "sd2": "{block_out_channels: [32, 32, 32, 32], attention_head_dim: 8, cross_attention_dim: 32, "
           "norm_num_groups: 8, layers_per_block: 1}",
    "sdxl_size": "{block_out_channels: [32, 32, 32], attention_head_dim: 8, cross_attention_dim: 32, "
                 "transformer_layers_per_block: [1, 1, 2], norm_num_groups: 8, layers_per_block: 1}",
    # two tiny 32-d encoders: 64-d hidden states, 32-d pooled + 6 time ids x 8
    "sdxl": "{block_out_channels: [32, 32, 32], attention_head_dim: 8, cross_attention_dim: 64, "
            "transformer_layers_per_block: [1, 1, 2], norm_num_groups: 8, layers_per_block: 1, "
            "addition_time_embed_dim: 8, projection_class_embeddings_input_dim: 80}",
}


def test_all_six_recipes_exist():
    names = {os.path.basename(p) for p in RECIPES}
    assert names == {f"commoncanvas-{s}-{d}.yaml" for s in ("s", "l", "xl") for d in ("c", "nc")}


def write_latent_shards(remote, split, n=8, seq=16, dim=32, xl=False):
    """Shards as data_prep.precompute_latents writes them. XL: 2 x 32-d hidden states, pooled, size and crop at
    256 and 512 px, aspect-bucketed (--aspect-buckets: a square and a wide bucket folder, buckets.json)."""
    from diffusion.datasets.buckets import write_buckets_file

    rng = np.random.RandomState(0)
    out = os.path.join(remote, split, "latents-xl" if xl else "latents")
    columns = {"photo_id": "str", "latents_256": "ndarray", "caption_latents": "ndarray"}
    # bucket folder -> latent (h, w) at 256 and 512 px (tiny shapes: the test's UNet is shrunk too)
    buckets = {"bucket_256x256_512x512": ((8, 8), (16, 16)), "bucket_192x320_384x640": ((8, 12), (16, 24))}
    if xl:
        dim *= 2
        columns.update(latents_512="ndarray", pooled_caption_latents="ndarray", original_size="ndarray",
                       crop_top_left_256="ndarray", crop_top_left_512="ndarray")
    for b, (folder, (shape_256, shape_512)) in enumerate(buckets.items() if xl else [("", ((8, 8), None))]):
        with MDSWriter(out=os.path.join(out, folder), columns=columns) as w:
            for i in range(n):
                sample = {"photo_id": f"{b}-{i}", "latents_256": rng.randn(4, *shape_256).astype("float16"),
                          "caption_latents": rng.randn(seq, dim).astype("float16")}
                if xl:
                    sample.update(latents_512=rng.randn(4, *shape_512).astype("float16"),
                                  pooled_caption_latents=rng.randn(32).astype("float16"),
                                  original_size=np.array([300, 400], np.int32),
                                  crop_top_left_256=np.array([0, 40], np.int32),
                                  crop_top_left_512=np.array([0, 80], np.int32))
                w.write(sample)
    if xl:
        write_buckets_file(out, [256, 512], 64, {folder: n for folder in buckets})
    np.save(os.path.join(out, "empty_caption_latents.npy"), rng.randn(seq, dim).astype("float16"))
    if xl:
        np.save(os.path.join(out, "empty_pooled_caption_latents.npy"), rng.randn(32).astype("float16"))


def _on_cpu(tmp_path, unet: str, tag: str) -> list[str]:
    """Overrides that run a recipe for one batch on CPU: tiny frozen models, shrunk UNet, fp32, no FSDP; `tag`
    keeps a second run's cache, checkpoints and log apart from the first's."""
    return [
        f"variables.remote={tmp_path}/remote", f"variables.local={tmp_path}/cache{tag}", "variables.frozen_models=tiny",
        f"model.unet_overrides={SHRINK[unet]}",
        "trainer.precision=fp32", "trainer.parallelism_config=null", "trainer.device_train_microbatch_size=null",
        "trainer.train_batch_size=2", "trainer.max_duration=1ba", f"trainer.save_folder={tmp_path}/ckpt{tag}",
        f"loggers.file.filename={tmp_path}/log{tag}.txt", "dataset.num_workers=0", "dataset.cache_limit=null",
        "callbacks.memory_monitor=null",
    ]


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_builds_and_trains_a_batch(path, tmp_path):
    raw = OmegaConf.load(path)
    # what the recipe promises, as written
    assert raw.trainer.precision == "amp_bf16"
    assert raw.trainer.parallelism_config.fsdp.sharding_strategy == "SHARD_GRAD_OP"
    assert raw.trainer.train_batch_size == 2048
    assert raw.dataset.precomputed_latents is True
    assert raw.optimizer.lr == 1e-4 and raw.optimizer.weight_decay == 0.01
    assert raw.scheduler.t_warmup == "10000ba"
    assert {"ema", "fast_attention", "low_precision_norms"} <= set(raw.algorithms)
    split = raw.variables.split
    assert split == ("nc" if "-nc" in path else "c")

    write_latent_shards(str(tmp_path / "remote"), split, xl=raw.model.unet == "sdxl")
    cfg = load_config(path, [
        *_on_cpu(tmp_path, raw.model.unet, ""), "callbacks.sample_images.num_inference_steps=2",
        "callbacks.sample_images.height=32", "callbacks.sample_images.width=32",
    ], TrainConfig)
    trainer = build_trainer(cfg)
    assert trainer.state.model.unet.config.down_block_types == list(
        {"sd2": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
         "sdxl_size": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
         "sdxl": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]}[raw.model.unet])
    stored_empty = np.load(os.path.join(cfg.model.empty_caption_latents))
    assert np.allclose(trainer.state.model.empty_caption_latents.numpy(), stored_empty.astype("float32"))
    trainer.fit()
    assert int(trainer.state.timestamp.batch) == 1
    assert os.path.isfile(f"{tmp_path}/ckpt/train_config.yaml")
    trainer.close()
    if raw.model.unet == "sdxl":
        _second_phase_at_512(path, cfg, tmp_path)


def _second_phase_at_512(path, cfg, tmp_path):
    """The 512-px phase the XL header documents: the same yaml, 512 px, from the 256-px weights."""
    header = open(path).read().split("job:")[0]
    for key in ("dataset.resolution=512", "trainer.load_path=", "trainer.load_weights_only=true"):
        assert key in header, key
    assert cfg.dataset.aspect_buckets is True
    phase_1 = os.path.realpath(f"{tmp_path}/ckpt/latest-rank0.pt")
    cfg_512 = load_config(path, [
        *_on_cpu(tmp_path, "sdxl", "512"), "callbacks.sample_images=null", "dataset.resolution=512",
        f"trainer.load_path={phase_1}", "trainer.load_weights_only=true", "run_name=phase-512",
    ], TrainConfig)
    trainer = build_trainer(cfg_512)
    loaded = {k: v.clone() for k, v in trainer.state.model.unet.state_dict().items()}
    first = torch.load(phase_1, map_location="cpu", weights_only=False)["state"]["model"]
    name = next(k for k in loaded if k.endswith("conv_in.weight"))
    torch.testing.assert_close(loaded[name], first[f"unet.{name}"])  # started from the 256-px weights
    shapes = []
    trainer.state.callbacks.append(_RecordShape(shapes))
    trainer.fit()
    assert shapes and shapes[0][-2:] in ([16, 16], [16, 24])  # 512-px latents of a bucket
    trainer.close()


class _RecordShape(Callback):
    def __init__(self, shapes):
        self.shapes = shapes

    def after_dataloader(self, state, logger):
        self.shapes.append(list(state.batch["image_latents"].shape))

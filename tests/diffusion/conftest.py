import glob
import os

import pytest
from composer.core import Callback
from PIL import Image

from diffusion.config import load_config
from diffusion.demo.components import build_demo_components, precompute_demo_latents
from diffusion.demo.shapes import write_shapes
from diffusion.export import export_pipeline
from diffusion.train import TrainConfig, build_trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "yamls", "demo-cpu.yaml")


BUCKET_IMAGE_SIZES = ((48, 32), (32, 48), (32, 32))  # (width, height): wide, tall, square
BUCKET_IMAGES_EACH = 16


@pytest.fixture(scope="session")
def bucketed_latents(demo_dir, tmp_path_factory):
    """Latents of 16 wide, 16 tall and 16 square random images, made with the demo's frozen models by
    data_prep.precompute_latents --aspect-buckets at 32 px (8-px multiples: 24x40, 40x24 and 32x32 buckets)."""
    import numpy as np
    from streaming import MDSWriter

    from data_prep import precompute_latents

    root = tmp_path_factory.mktemp("bucketed")
    rng = np.random.default_rng(0)
    with MDSWriter(out=str(root / "images"), columns={"image": "png", "caption": "str", "photo_id": "str"}) as w:
        for i in range(BUCKET_IMAGES_EACH * len(BUCKET_IMAGE_SIZES)):
            width, height = BUCKET_IMAGE_SIZES[i % len(BUCKET_IMAGE_SIZES)]
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            w.write({"image": Image.fromarray(pixels), "caption": f"a red circle on a blue background {i}",
                     "photo_id": f"b{i:03d}"})
    models = os.path.join(demo_dir, "models")
    precompute_latents.main([str(root / "images"), str(root / "latents"), "--vae", models, "--text-encoder", models,
                             "--tokenizer", models, "--resolutions", "32", "--caption-key", "caption", "--dtype",
                             "fp32", "--drop-image", "--aspect-buckets", "--bucket-multiple", "8", "--no-progress"])
    return str(root / "latents")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A small demo tree: 256 shapes samples, tiny saved components (VAE untrained: tests need speed) and
    the samples' precomputed latents, which yamls/demo-cpu.yaml trains from."""
    return write_demo_tree(tmp_path_factory.mktemp("demo"), n=256)


def write_demo_tree(root, n: int) -> str:
    """`make demo`'s tree in small under `root`: n shapes samples, tiny saved components (VAE untrained: tests
    need speed) and the samples' precomputed latents. Returns root as a str (variables.demo_dir)."""
    write_shapes(str(root / "data" / "shapes"), n=n, seed=0)
    build_demo_components(str(root / "models"), str(root / "data" / "shapes"), vae_steps=0)
    precompute_demo_latents(str(root / "data" / "shapes"), str(root / "models"), str(root / "data" / "latents"))
    return str(root)


def demo_overrides(demo_dir, out_dir, **extra):
    """Overrides that shrink yamls/demo-cpu.yaml to a few seconds."""
    overrides = {
        "variables.demo_dir": demo_dir,
        "trainer.save_folder": f"{out_dir}/checkpoints",
        "loggers.file.filename": f"{out_dir}/loss_log.txt",
        "trainer.max_duration": "4ba",
        "trainer.train_batch_size": 8,
        "trainer.progress_bar": False,
        "callbacks.sample_images": None,
        **extra,
    }
    return [f"{k}={'null' if v is None else v}" for k, v in overrides.items()]


class RecordUNet(Callback):
    """The online UNet weights after each batch, to recompute the EMA independently of Composer's bookkeeping."""

    def __init__(self):
        self.after_batch = []

    def batch_end(self, state, logger):
        self.after_batch.append({k: v.detach().clone() for k, v in state.model.unet.named_parameters()})


def train_demo(demo_dir, out_dir, batches=4, record=False, **extra):
    overrides = {"trainer.max_duration": f"{batches}ba", "trainer.save_interval": f"{batches}ba",
                 "algorithms.ema.half_life": "1ba", "scheduler.t_warmup": "1ba", "trainer.seed": 5, **extra}
    trainer = build_trainer(load_config(DEMO, demo_overrides(demo_dir, out_dir, **overrides), TrainConfig))
    recorder = RecordUNet()
    if record:
        trainer.state.callbacks.append(recorder)
    trainer.fit()
    trainer.close()
    (checkpoint,) = glob.glob(os.path.join(out_dir, "checkpoints", f"ep*-ba{batches}-rank0.pt"))
    return checkpoint, recorder.after_batch


@pytest.fixture(scope="session")
def trained(demo_dir, tmp_path_factory):
    """The demo trained 4 batches (EMA half-life 1 batch) once per session, with the online weights after each
    batch. Read-only: tests that change a checkpoint copy it under their own tmp_path."""
    out = tmp_path_factory.mktemp("trained_demo")
    checkpoint, after_batch = train_demo(demo_dir, str(out), record=True)
    return {"checkpoint": checkpoint, "after_batch": after_batch, "out": out}


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
    """`trained` exported once (EMA weights, fp32) as a diffusers folder. Read-only."""
    out = str(tmp_path_factory.mktemp("trained_demo_export") / "pipeline")
    return export_pipeline(trained["checkpoint"], out, ema=True, dtype="fp32", overwrite=True)

import os

import pytest

from diffusion.demo.components import build_demo_components, precompute_demo_latents
from diffusion.demo.shapes import write_shapes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A small demo tree: 256 shapes samples, tiny saved components (VAE untrained: tests need speed) and
    the samples' precomputed latents, which yamls/demo-cpu.yaml trains from."""
    root = tmp_path_factory.mktemp("demo")
    write_shapes(str(root / "data" / "shapes"), n=256, seed=0)
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

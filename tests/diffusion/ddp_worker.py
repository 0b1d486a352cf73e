"""Run by test_distributed.py as `composer -n 2 tests/diffusion/ddp_worker.py OUT DEMO_DIR [OVERRIDES_JSON]`:
trains the demo recipe a few batches (3 unless the overrides say otherwise) and writes, per rank, a fingerprint
of every sample it saw, each batch's latent shape, and a checksum of its UNet."""
import hashlib
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import torch  # noqa: E402
from composer.core import Callback  # noqa: E402
from composer.utils import dist  # noqa: E402

from diffusion.config import load_config  # noqa: E402
from diffusion.train import TrainConfig, build_trainer  # noqa: E402
from tests.diffusion.conftest import demo_overrides  # noqa: E402


class RecordSamples(Callback):
    def __init__(self):
        self.fingerprints, self.shapes = [], []

    def after_dataloader(self, state, logger):
        self.shapes.append(list(state.batch["image_latents"].shape))
        for image in state.batch["image_latents"]:  # the demo yaml trains from precomputed latents
            self.fingerprints.append(hashlib.sha1(image.numpy().tobytes()).hexdigest())


def main(out, demo_dir, extra="{}"):
    overrides = demo_overrides(demo_dir, out, **{
        "trainer.max_duration": "3ba", "trainer.train_batch_size": 8, "trainer.seed": 5,
        "loggers.file.filename": f"{out}/log-rank{{rank}}.txt", "algorithms.ema": None, **json.loads(extra),
    })
    trainer = build_trainer(load_config(os.path.join(REPO, "yamls", "demo-cpu.yaml"), overrides, TrainConfig))
    recorder = RecordSamples()
    trainer.state.callbacks.append(recorder)
    trainer.fit()
    weights = torch.cat([p.detach().flatten().double() for p in trainer.state.model.module.unet.parameters()]
                        if hasattr(trainer.state.model, "module") else
                        [p.detach().flatten().double() for p in trainer.state.model.unet.parameters()])
    with open(os.path.join(out, f"rank{dist.get_global_rank()}.json"), "w") as f:
        json.dump({"world_size": dist.get_world_size(),
                   "per_rank_batch": len(recorder.fingerprints) // len(recorder.shapes),
                   "fingerprints": recorder.fingerprints, "shapes": recorder.shapes,
                   "weights_sha": hashlib.sha1(weights.numpy().tobytes()).hexdigest()}, f)
    trainer.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])

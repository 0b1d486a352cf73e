"""The demo recipe through run.py's path: a short fit, checkpoints, autoresume, NaN guard."""
import glob
import math
import os
import re

import pytest
import torch

from diffusion.config import load_config
from diffusion.train import TrainConfig, build_trainer
from tests.diffusion.conftest import REPO, demo_overrides

DEMO = os.path.join(REPO, "yamls", "demo-cpu.yaml")


def trainer_for(demo_dir, out_dir, **extra):
    return build_trainer(load_config(DEMO, demo_overrides(demo_dir, out_dir, **extra), TrainConfig))


def unet_state(trainer):
    return {k: v.detach().clone() for k, v in trainer.state.model.unet.state_dict().items()}


def logged_losses(path):
    return [float(x) for x in re.findall(r"loss/train/total: ([0-9.eE+-]+)", open(path).read())]


def test_short_fit_loss_finite_and_decreasing(demo_dir, tmp_path):
    trainer = trainer_for(demo_dir, tmp_path, **{
        "trainer.max_duration": "40ba", "trainer.seed": 3, "scheduler.t_warmup": "5ba",
        "algorithms.ema": None, "trainer.save_interval": "40ba",
    })
    trainer.fit()
    trainer.close()
    losses = logged_losses(tmp_path / "loss_log.txt")
    assert len(losses) == 40 and all(math.isfinite(l) for l in losses)
    # per-batch diffusion loss is noisy (random timesteps, batch 8): compare means over windows
    assert sum(losses[-16:]) / 16 < 0.9 * sum(losses[:8]) / 8, losses
    assert glob.glob(str(tmp_path / "checkpoints" / "ep*-ba40-rank0.pt"))


def assert_resume_matches_uninterrupted_run(demo_dir, tmp_path, common: dict, stop: int, total: int):
    """Train `total` batches straight, and `stop` then autoresume to `total` in another folder: same weights."""
    common = {**common, "trainer.save_interval": f"{stop}ba", "trainer.autoresume": True}
    straight = trainer_for(demo_dir, tmp_path / "a", **{**common, "trainer.max_duration": f"{total}ba"})
    straight.fit()
    expected = unet_state(straight)
    straight.close()

    first = trainer_for(demo_dir, tmp_path / "b", **{**common, "trainer.max_duration": f"{stop}ba"})
    first.fit()
    first.close()
    resumed = trainer_for(demo_dir, tmp_path / "b", **{**common, "trainer.max_duration": f"{total}ba"})
    assert int(resumed.state.timestamp.batch) == stop  # picked up the checkpoint
    resumed.fit()
    got = unet_state(resumed)
    resumed.close()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_autoresume_matches_uninterrupted_run(demo_dir, tmp_path):
    assert_resume_matches_uninterrupted_run(demo_dir, tmp_path, {"trainer.seed": 11, "run_name": "resume-test"},
                                            stop=3, total=6)


def test_ema_weights_differ_and_are_used_for_sampling(demo_dir, tmp_path):
    from composer.algorithms import EMA

    from diffusion.callbacks.ema_swap import ema_weights_active

    trainer = trainer_for(demo_dir, tmp_path, **{"trainer.max_duration": "5ba", "algorithms.ema.half_life": "2ba"})
    trainer.fit()
    ema = next(a for a in trainer.state.algorithms if isinstance(a, EMA))
    # Composer's final checkpoint swapped the EMA copy into the model; the online weights wait in its store.
    assert ema.ema_weights_active
    ema_weights = unet_state(trainer)
    online = {k[len("unet."):]: v.detach().clone() for k, v in ema.ema_model.named_parameters_dict.items()
              if k.startswith("unet.")}
    assert any(not torch.equal(ema_weights[k], online[k]) for k in online)
    with ema_weights_active(trainer.state):  # already active: must not swap the online weights back in
        assert all(torch.equal(ema_weights[k], v) for k, v in unet_state(trainer).items())

    ema.ema_model.swap_params(trainer.state.model)  # as between batches: online weights in the model
    ema.ema_weights_active = False
    with ema_weights_active(trainer.state):
        assert all(torch.equal(ema_weights[k], v) for k, v in unet_state(trainer).items())
    assert all(torch.equal(online[k], unet_state(trainer)[k]) for k in online)  # swapped back
    trainer.close()


def test_nan_guard_stops_with_message_and_checkpoint(demo_dir, tmp_path):
    from diffusion.callbacks.nan_guard import NonFiniteLossError

    trainer = trainer_for(demo_dir, tmp_path, **{"trainer.max_duration": "5ba", "callbacks.nan_guard": {}})
    real_loss = trainer.state.model.loss
    calls = {"n": 0}

    def poisoned(outputs, batch):
        calls["n"] += 1
        loss = real_loss(outputs, batch)
        return loss * float("nan") if calls["n"] == 3 else loss

    trainer.state.model.loss = poisoned
    with pytest.raises(NonFiniteLossError, match="batch 2"):
        trainer.fit()
    saved = glob.glob(str(tmp_path / "checkpoints" / "nan_guard_ba2.pt"))
    assert saved and torch.load(saved[0], weights_only=False)["state"]["timestamp"]
    trainer.close()


def test_sample_grids_written_at_start_and_end(demo_dir, tmp_path):
    overrides = demo_overrides(demo_dir, tmp_path, **{"trainer.max_duration": "2ba"})
    overrides = [o for o in overrides if not o.startswith("callbacks.sample_images")]
    overrides += ["callbacks.sample_images.num_inference_steps=2", "callbacks.sample_images.seeds=[0,1]"]
    trainer = build_trainer(load_config(DEMO, overrides, TrainConfig))
    trainer.fit()
    trainer.close()
    grids = sorted(glob.glob(str(tmp_path / "checkpoints" / "samples" / "*.png")))
    # each raw grid has a nearest-neighbour copy beside it with cells of at least 128 px (32 px x 4)
    assert [os.path.basename(g) for g in grids] == [
        "samples_ba0000000.png", "samples_ba0000000_x4.png", "samples_ba0000002.png", "samples_ba0000002_x4.png"]
    import numpy as np
    from PIL import Image

    raw, large = Image.open(grids[2]), Image.open(grids[3])
    assert raw.size == (2 * 32, 6 * 32)  # 2 seeds across, the yaml's 6 prompts down
    assert large.size == (2 * 128, 6 * 128)
    assert np.array_equal(np.asarray(large)[::4, ::4], np.asarray(raw))  # exact pixels, no smoothing


def test_channels_last_and_compile_switches(demo_dir, tmp_path):
    trainer = trainer_for(demo_dir, tmp_path, **{"algorithms.channels_last": {}, "algorithms.compile_unet": {}})
    unet = trainer.state.model.unet
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert unet._compiled_call_impl is not None  # nn.Module.compile: compiled lazily on first call
    assert "conv_in.weight" in unet.state_dict()  # checkpoint keys unchanged by compiling in place
    trainer.close()

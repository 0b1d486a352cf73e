"""Experiment trackers (profile `loggers`): loggers.tensorboard and loggers.wandb (offline) in a yaml build
Composer's own loggers and record training batches. The demo yaml sets trainer.autoresume, so this also
covers Composer's checkpoint lookup through the W&B logger on a first run (diffusion.wandb_logger)."""
import glob
import os
import time

import pytest

from diffusion.config import load_config
from diffusion.train import TrainConfig, build_trainer
from tests.diffusion.conftest import REPO, demo_overrides

DEMO = os.path.join(REPO, "yamls", "demo-cpu.yaml")
NOT_INSTALLED = "profile `loggers` not installed ({}): make install EXTRAS=loggers"


def test_tensorboard_and_offline_wandb_log_a_training_batch(demo_dir, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason=NOT_INSTALLED.format("tensorboard"))
    pytest.importorskip("wandb", reason=NOT_INSTALLED.format("wandb"))
    from composer.loggers import TensorboardLogger, WandBLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                        "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(name, value)
    overrides = demo_overrides(demo_dir, tmp_path, **{
        "trainer.max_duration": "2ba", "run_name": "tracked",
        "loggers.tensorboard.log_dir": str(tmp_path / "tb"), "loggers.tensorboard.flush_interval": 1,
        "loggers.wandb.project": "commoncanvas-test",
    })
    trainer = build_trainer(load_config(DEMO, overrides, TrainConfig))
    for kind in (TensorboardLogger, WandBLogger):
        assert any(isinstance(d, kind) for d in trainer.logger.destinations), kind
    trainer.fit()
    trainer.close()

    events = EventAccumulator(str(tmp_path / "tb" / "tracked"))
    events.Reload()
    losses = events.Scalars("loss/train/total")
    assert [e.step for e in losses] == [0, 1] and all(e.value > 0 for e in losses)
    # wandb's service process writes the offline run file after finish() returns: wait for it, bounded
    deadline = time.monotonic() + 30
    while True:
        runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
        if (runs and os.path.getsize(runs[0]) > 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert runs and os.path.getsize(runs[0]) > 0, os.listdir(tmp_path)

"""`job: train` — builds a composer.Trainer from a yaml and fits it.

Sections and where their keys land:
  model       -> diffusion.models.builder.build_stable_diffusion (StableDiffusion, or StableDiffusionXL for sdxl layouts)
  dataset     -> diffusion.datasets.text_image.build_dataloader (batch size comes from trainer.train_batch_size)
  optimizer   -> build_optimizer (AdamW over the UNet's parameters)
  scheduler   -> build_scheduler (Composer LR schedulers with warmup)
  algorithms  -> ALGORITHMS (each sub-section is its class's arguments; leave one out to switch it off)
  callbacks   -> CALLBACKS
  loggers     -> LOGGERS
  trainer     -> TrainerSettings: composer.Trainer arguments of the same name, plus the global batch size
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from typing import Any

import torch
from composer import Trainer
from composer.algorithms import EMA, ChannelsLast
from composer.callbacks import LRMonitor, MemoryMonitor, SpeedMonitor
from composer.loggers import FileLogger, RemoteUploaderDownloader, TensorboardLogger
from composer.optim import ConstantWithWarmupScheduler, CosineAnnealingWithWarmupScheduler, LinearWithWarmupScheduler
from composer.utils import dist, reproducibility
from omegaconf import MISSING, OmegaConf

from diffusion.algorithms.compile_unet import CompileUNet
from diffusion.algorithms.fast_attention import FastAttention
from diffusion.algorithms.low_precision_norms import LowPrecisionNorms
from diffusion.callbacks.nan_guard import NaNGuard
from diffusion.callbacks.resume_rng import ResumeRNG
from diffusion.callbacks.sample_images import SampleImages
from diffusion.config import ConfigError, as_kwargs, optional_sections, schema_from
from diffusion.datasets.text_image import build_dataloader
from diffusion.models.builder import build_stable_diffusion
from diffusion.remote_files import is_remote, upload
from diffusion.wandb_logger import ResumableWandBLogger

log = logging.getLogger(__name__)

ALGORITHMS = {
    "ema": EMA,
    "fast_attention": FastAttention,
    "low_precision_norms": LowPrecisionNorms,
    "channels_last": ChannelsLast,
    "compile_unet": CompileUNet,
}
CALLBACKS = {
    "sample_images": SampleImages,
    "nan_guard": NaNGuard,
    "speed_monitor": SpeedMonitor,
    "lr_monitor": LRMonitor,
    "memory_monitor": MemoryMonitor,
}
LOGGERS = {
    "file": FileLogger,
    "wandb": ResumableWandBLogger,  # Composer's WandBLogger; its checkpoint lookup no longer breaks autoresume
    "tensorboard": TensorboardLogger,
    # optional: how checkpoints reach a remote save_folder (Composer makes a default one, uploading from
    # spawned processes; one given here for the same bucket is used instead, e.g. use_procs: false for threads)
    "remote_uploader_downloader": RemoteUploaderDownloader,
}
SCHEDULERS = {
    "linear_with_warmup": LinearWithWarmupScheduler,
    "constant_with_warmup": ConstantWithWarmupScheduler,
    "cosine_with_warmup": CosineAnnealingWithWarmupScheduler,
}


def build_optimizer(params, lr: float = 1e-4, weight_decay: float = 0.01, betas: list = (0.9, 0.999), eps: float = 1e-8):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


def build_scheduler(name: str = "linear_with_warmup", t_warmup: str = "10000ba", alpha_f: float = 1.0):
    """Warmup then linear/cosine decay to alpha_f*lr; alpha_f=1 keeps the lr constant after warmup."""
    if name not in SCHEDULERS:
        raise ConfigError(f"scheduler.name: {name!r} is not one of {sorted(SCHEDULERS)}")
    if name == "constant_with_warmup":
        return ConstantWithWarmupScheduler(t_warmup=t_warmup)
    return SCHEDULERS[name](t_warmup=t_warmup, alpha_f=alpha_f)


@dataclasses.dataclass
class TrainerSettings:
    """composer.Trainer arguments of the same names, plus `train_batch_size` (global, split across ranks)."""
    max_duration: Any = MISSING
    train_batch_size: Any = MISSING
    device_train_microbatch_size: Any = None
    precision: Any = None
    device: Any = None
    seed: Any = 17
    save_folder: Any = None
    save_interval: Any = "1ep"
    save_num_checkpoints_to_keep: Any = -1
    save_overwrite: Any = False
    autoresume: Any = False
    load_path: Any = None
    load_weights_only: Any = False
    parallelism_config: Any = None
    dist_timeout: Any = 300.0
    progress_bar: Any = False
    log_to_console: Any = True
    console_log_interval: Any = "100ba"


def _default(cls):
    return dataclasses.field(default_factory=cls)


@dataclasses.dataclass
class TrainConfig:
    job: Any = "train"
    run_name: Any = None
    variables: Any = dataclasses.field(default_factory=dict)  # free values for ${variables.x}; no builder reads them
    model: Any = _default(schema_from(build_stable_diffusion, "ModelArgs"))
    dataset: Any = _default(schema_from(build_dataloader, "DatasetArgs", exclude=("batch_size", "tokenizer", "tokenizer_2")))
    optimizer: Any = _default(schema_from(build_optimizer, "OptimizerArgs", exclude=("params",)))
    scheduler: Any = _default(schema_from(build_scheduler, "SchedulerArgs"))
    algorithms: Any = _default(optional_sections("AlgorithmsArgs", ALGORITHMS))
    callbacks: Any = _default(optional_sections("CallbacksArgs", CALLBACKS))
    loggers: Any = _default(optional_sections("LoggersArgs", LOGGERS))
    trainer: Any = _default(TrainerSettings)


CONFIG_SCHEMA = TrainConfig


def _build_each(registry, section, **extra) -> list:
    built = []
    for key, cls in registry.items():
        args = getattr(section, key)
        if args is not None:
            built.append(cls(**{**as_kwargs(args), **extra.get(key, {})}))
    return built


CONFIG_FILE = "train_config.yaml"  # written beside the checkpoints; export and eval rebuild the model from it


def save_resolved_config(cfg, save_folder: str) -> str | None:
    """Writes `train_config.yaml` into the save folder (uploaded through Composer's object store if remote)."""
    if dist.get_global_rank() != 0:
        return None
    if is_remote(save_folder):
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, CONFIG_FILE)
            OmegaConf.save(cfg, local, resolve=True)
            remote = f"{save_folder.rstrip('/')}/{CONFIG_FILE}"
            upload(local, remote)
        return remote
    os.makedirs(save_folder, exist_ok=True)
    path = os.path.join(save_folder, CONFIG_FILE)
    OmegaConf.save(cfg, path, resolve=True)
    return path


def build_trainer(cfg) -> Trainer:
    trainer_args = as_kwargs(cfg.trainer)
    global_batch = trainer_args.pop("train_batch_size")
    world = dist.get_world_size()
    if global_batch % world:
        raise ConfigError(f"trainer.train_batch_size={global_batch} is not divisible by the world size {world}")
    reproducibility.seed_all(trainer_args["seed"])
    model = build_stable_diffusion(**as_kwargs(cfg.model))
    dataloader = build_dataloader(batch_size=global_batch // world, tokenizer=model.tokenizer,
                                  tokenizer_2=getattr(model, "tokenizer_2", None), **as_kwargs(cfg.dataset))
    optimizer = build_optimizer(model.unet.parameters(), **as_kwargs(cfg.optimizer))
    save_folder = trainer_args["save_folder"] or "."
    save_resolved_config(cfg, save_folder)
    # callbacks that write files put them under the save folder (a local `run_name` folder when that is
    # remote: Composer uploads only checkpoints) unless given an absolute path
    files_folder = (cfg.run_name or "run") if is_remote(save_folder) else save_folder
    sample_folder = os.path.join(files_folder, (as_kwargs(cfg.callbacks.sample_images) or {}).get("folder", "samples")) \
        if cfg.callbacks.sample_images is not None else None
    callbacks = _build_each(
        CALLBACKS, cfg.callbacks,
        sample_images={"folder": sample_folder} if sample_folder else {},
        nan_guard={"folder": files_folder},
    ) + [ResumeRNG()]  # not a yaml switch: without it a mid-epoch resume repeats earlier noise
    return Trainer(
        run_name=cfg.run_name,
        model=model,
        train_dataloader=dataloader,
        optimizers=optimizer,
        schedulers=build_scheduler(**as_kwargs(cfg.scheduler)),
        algorithms=_build_each(ALGORITHMS, cfg.algorithms),
        callbacks=callbacks,
        loggers=_build_each(LOGGERS, cfg.loggers),
        **trainer_args,
    )


def run(cfg) -> Trainer:
    logging.getLogger("diffusion").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    trainer = build_trainer(cfg)
    trainer.fit()
    return trainer

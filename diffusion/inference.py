"""Loads a trained model for sampling, export and eval: a Composer checkpoint or an exported diffusers folder.

    model = load_model("run/checkpoints/latest-rank0.pt")          # EMA weights (error if none)
    model = load_model("run/checkpoints/latest-rank0.pt", ema=False)  # the online (training) weights
    model = load_model("exported_pipeline/")                       # a folder written by diffusion.export

A checkpoint is rebuilt from the resolved training yaml train.py writes beside it (`train_config.yaml`),
then every weight comes from the checkpoint, the frozen VAE and text encoder included, so even `tiny`
random parts come back exactly.

EMA bookkeeping (composer.algorithms.EMA): at every checkpoint event EMA *swaps* the averaged weights into
the model, so a checkpoint's state["model"] usually holds the EMA weights and the EMA algorithm's state
holds the other (training) copy in ema_model.named_parameters_dict / named_buffers_dict; its
`ema_weights_active` flag says which way round they are. We read that flag rather than assume.

Checkpoints are pickles (Composer stores Timestamps and RNG state); load only checkpoints you trust.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import tempfile

import torch

from diffusion.models.stable_diffusion import StableDiffusion
from diffusion.remote_files import is_remote

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.yaml"  # same name train.py writes (diffusion.train.CONFIG_FILE)
EXPORT_RECORD = "commoncanvas_export.json"  # written by diffusion.export: which weights, from which checkpoint
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
XL_PARTS = ("text_encoder_2", "tokenizer_2")  # a StableDiffusionXLPipeline folder has these as well


class ModelLoadError(ValueError):
    """A checkpoint/folder that cannot give the requested model; the message is one line naming the file."""


@dataclasses.dataclass
class LoadedCheckpoint:
    model: StableDiffusion
    cfg: object  # the resolved TrainConfig (omegaconf DictConfig)
    config_path: str
    weights: str  # "ema" or "online"
    timestamp: dict  # Composer Timestamp state: batch, sample, epoch, ...
    path: str


def is_pipeline_folder(path: str) -> bool:
    return os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "model_index.json"))
        or all(os.path.isdir(os.path.join(path, p)) for p in ("unet", "vae", "text_encoder"))
    )


def load_model(path: str, ema: bool | None = True, device: str = "cpu", config: str | None = None) -> StableDiffusion:
    """StableDiffusion in eval mode on `device`.

    ema=True: the EMA weights (ModelLoadError if the checkpoint has none); ema=False: the online weights;
    ema=None: EMA when there is one, else online. For an exported folder the weights are whatever was
    exported; asking for the other kind is an error when the folder records which it holds.
    `config` overrides where a checkpoint's train_config.yaml is looked for (default: beside it).
    """
    if not is_remote(path) and not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file or model folder")
    if not is_remote(path) and os.path.isdir(path):
        model = load_pipeline_folder(path, ema)
    else:
        model = load_checkpoint(path, ema, config).model
    return model.to(device).eval()


# ---- Composer checkpoints ---------------------------------------------------------------------------------
def find_config(checkpoint: str, config: str | None = None) -> str:
    path = config or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), CONFIG_FILE)
    if not os.path.isfile(path):
        hint = "" if config else " (train.py writes it beside the checkpoints; pass --config / config= to point at it)"
        raise FileNotFoundError(f"{path}: no training config{hint}")
    return path


def read_checkpoint_state(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # corrupt/truncated files raise many types; name the file in one line
        raise ModelLoadError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) or "model" not in saved["state"]:
        raise ModelLoadError(f"{path}: not a Composer checkpoint (no state['model'])")
    return saved["state"]


def _ema_algorithm_state(state: dict) -> dict | None:
    algorithms = state.get("algorithms") or []
    items = algorithms.items() if isinstance(algorithms, dict) else algorithms
    for name, algo_state in items:
        if name == "EMA":
            return algo_state
    return None


_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _strip_prefix(weights: dict) -> dict:
    """Parameter names as the bare model has them: no DDP `module.` prefix, no FSDP/activation-checkpointing/
    torch.compile wrapper segments (EMA copies names from the wrapped model)."""
    def clean(key: str) -> str:
        for segment in _WRAPPER_SEGMENTS:
            key = key.replace(segment, "")
        return key

    weights = {clean(k): v for k, v in weights.items()}
    if weights and all(k.startswith("module.") for k in weights):
        weights = {k[len("module."):]: v for k, v in weights.items()}
    return weights


def select_weights(state: dict, ema: bool | None, path: str) -> tuple[dict, str]:
    """(state dict, "ema" | "online") from a checkpoint's state, honouring EMA's `ema_weights_active`."""
    model_weights = _strip_prefix(dict(state["model"]))
    ema_state = _ema_algorithm_state(state)
    has_ema = bool(ema_state and ema_state.get("ema_started") and ema_state.get("ema_model"))
    if not has_ema:
        if ema:
            raise ModelLoadError(
                f"{path}: no EMA weights in this checkpoint (trained without algorithms.ema, or before EMA "
                "started); use --no-ema / ema=False for the online weights"
            )
        return model_weights, "online"
    want_ema = ema is not False
    model_holds_ema = bool(ema_state["ema_weights_active"])
    if want_ema == model_holds_ema:
        return model_weights, "ema" if want_ema else "online"
    stored = ema_state["ema_model"]
    other = {**_strip_prefix(stored.get("named_buffers_dict", {})), **_strip_prefix(stored.get("named_parameters_dict", {}))}
    swapped = dict(model_weights)
    for key, value in other.items():
        if key in swapped:  # non-persistent buffers (e.g. CLIP position_ids) are stored by EMA but not saved
            swapped[key] = value
    return swapped, "ema" if want_ema else "online"


def _describe_mismatch(model: torch.nn.Module, weights: dict) -> str | None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [
        f"{k} checkpoint {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items() if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es), first {shapes[0]}")
    if missing:
        parts.append(f"{len(missing)} key(s) missing from the checkpoint, first {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]}")
    return "; ".join(parts) or None


def load_checkpoint(path: str, ema: bool | None = True, config: str | None = None) -> LoadedCheckpoint:
    """The model rebuilt from the training yaml with the checkpoint's weights, plus what export needs to know.

    A remote checkpoint (s3://... as the Trainer saved it; Composer's `latest-rank0.pt` symlink is followed)
    is downloaded with its train_config.yaml into a temporary folder for the load."""
    from diffusion.config import as_kwargs, load_config
    from diffusion.remote_files import local_copy

    if is_remote(path) or (config and is_remote(config)):
        config = config or f"{posixpath.dirname(path)}/{CONFIG_FILE}"
        with tempfile.TemporaryDirectory() as tmp:
            loaded = load_checkpoint(local_copy(path, os.path.join(tmp, "checkpoint")), ema,
                                     local_copy(config, os.path.join(tmp, "config")))
        return dataclasses.replace(loaded, config_path=config, path=path)
    from diffusion.models.builder import build_stable_diffusion
    from diffusion.train import TrainConfig

    state = read_checkpoint_state(path)
    weights, kind = select_weights(state, ema, path)  # before the (slow) build, so a missing EMA fails fast
    config_path = find_config(path, config)
    cfg = load_config(config_path, None, TrainConfig)
    model_args = as_kwargs(cfg.model)
    # The checkpoint holds the empty-caption latents buffer; the .npy the yaml names may live elsewhere.
    model_args["empty_caption_latents"] = None
    model = build_stable_diffusion(**model_args)
    problem = _describe_mismatch(model, weights)
    if problem:
        raise ModelLoadError(
            f"{path}: weights do not fit the model built from {config_path} (model.unet={cfg.model.unet}): {problem}"
        )
    model.load_state_dict(weights, strict=True)
    # UNet sample_size is only the default output size: make it the training resolution, for generate() and
    # for the exported pipeline (whose default height/width come from it).
    factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    resolution = int(cfg.dataset.resolution or 0)
    if resolution and resolution % factor == 0:
        model.unet.register_to_config(sample_size=resolution // factor)
    timestamp = state.get("timestamp", {})
    timestamp = timestamp.get("Timestamp", timestamp) if isinstance(timestamp, dict) else {}
    return LoadedCheckpoint(model.eval(), cfg, config_path, kind, dict(timestamp), path)


# ---- exported diffusers folders ---------------------------------------------------------------------------
def read_export_record(folder: str, name: str = EXPORT_RECORD) -> dict:
    """A JSON record diffusion.export wrote into the folder ({} when absent): commoncanvas_export.json, provenance.json."""
    record_path = os.path.join(folder, name)
    if not os.path.isfile(record_path):
        return {}
    with open(record_path) as f:
        return json.load(f)


def load_pipeline_folder(path: str, ema: bool | None = None) -> StableDiffusion:
    """A diffusers StableDiffusionPipeline folder -> StableDiffusion, or a StableDiffusionXLPipeline folder ->
    StableDiffusionXL (fp32; noise schedule from scheduler/)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from diffusion.models.sdxl import StableDiffusionXL

    missing = [p for p in PIPELINE_PARTS if not os.path.isdir(os.path.join(path, p))]
    if missing:
        raise ModelLoadError(f"{path}: not a diffusers pipeline folder (no {', '.join(missing)} subfolder)")
    held = read_export_record(path).get("weights")
    if held and ema is not None and held != ("ema" if ema else "online"):
        flag = "without --no-ema" if held == "ema" else "with --no-ema"
        raise ModelLoadError(f"{path}: holds the {held} weights (exported {flag}); export the checkpoint again for the other kind")
    if not held and ema is not None:
        log.warning("%s does not record whether it holds EMA weights; using what it holds", path)
    try:
        # low_cpu_mem_usage needs `accelerate` (not a dependency); saying False up front avoids diffusers' warning
        fp32 = dict(torch_dtype=torch.float32, low_cpu_mem_usage=False)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **fp32)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **fp32)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=torch.float32)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        if all(os.path.isdir(os.path.join(path, p)) for p in XL_PARTS):
            text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", dtype=torch.float32)
            tokenizer_2 = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2")
            return StableDiffusionXL(unet, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, noise_scheduler).eval()
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelLoadError(f"{path}: could not load the pipeline folder ({str(exc).splitlines()[0]})") from None
    if unet.config.get("addition_embed_type"):
        raise ModelLoadError(f"{path}: the UNet uses micro-conditioning but the folder has no {' / '.join(XL_PARTS)}")
    return StableDiffusion(unet, vae, text_encoder, tokenizer, noise_scheduler).eval()

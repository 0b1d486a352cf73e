"""Training-step throughput of the StableDiffusion model, one row per speed-up, all in one process.

    python -m benchmarks.train_throughput --config tiny|sd2|sdxl_size --resolution 256 \
        [--batch-size N --steps N --warmup N --device auto --rows a,b,c,d,e,f --out benchmarks/results]
    python -m benchmarks.train_throughput --config sd2 --resolution 256 --flops-only

Rows are cumulative: each adds one change to the row before it (CommonCanvas's speed-up table).
  a       naive baseline, what a plain diffusers loop does: fp32, math attention (matmul-softmax-matmul) in
          the UNet and VAE, the VAE and text encoder run every step (pixels + token ids), fp32 norms
  b       + fast attention (diffusion.algorithms.fast_attention.choose_backend("auto"))
  c       + precomputed latents (the batch carries image/caption latents; VAE and text encoder skipped)
  c_bf16  (optional, not in the default rows) c + bf16 autocast with fp32 norms: separates (d) into its parts
  d       + bf16 autocast with composer's low-precision GroupNorm/LayerNorm on the UNet
  e       + channels_last UNet
  f       + torch.compile of the UNet (model.unet.compile()): everything. Skipped on CPU unless --compile.
Every row trains the same UNet weights (a fresh copy per row) on the same batch with the same seed, and
takes the real optimizer step (diffusion.train.build_optimizer: AdamW over the UNet). Rows run one after
another (not interleaved) so only one UNet + optimizer state is in memory at a time.

FLOPs of one training step are counted with torch.utils.flop_counter.FlopCounterMode on a meta-device copy
of the model (no memory, no compute, same shapes) with the math attention path, so every matmul is seen.
MFU = (UNet training FLOPs per image, the useful work of every row) x images/s / peak bf16 matmul FLOP/s
measured in the same run. Results go to <out>/train_throughput_<config>_<res>_<device>.{json,md}.
`--flops-only` skips timing and writes <out>/train_throughput_<config>_<res>_flops.{json,md}: the FLOPs
per image and the images/s that 40% MFU means at known GPU peaks; it needs no GPU and no memory.

Real-size configs (sd2, sdxl_size) use an SD2-size VAE and text encoder (OpenCLIP ViT-H text tower:
1024 hidden, 23 layers) with random weights, built from config and saved to a temporary folder so the
model goes through diffusion.models.builder.build_stable_diffusion like a training run: nothing can be
downloaded, and the compute does not depend on the weights.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
import traceback
import warnings

import torch
from composer.algorithms.low_precision_groupnorm import apply_low_precision_groupnorm
from composer.algorithms.low_precision_layernorm import apply_low_precision_layernorm
from composer.core import Precision
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from benchmarks.report import percent, safe_ratio, write_result
from benchmarks.model_sizes import (latent_extras, meta_sdxl_model, pixel_extras, save_sd2_size_components,
                                    sd2_size_text_encoder, sd2_size_vae)
from diffusion.algorithms.fast_attention import choose_backend, set_attention
from diffusion.models import tiny
from diffusion.models.builder import build_stable_diffusion
from diffusion.models.noise import training_scheduler
from diffusion.models.stable_diffusion import (CAPTION_LATENTS, CAPTIONS, IMAGE, IMAGE_LATENTS,
                                               StableDiffusion)
from diffusion.models.unet_configs import UNET_CONFIGS, unet_config, uses_micro_conditioning
from diffusion.train import build_optimizer

BENCHMARK = "train_throughput"


@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    change: str
    fast_attention: bool = False
    latents: bool = False
    bf16: bool = False
    lp_norms: bool = False
    channels_last: bool = False
    compile: bool = False


_A = Row("a", "naive: fp32, math attention, VAE + text encoder every step, fp32 norms")
_B = dataclasses.replace(_A, key="b", change="+ fast attention", fast_attention=True)
_C = dataclasses.replace(_B, key="c", change="+ precomputed latents", latents=True)
_C16 = dataclasses.replace(_C, key="c_bf16", change="c + bf16 autocast only (fp32 norms)", bf16=True)
_D = dataclasses.replace(_C, key="d", change="+ bf16 autocast, low-precision GroupNorm/LayerNorm", bf16=True,
                         lp_norms=True)
_E = dataclasses.replace(_D, key="e", change="+ channels_last", channels_last=True)
_F = dataclasses.replace(_E, key="f", change="+ torch.compile (everything)", compile=True)
ROWS = {r.key: r for r in (_A, _B, _C, _C16, _D, _E, _F)}
DEFAULT_ROWS = "a,b,c,d,e,f"

# Dense bf16 tensor-core peaks from the vendor data sheets (TFLOP/s), matched against the device name in this
# order; used only for the second MFU column and the 40%-MFU images/s figures. The first MFU column uses the
# bf16 matmul peak measured in the run.
SPEC_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0))
# Targets from the project issue (CommonCanvas speed-up table).
TARGET_SPEEDUP, TARGET_MFU, TARGET_SD2_IMAGES_PER_S = 3.0, 0.40, {256: 615, 512: 155}


class BenchmarkError(Exception):
    """Bad input; main() prints it as one line and exits non-zero."""


# ---- models --------------------------------------------------------------------------------------------
def build_model(config: str, workdir: str, components: str | None = None) -> StableDiffusion:
    """`components`: a folder save_sd2_size_components already wrote (else one is written under workdir)."""
    torch.manual_seed(0)
    if uses_micro_conditioning(unet_config(config)):
        raise BenchmarkError(f"--config {config}: SDXL conditioning is counted with --flops-only; its timed rows are not built yet")
    if config == "tiny":
        return build_stable_diffusion(unet="tiny", vae="tiny", text_encoder="tiny", tokenizer="tiny")
    folder = components or save_sd2_size_components(os.path.join(workdir, "components"))
    torch.manual_seed(0)
    return build_stable_diffusion(unet=config, vae=folder, text_encoder=folder, tokenizer=folder)


def meta_copy(model: StableDiffusion) -> StableDiffusion:
    """The same architecture on the meta device: shapes without storage, for counting FLOPs at any size."""
    with torch.device("meta"):
        return StableDiffusion(
            unet=UNet2DConditionModel.from_config(model.unet.config),
            vae=AutoencoderKL.from_config(model.vae.config),
            text_encoder=CLIPTextModel(model.text_encoder.config),
            # a copy: diffusers' add_noise moves the scheduler's tables to the device of its input
            tokenizer=model.tokenizer, noise_scheduler=copy.deepcopy(model.noise_scheduler),
            empty_caption_latents=torch.zeros(model.empty_caption_latents.shape),
        )


def meta_model(config: str) -> StableDiffusion:
    """A meta-device model of `config` built without any real weights (for --flops-only at real sizes)."""
    if uses_micro_conditioning(unet_config(config)):
        return meta_sdxl_model(config)
    tok_dir = tempfile.mkdtemp(prefix="bench_tok_")
    tokenizer = CLIPTokenizer.from_pretrained(
        tiny.save_tiny_tokenizer(tok_dir, model_max_length=16 if config == "tiny" else 77))
    with torch.device("meta"):
        if config == "tiny":
            vae, text = tiny.tiny_vae(), tiny.tiny_text_encoder(len(tokenizer), max_positions=16)
        else:
            vae, text = sd2_size_vae(), sd2_size_text_encoder()
        return StableDiffusion(
            unet=UNet2DConditionModel(**unet_config(config)), vae=vae, text_encoder=text, tokenizer=tokenizer,
            noise_scheduler=training_scheduler(), empty_caption_latents=torch.zeros(tokenizer.model_max_length,
                                                                                     text.config.hidden_size),
        )


def latent_factor(model: StableDiffusion) -> int:
    return 2 ** (len(model.vae.config.block_out_channels) - 1)


def pixel_batch(model: StableDiffusion, batch_size: int, resolution: int, device, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch_size, 3, resolution, resolution, generator=gen) * 2 - 1
    tokens = torch.randint(0, len(model.tokenizer), (batch_size, model.tokenizer.model_max_length), generator=gen)
    return {IMAGE: pixels.to(device), CAPTIONS: tokens.to(device), **pixel_extras(model, tokens.to(device))}


def count_train_flops_per_image(model: StableDiffusion, resolution: int, latents: bool, n: int = 2) -> int:
    """FLOPs of forward + backward of one training step per image (math attention, so every matmul counts)."""
    meta = meta_copy(model) if model.unet.device.type != "meta" else model
    set_attention(meta.unet, "math")
    set_attention(meta.vae, "math")
    meta.train()
    if latents:
        f = latent_factor(meta)
        batch = {IMAGE_LATENTS: torch.zeros(n, meta.unet.config.in_channels, resolution // f, resolution // f,
                                            device="meta"),
                 CAPTION_LATENTS: torch.zeros(n, meta.tokenizer.model_max_length,
                                              meta.unet.config.cross_attention_dim, device="meta"),
                 **latent_extras(meta, n)}
    else:
        batch = pixel_batch(meta, n, resolution, "meta")
    with FlopCounterMode(display=False) as counter:
        outputs = meta(batch)
        meta.loss(outputs, batch).backward()
    return counter.get_total_flops() // n


# ---- timing --------------------------------------------------------------------------------------------
class StepTimer:
    """Per-step wall times: CUDA events on GPU (no host sync inside the loop), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks = []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def step_seconds(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class RssSampler:
    """Peak resident memory of this process while a row runs (CPU has no per-allocation peak counter).
    Sampled every 20 ms with psutil, so it is the whole process (models, batch, Python), not the row alone."""

    def __init__(self):
        import psutil

        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(0.02)

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None) -> dict:
    """Best FLOP/s of a large square matmul: the practical peak MFU is measured against. Kept to 3 significant
    figures (not 3 decimals: a CPU without bf16 kernels measures ~0.0001 TFLOP/s, which must not become 0)."""
    iters, repeats = (20, 5) if device.type == "cuda" else (3, 3)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        timer = StepTimer(device)
        timer.mark()
        for _ in range(iters):
            a @ b
        timer.mark()
        best = min(best, timer.step_seconds()[0])
    return {"n": n, "tflops": float(f"{2 * n ** 3 * iters / best / 1e12:.3g}")}


# ---- one row -------------------------------------------------------------------------------------------
def train_step(model: StableDiffusion, optimizer, batch: dict, bf16: bool, device_type: str):
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        outputs = model(batch)
        loss = model.loss(outputs, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def prepare_unet(pristine: torch.nn.Module, row: Row, device: torch.device, backend: str) -> torch.nn.Module:
    unet = copy.deepcopy(pristine)
    if row.lp_norms:
        apply_low_precision_groupnorm(unet, Precision.AMP_BF16)
        apply_low_precision_layernorm(unet, Precision.AMP_BF16)
    unet.to(device)
    if row.channels_last:
        unet.to(memory_format=torch.channels_last)
    set_attention(unet, backend)
    return unet


def run_row(row: Row, model: StableDiffusion, pristine_unet, batches: dict, args, device) -> dict:
    compile_now = row.compile and (device.type == "cuda" or args.compile)
    backend = choose_backend("auto") if row.fast_attention else "math"
    result = {"key": row.key, "change": row.change, "attention": backend,
              **{k: v for k, v in dataclasses.asdict(row).items() if k not in ("key", "change")},
              "compiled": compile_now, "notes": []}
    if row.compile and not compile_now:
        result["notes"].append("compile skipped on CPU (pass --compile): same settings as row e")
    batch = batches["latents" if row.latents else "pixels"]
    torch.manual_seed(args.seed)
    unet = optimizer = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sampler = RssSampler() if device.type == "cpu" else None
    try:
        if sampler:
            sampler.__enter__()
        unet = prepare_unet(pristine_unet, row, device, backend)
        set_attention(model.vae, backend)
        model.unet = unet
        optimizer = build_optimizer(unet.parameters())
        if compile_now:
            unet.compile()
        model.train()
        start = time.perf_counter()
        for _ in range(args.warmup):
            train_step(model, optimizer, batch, row.bf16, device.type)
        synchronize(device)
        result["warmup_s"] = round(time.perf_counter() - start, 2)
        timer = StepTimer(device)
        timer.mark()
        for _ in tqdm(range(args.steps), desc=f"row {row.key}", leave=False, disable=args.no_progress):
            loss = train_step(model, optimizer, batch, row.bf16, device.type)
            timer.mark()
        seconds = timer.step_seconds()
        median = statistics.median(seconds)
        # images/s from the median step: robust to other jobs' bursts on a shared machine; the mean is kept too
        result.update(
            images_per_s=round(args.batch_size / median, 3),
            images_per_s_from_mean=round(args.batch_size * len(seconds) / sum(seconds), 3),
            step_ms_median=round(1e3 * median, 2), step_ms_mean=round(1e3 * sum(seconds) / len(seconds), 2),
            step_ms_min=round(1e3 * min(seconds), 2), step_ms_max=round(1e3 * max(seconds), 2),
            final_loss=round(loss.item(), 5), load_avg_1min_after=round(os.getloadavg()[0], 2),
        )
        if not torch.isfinite(loss):
            result["notes"].append("loss is not finite")
    except torch.OutOfMemoryError:
        result["error"] = "out of memory"
    except Exception as exc:  # a row that cannot run (e.g. compile fails) is reported, the others still run
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    finally:
        if sampler:
            sampler.__exit__()
            result.update(peak_memory_bytes=sampler.peak, peak_memory_kind="process peak RSS during the row")
        elif device.type == "cuda":
            result.update(peak_memory_bytes=torch.cuda.max_memory_allocated(device),
                          peak_memory_kind="torch.cuda.max_memory_allocated")
        model.unet = torch.nn.Identity()
        del unet, optimizer
        gc.collect()
        if compile_now:
            torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


# ---- report --------------------------------------------------------------------------------------------
def device_slug(device: torch.device) -> str:
    if device.type == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")


def spec_peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf for key, tf in SPEC_BF16_TFLOPS if key in name), None)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"


def images_per_s_at_mfu(flops_per_image: int, peak_tflops: float, mfu: float = TARGET_MFU) -> float:
    return round(mfu * peak_tflops * 1e12 / flops_per_image, 1)


def add_derived(result: dict) -> None:
    rows = {r["key"]: r for r in result["rows"]}
    base = rows.get("a", {}).get("images_per_s")
    useful = result["flops"]["unet_train_step_per_image"]
    for r in result["rows"]:
        if "images_per_s" not in r:
            continue
        # every denominator here is measured (row a's rate, the bf16 peak) and can be zero: None, shown "n/a"
        r["speedup_vs_a"] = safe_ratio(r["images_per_s"], base, 3)
        r["mfu_vs_measured_bf16_peak"] = safe_ratio(useful * r["images_per_s"],
                                                    result["peak_matmul"]["bf16"]["tflops"] * 1e12)
        if result["spec_peak_bf16_tflops"]:
            r["mfu_vs_spec_bf16_peak"] = safe_ratio(useful * r["images_per_s"], result["spec_peak_bf16_tflops"] * 1e12)
    best = rows.get("f") or rows.get("e")
    if result["device"] != "cpu" and best and "images_per_s" in best:
        checks = {"full_stack_speedup_ge_3x": (best.get("speedup_vs_a") or 0) >= TARGET_SPEEDUP,
                  "mfu_ge_40pct_vs_measured_peak": (best["mfu_vs_measured_bf16_peak"] or 0) >= TARGET_MFU}
        result["targets_met"] = checks


def fmt_bytes(n: int | None) -> str:
    return "" if not n else f"{n / 2 ** 30:.2f} GiB"


def to_markdown(result: dict) -> str:
    cpu = result["device"] == "cpu"
    flops = result["flops"]
    spec = result["spec_peak_bf16_tflops"]
    lines = [f"# Training-step throughput: {result['config']} UNet, {result['resolution']} px, {result['device_name']}", ""]
    if cpu:
        lines += ["**CPU smoke test, not a performance claim.** It shows every row runs the real training step; "
                  "CPU speed-ups say nothing about a GPU. The machine is shared with other jobs (load average "
                  f"{result['load_avg_1min'][0]} before, {result['load_avg_1min'][1]} after).", ""]
    lines += [
        f"{result['machine']}; device {result['device_name']}; torch {result['torch']}"
        + (f", {result['torch_threads']} threads" if cpu else f", CUDA {result['cuda']}") + ".",
        f"Batch {result['batch_size']}, {result['warmup']} warm-up + {result['steps']} timed steps per row, seed "
        f"{result['seed']}; rows run one after another in one process, each on a fresh copy of the same UNet. "
        "images/s = batch / median step time (the mean is in the JSON).",
        f"FLOPs per image of one training step (FlopCounterMode, forward + backward): UNet only "
        f"{flops['unet_train_step_per_image'] / 1e9:.2f} GFLOP (the useful work, used for MFU); with VAE encode "
        f"+ text encoder (rows a, b) {flops['pixel_path_step_per_image'] / 1e9:.2f} GFLOP.",
        f"Measured peak matmul: bf16 {result['peak_matmul']['bf16']['tflops']} TFLOP/s, fp32 "
        f"{result['peak_matmul']['fp32']['tflops']} TFLOP/s (n={result['peak_matmul']['bf16']['n']})"
        + (f"; data-sheet bf16 peak {spec} TFLOP/s." if spec else "."),
        f"Peak memory: {result['rows'][0].get('peak_memory_kind', '') if result['rows'] else ''}.", "",
    ]
    header = ("| row | change | images/s | speed-up vs a | ms/step (median) | ms/step (min-max) | peak memory "
              "| MFU (measured bf16 peak) |")
    rule = "|---|---|---:|---:|---:|---:|---:|---:|"
    if spec:
        header += " MFU (data-sheet peak) |"
        rule += "---:|"
    lines += [header + " notes |", rule + "---|"]
    for r in result["rows"]:
        notes = "; ".join(r["notes"] + ([r["error"]] if "error" in r else []))
        cells = [r["key"], r["change"], r.get("images_per_s", "failed"),
                 "n/a" if r.get("speedup_vs_a", "") is None else r.get("speedup_vs_a", ""),
                 r.get("step_ms_median", ""), f"{r['step_ms_min']}-{r['step_ms_max']}" if "step_ms_min" in r else "",
                 fmt_bytes(r.get("peak_memory_bytes")),
                 percent(r["mfu_vs_measured_bf16_peak"]) if "mfu_vs_measured_bf16_peak" in r else ""]
        if spec:
            cells.append(percent(r["mfu_vs_spec_bf16_peak"]) if "mfu_vs_spec_bf16_peak" in r else "")
        lines.append("| " + " | ".join(map(str, cells + [notes])) + " |")
    lines += ["", "Targets (project issue, GPU bf16): full stack >= 3x row a; SD2 UNet MFU >= 40%."]
    if "targets_met" in result:
        lines.append("Met in this run: " + ", ".join(f"{k} = {v}" for k, v in result["targets_met"].items()) + ".")
    elif cpu:
        lines.append("Not checked here: CPU run.")
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def flops_only(args) -> dict:
    model = meta_model(args.config)
    unet_flops = count_train_flops_per_image(model, args.resolution, latents=True)
    pixel_flops = count_train_flops_per_image(model, args.resolution, latents=False)
    result = {
        "benchmark": BENCHMARK, "mode": "flops_only", "config": args.config, "resolution": args.resolution,
        "command": "python -m benchmarks.train_throughput " + " ".join(args.argv),
        "unet_params": sum(p.numel() for p in model.unet.parameters()),
        "flops": {"unet_train_step_per_image": unet_flops, "pixel_path_step_per_image": pixel_flops,
                  "counted_with": "FlopCounterMode on the meta device, math attention, forward + backward"},
        "images_per_s_at_40pct_mfu": {name: images_per_s_at_mfu(unet_flops, tf) for name, tf in SPEC_BF16_TFLOPS},
    }
    if args.config == "sd2" and args.resolution in TARGET_SD2_IMAGES_PER_S:
        result["issue_target_images_per_s_h100"] = TARGET_SD2_IMAGES_PER_S[args.resolution]
    lines = [f"# Training FLOPs per image: {args.config} UNet, {args.resolution} px", "",
             f"UNet parameters: {result['unet_params'] / 1e6:.1f} M. Counted with FlopCounterMode on the meta "
             "device (shapes only; no GPU needed), math attention, forward + backward of one training step.", "",
             "| step | GFLOP / image |", "|---|---:|",
             f"| UNet only (precomputed latents) | {unet_flops / 1e9:.2f} |",
             f"| with VAE encode + text encoder | {pixel_flops / 1e9:.2f} |", "",
             "Images/s one GPU must train (UNet only) for 40% MFU against the data-sheet dense bf16 peak:", "",
             "| GPU | peak TFLOP/s | images/s at 40% MFU |", "|---|---:|---:|"]
    lines += [f"| {name} | {tf} | {result['images_per_s_at_40pct_mfu'][name]} |" for name, tf in SPEC_BF16_TFLOPS]
    if "issue_target_images_per_s_h100" in result:
        lines += ["", f"The issue states >= ~{result['issue_target_images_per_s_h100']} images/s for 40% MFU on one "
                  "H100 at this resolution."]
    lines += ["", f"Command: `{result['command']}`", ""]
    write_result(args.out, f"{BENCHMARK}_{args.config}_{args.resolution}_flops", result, "\n".join(lines))
    return result


def benchmark(args) -> dict:
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="train_bench_") as workdir:
        model = build_model(args.config, workdir)
    flops = {"unet_train_step_per_image": count_train_flops_per_image(model, args.resolution, latents=True),
             "pixel_path_step_per_image": count_train_flops_per_image(model, args.resolution, latents=False),
             "counted_with": "FlopCounterMode on a meta-device copy, math attention, forward + backward"}
    pristine_unet, model.unet = model.unet, torch.nn.Identity()  # rows each train a fresh copy
    model.to(device)
    factor = latent_factor(model)
    if args.resolution % (8 * factor):
        raise BenchmarkError(f"--resolution {args.resolution} must be a multiple of {8 * factor} for {args.config}")
    pixels = pixel_batch(model, args.batch_size, args.resolution, device, args.seed)
    with torch.no_grad():  # the same images and captions, encoded once: what the latents stage stores
        latents = {IMAGE_LATENTS: model.encode_images(pixels[IMAGE]),
                   CAPTION_LATENTS: model.encode_tokens(pixels[CAPTIONS])}
    peak = {"bf16": matmul_peak_tflops(device, torch.bfloat16, args.peak_size),
            "fp32": matmul_peak_tflops(device, torch.float32, args.peak_size)}
    rows = []
    for key in tqdm(args.rows, desc="rows", disable=args.no_progress):
        rows.append(run_row(ROWS[key], model, pristine_unet, {"pixels": pixels, "latents": latents}, args, device))
        print(json.dumps({k: rows[-1].get(k) for k in ("key", "images_per_s", "step_ms_median", "error")}), flush=True)
    result = {
        "benchmark": BENCHMARK, "config": args.config, "resolution": args.resolution,
        "command": "python -m benchmarks.train_throughput " + " ".join(args.argv),
        "device": device_slug(device), "performance_claim": device.type == "cuda",
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({machine()})",
        "machine": machine(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "unet_params": sum(p.numel() for p in pristine_unet.parameters()),
        "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "seed": args.seed,
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "flops": flops, "peak_matmul": peak, "spec_peak_bf16_tflops": spec_peak_tflops(device, args.spec_peak_tflops),
        "rows": rows,
    }
    add_derived(result)
    write_result(args.out, f"{BENCHMARK}_{args.config}_{args.resolution}_{result['device']}", result, to_markdown(result))
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", choices=sorted(UNET_CONFIGS), default="tiny", help="UNet layout (model.unet)")
    p.add_argument("--resolution", type=int, default=256, help="image side in pixels")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 on GPU, 8 on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row; default: 20 on GPU, 10 on CPU")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per row; default: 5 on GPU, 2 on CPU")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    p.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated, from {','.join(ROWS)}")
    p.add_argument("--compile", action="store_true", help="also torch.compile row f on CPU (slow to warm up)")
    p.add_argument("--spec-peak-tflops", type=float, default=None,
                   help="data-sheet dense bf16 peak for a second MFU column (known GPUs are filled in)")
    p.add_argument("--peak-size", type=int, default=None,
                   help="side of the square matmul that measures the peak; default: 8192 on GPU, 2048 on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flops-only", action="store_true", help="count FLOPs per image only (meta device, no timing)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"))
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def resolve_args(args) -> None:
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchmarkError(f"--device {args.device}: CUDA is not available on this machine")
    gpu = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (32 if gpu else 8)
    args.steps = args.steps if args.steps is not None else (20 if gpu else 10)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 2)
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0:
        raise BenchmarkError("--batch-size and --steps must be >= 1, --warmup >= 0")
    if args.resolution < 8:
        raise BenchmarkError(f"--resolution {args.resolution} is too small")
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown or not args.rows:
        raise BenchmarkError(f"--rows: unknown row(s) {unknown or args.rows}; choose from {','.join(ROWS)}")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        if args.flops_only:
            return flops_only(args)
        resolve_args(args)
        result = benchmark(args)
    except BenchmarkError as exc:
        sys.exit(f"{BENCHMARK}: {exc}")
    failed = [r["key"] for r in result["rows"] if "error" in r and r["error"] != "out of memory"]
    if failed:
        sys.exit(f"{BENCHMARK}: row(s) {failed} failed; see the results file")
    return result


if __name__ == "__main__":
    main()

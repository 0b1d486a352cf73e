"""Part c: the real recipe path, `run.py yamls/commoncanvas-s-c.yaml` with overrides, on synthetic
precomputed-latent shards the suite writes: a fit of N1 batches that checkpoints, then the same command
with max_duration N1+N2, which must autoresume from that checkpoint and train only the N2 batches left.

Everything else is the yaml's: SD2 UNet, FSDP SHARD_GRAD_OP, EMA, bf16, fast attention, low-precision
norms, SpeedMonitor. On GPU each run is its own `python run.py` process (a real restart; GPU memory is
returned between runs). Without CUDA (--quick): Composer's FSDP calls torch.cuda.current_device(), so the
runs use no parallelism config, fp32 and the tiny models, and call run.main in this process (each fresh
process would spend most of the minute importing).
Images/s is Composer's SpeedMonitor (`throughput/samples_per_sec`, read from the FileLogger's log).
"""
from __future__ import annotations

import glob
import math
import os
import re
import subprocess
import sys

import numpy as np

from benchmarks.dataloader_throughput import write_shards
from benchmarks.gpu.common import Suite, free_device_memory, median
from data_prep import schema

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
YAML = os.path.join(REPO, "yamls", "commoncanvas-s-c.yaml")
RUN_NAME = "gpu-suite-recipe"
METRIC = re.compile(r"\[metric\]\[batch=(\d+)\]: ([\w/.]+): ([-+0-9.eEnaif]+)")


def write_data(suite: Suite, remote: str, batch: int, batches: int) -> dict:
    """Shards + empty_caption_latents.npy where the yaml's dataset.remote / model.empty_caption_latents point."""
    if suite.quick:  # the tiny VAE downsamples 4x; the tiny text encoder is 16 tokens x 32
        resolution, image_shape, caption_shape = 32, (4, 8, 8), (16, 32)
    else:
        resolution, image_shape, caption_shape = 256, (4, 32, 32), (77, 1024)
    folder = os.path.join(remote, "c", "latents")
    samples = batch * batches  # one epoch covers the first fit; the resume run goes into a second epoch
    write_shards(folder, samples, image_size=64, resolution=resolution, latents=True,
                 image_latent_shape=image_shape, caption_latent_shape=caption_shape)
    rng = np.random.default_rng(1)
    np.save(os.path.join(folder, schema.EMPTY_CAPTION_LATENTS_FILE), rng.standard_normal(caption_shape).astype(np.float16))
    return {"resolution": resolution, "samples": samples}


def overrides(suite: Suite, root: str, batch: int, max_batches: int, save_every: int, log: str, resolution: int) -> list:
    o = {
        "run_name": RUN_NAME,
        "variables.remote": os.path.join(root, "data"),
        "variables.local": os.path.join(root, "cache"),
        "variables.frozen_models": suite.components(),
        "variables.checkpoints": os.path.join(root, "checkpoints"),
        "dataset.resolution": resolution,
        "dataset.num_workers": 4 if suite.cuda else 0,
        "scheduler.t_warmup": "4ba",
        "callbacks.sample_images": "null",  # 50-step sampling of 8 prompts at start and end: not the step
        "callbacks.speed_monitor.window_size": 10 if suite.cuda else 2,
        "loggers.file.filename": log,
        "loggers.file.flush_interval": 1,
        "trainer.max_duration": f"{max_batches}ba",
        "trainer.train_batch_size": batch,
        "trainer.device_train_microbatch_size": batch,
        "trainer.save_interval": f"{save_every}ba",
        "trainer.console_log_interval": f"{save_every}ba",
    }
    if suite.quick:
        o["model.unet"] = "tiny"
    if not suite.cuda:
        o["trainer.precision"] = "fp32"
        o["trainer.parallelism_config"] = "null"
    return [f"{k}={v}" for k, v in o.items()]


def launch(suite: Suite, argv: list, console: str, timeout_s: float) -> int:
    if not suite.cuda:
        import run as run_py

        return run_py.main(argv)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    with open(console, "w") as out:
        return subprocess.run([sys.executable, os.path.join(REPO, "run.py"), *argv], cwd=REPO, env=env,
                              stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s).returncode


def read_metrics(path: str) -> dict[str, dict[int, float]]:
    metrics: dict[str, dict[int, float]] = {}
    if os.path.exists(path):
        for batch, name, value in METRIC.findall(open(path).read()):
            try:
                metrics.setdefault(name, {})[int(batch)] = float(value)
            except ValueError:
                pass
    return metrics


def tail(path: str, n: int = 15) -> str:
    return "".join(open(path).readlines()[-n:]) if os.path.exists(path) else ""


def run(suite: Suite, budget_s: float) -> dict:
    part_start = suite.elapsed()
    root = os.path.join(suite.workdir, "recipe")
    os.makedirs(root, exist_ok=True)
    if suite.quick:
        batch, first, more = 4, 4, 2
    else:
        d_batch = next((r.get("batch_size") for r in (suite.parts.get("b") or {}).get("rows", [])
                        if r["name"] == "train_sd2_256_d" and r.get("batch_size")), None)
        batch = min(128, max(16, (d_batch or 128) // 2))  # half the plain step's largest: room for EMA's copy
        first, more = 24, 8
    data = write_data(suite, os.path.join(root, "data"), batch, first)
    suite.log(f"part c: {data['samples']} samples written; fit {first} batches of {batch}, then resume for {more}")
    runs, notes = [], []
    if not suite.cuda:
        notes.append("no CUDA: Composer's FSDP needs it, so this ran without FSDP (one process, no parallelism "
                     "config), in fp32, with the tiny models: the code path minus FSDP and bf16")
    for n, max_batches in ((1, first), (2, first + more)):
        log = os.path.join(root, f"run{n}-rank{{rank}}.txt")
        argv = [YAML] + overrides(suite, root, batch, max_batches, first, log, data["resolution"])
        console = os.path.join(root, f"run{n}-console.txt")
        left = budget_s - (suite.elapsed() - part_start)
        rc = launch(suite, argv, console, timeout_s=max(120.0, min(300.0, 2 * left)))  # a hang must not eat the suite
        free_device_memory(suite.device)
        metrics = read_metrics(log.format(rank=0))
        losses = metrics.get("loss/train/total", {})
        runs.append({"run": n, "max_batches": max_batches, "returncode": rc, "batches_logged": sorted(losses),
                     "losses_finite": bool(losses) and all(math.isfinite(v) for v in losses.values()),
                     "samples_per_s": metrics.get("throughput/samples_per_sec", {}),
                     "checkpoints": sorted(os.path.basename(p) for p in glob.glob(
                         os.path.join(root, "checkpoints", RUN_NAME, "ep*-ba*-rank0.pt")))})
        suite.log(f"  run {n}: exit {rc}, batches {min(losses, default=None)}..{max(losses, default=None)}")
        if rc != 0:
            raise RuntimeError(f"run.py exited {rc} on run {n}: {tail(console) or tail(log.format(rank=0))}")
    first_run, resumed = runs
    checkpoint_written = any(f"-ba{first}-" in c for c in first_run["checkpoints"])
    # Composer logs batch i's metrics at step i (0-based): the resumed run must log exactly first..first+more-1
    resume_ok = checkpoint_written and resumed["batches_logged"] == list(range(first, first + more))
    rates = list(first_run["samples_per_s"].values()) + list(resumed["samples_per_s"].values())
    row = {"name": "recipe_commoncanvas_s_c", "images_per_s": round(median(rates), 2) if rates else None,
           "images_per_s_source": "Composer SpeedMonitor throughput/samples_per_sec (median of logged windows)",
           "batch_size": batch, "resolution": data["resolution"], "fsdp": suite.cuda,
           "precision": "amp_bf16" if suite.cuda else "fp32", "ema": True,
           "loss_finite": first_run["losses_finite"] and resumed["losses_finite"],
           "checkpoint_written": checkpoint_written, "resume_ok": resume_ok,
           "resumed_batches": resumed["batches_logged"], "notes": list(notes)}
    if not (row["loss_finite"] and resume_ok):
        row["error"] = (f"loss finite {row['loss_finite']}, checkpoint at batch {first} {checkpoint_written}, "
                        f"resumed run logged batches {resumed['batches_logged']}")
    for r in runs:
        r["samples_per_s"] = {str(k): v for k, v in r["samples_per_s"].items()}
    return {"rows": [row], "runs": runs, "notes": notes}

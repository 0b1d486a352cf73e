"""Part a: the machine, the versions actually imported (so a run proves which copies of the pinned stack
it used), and the measured matmul peak that every MFU figure of the suite divides by."""
from __future__ import annotations

import importlib
import os
import platform
import sys

import torch

from benchmarks.gpu.common import Suite
from benchmarks.train_throughput import matmul_peak_tflops

# Modules whose version and file show whether the wheel folder shadowed the machine's own copies.
STACK = ("composer", "streaming", "diffusers", "transformers", "tokenizers", "huggingface_hub", "omegaconf",
         "torchmetrics", "numpy", "torchvision")


def stack_versions() -> dict:
    found = {}
    for name in STACK:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # recorded, not fatal: the part that needs it fails on its own
            found[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        found[name] = {"version": getattr(module, "__version__", "?"),
                       "path": os.path.dirname(getattr(module, "__file__", "") or "")}
    return found


def peak_dtype(suite: Suite) -> torch.dtype:
    """bf16 on GPU (the recipes' precision); fp32 on CPU, where bf16 matmuls have no fast kernels."""
    return torch.bfloat16 if suite.cuda else torch.float32


def run(suite: Suite) -> dict:
    device = suite.device
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
           "device": str(device), "stack": stack_versions()}
    if suite.cuda:
        props = torch.cuda.get_device_properties(device)
        env.update(gpu_name=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                   gpu_count=torch.cuda.device_count(), multiprocessors=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}")
    else:
        env.update(gpu_name=None, gpu_memory_gib=None, gpu_count=0)
    dtype = peak_dtype(suite)
    # --quick: a smaller product (CPU); on GPU matmul_peak_tflops uses 8192^3, 20 products, best of 5
    peak = matmul_peak_tflops(device, dtype, n=256 if suite.quick and not suite.cuda else None)
    suite.log(f"peak {str(dtype).removeprefix('torch.')} matmul {peak['tflops']} TFLOP/s (n={peak['n']}) on "
              f"{env['gpu_name'] or 'CPU'}")
    row = {"name": f"matmul_peak_{str(dtype).removeprefix('torch.')}_{peak['n']}", "tflops": peak["tflops"],
           "n": peak["n"], "dtype": str(dtype).removeprefix("torch.")}
    notes = [] if suite.cuda else ["CPU: the peak is fp32 (bf16 has no fast CPU kernels here), so MFU figures "
                                   "of this run are against fp32 and say nothing about a GPU"]
    return {"environment": env, "peak_tflops": peak["tflops"], "peak_dtype": row["dtype"], "rows": [row],
            "notes": notes}

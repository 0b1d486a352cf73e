"""What every part of the GPU suite shares: the run's settings, its clock, and the row format.

A part is a function `part(suite) -> dict` returning {"rows": [...], "notes": [...], ...}; each row has
`name` and one rate (`images_per_s`, `samples_per_s` or `queries_per_s`), plus `mfu` and
`speedup_vs_naive` where they apply. The suite runner catches a failing part and records its error.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import time

import torch

@dataclasses.dataclass
class Suite:
    device: torch.device
    quick: bool
    out: str
    workdir: str  # scratch for shards, model folders and checkpoints; deleted at the end
    budget_s: float  # the whole suite's wall-clock target; parts scale their work to what is left
    started: float = dataclasses.field(default_factory=time.monotonic)
    parts: dict = dataclasses.field(default_factory=dict)  # finished parts by key, for later parts to read
    _components: str | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def log(self, message: str) -> None:
        print(f"[gpu_suite {self.elapsed():6.1f}s] {message}", flush=True)

    def components(self) -> str:
        """The frozen models' folder (vae/, text_encoder/, tokenizer/), written once and shared by the parts:
        SD2's layouts with random weights on GPU, 'tiny' (built in memory by the loaders) with --quick."""
        if self.quick:
            return "tiny"
        if self._components is None:
            from benchmarks.train_throughput import save_sd2_size_components

            torch.manual_seed(0)
            self._components = save_sd2_size_components(os.path.join(self.workdir, "components"))
        return self._components


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def timed(fn, device: torch.device) -> float:
    """Seconds one call of fn() takes, with the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start

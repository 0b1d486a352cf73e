"""Part b: the training-step ablation (benchmarks.train_throughput's rows a-f, its own code) on the real
UNet layouts, each row at the largest per-GPU batch that fits, found automatically.

Groups on GPU: sd2 at 256 px rows a-f; the full stack (row e, then f if the budget allows a second
compile) for sd2 at 512 px and sdxl_size at 256 px. --quick: the tiny UNet at 32 px, rows a-f, batch 2,
no search (row f is row e on CPU: compile is skipped there, as in train_throughput).

Batch search (largest_batch): a probe is one train_throughput.run_row with 1 warm-up + 1 timed step.
Two probes at b0 and 2*b0 give peak memory as a line in the batch size; the search jumps to the batch that
line puts at MEMORY_FRACTION of the card, then bisects between the largest batch that ran and the smallest
that ran out of memory. It stops growing where one step would take longer than max_step_s, and stops
probing after time_cap_s; the row records which limit decided (`batch_limited_by`). Rows start from the
previous row's batch (each row needs no more memory than the one before it, except a->b->c which need
less). Row f (compile) reuses row e's batch: probing a compiled model costs a compile per probe.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from benchmarks.gpu.common import Suite, free_device_memory
from benchmarks.train_throughput import (ROWS, add_derived, build_model, count_train_flops_per_image,
                                         latent_factor, pixel_batch, run_row)
from diffusion.models.stable_diffusion import CAPTION_LATENTS, CAPTIONS, IMAGE, IMAGE_LATENTS

MEMORY_FRACTION = 0.85  # of the card's memory: what a row's peak allocation may reach
ENCODE_CHUNK = 32  # images per VAE/text-encoder call when encoding a big batch into latents once
QUICK_BATCH = 2


@dataclasses.dataclass
class SearchLimits:
    start: int  # first probe
    cap: int  # never probe above
    max_step_s: float  # stop growing once one step takes longer than this
    time_cap_s: float  # stop probing after this many seconds


@dataclasses.dataclass
class Probe:
    batch: int
    ok: bool
    step_s: float | None = None
    peak_bytes: int | None = None
    error: str | None = None


def _round_down(b: int, multiple: int = 8) -> int:
    return max(1, b // multiple * multiple) if b >= multiple else max(1, b)


def largest_batch(probe, limits: SearchLimits, memory_bytes: int | None, clock) -> tuple[int, str, list[Probe]]:
    """(batch, what limited it, probes). `probe(b) -> Probe`; `memory_bytes`: what a row may use (None on
    CPU: no memory model, only doubling); `clock()`: seconds since the search began."""
    probes: list[Probe] = []

    def try_(b: int) -> Probe:
        p = probe(b)
        probes.append(p)
        return p

    b = max(1, min(limits.start, limits.cap))
    first = try_(b)
    while not first.ok and first.error == "out of memory" and b > 1:  # the start was too big: halve
        b //= 2
        first = try_(b)
    if not first.ok:
        raise RuntimeError(f"batch {b}: {first.error}")
    good, bad = first, None
    while True:  # grow
        if good.batch >= limits.cap:
            return good.batch, "cap", probes
        if good.step_s and good.step_s > limits.max_step_s:
            return good.batch, "step_time", probes
        if clock() > limits.time_cap_s:
            return good.batch, "search_time", probes
        fitted = [p for p in probes if p.ok and p.peak_bytes]
        nxt, reason = 2 * good.batch, "memory"
        if memory_bytes and len(fitted) >= 2:  # peak memory is about linear in the batch: jump to the fit
            (b1, m1), (b2, m2) = sorted((p.batch, p.peak_bytes) for p in fitted)[-2:]
            per_image = (m2 - m1) / (b2 - b1) if b2 > b1 else 0
            if per_image > 0:
                nxt = _round_down(int(b2 + (memory_bytes - m2) / per_image))
        if good.step_s and good.batch * limits.max_step_s / good.step_s < nxt:  # no further than the step time allows
            nxt, reason = int(good.batch * limits.max_step_s / good.step_s), "step_time"
        if nxt < limits.cap and nxt <= good.batch + max(1, good.batch // 16):  # within ~6% of a limit: done
            return good.batch, reason, probes
        nxt = min(nxt, limits.cap)
        p = try_(nxt)
        if p.ok:
            good = p
            continue
        if p.error != "out of memory":
            raise RuntimeError(f"batch {nxt}: {p.error}")
        bad = p
        break
    while bad.batch - good.batch > max(1, good.batch // 16):  # bisect to ~6%
        if clock() > limits.time_cap_s:
            return good.batch, "search_time", probes
        mid = (good.batch + bad.batch) // 2
        mid = _round_down(mid) if _round_down(mid) > good.batch else mid
        p = try_(mid)
        if p.ok:
            good = p
        elif p.error == "out of memory":
            bad = p
        else:
            raise RuntimeError(f"batch {mid}: {p.error}")
    return good.batch, "memory", probes


class RowRunner:
    """One model (VAE + text encoder on the device, a pristine UNet on the host) and run_row at any batch."""

    def __init__(self, suite: Suite, config: str):
        self.suite, self.config = suite, config
        model = build_model(config, suite.workdir, None if config == "tiny" else suite.components())
        self.pristine_unet, model.unet = model.unet, torch.nn.Identity()
        self.model = model.to(suite.device)
        self.unet_params = sum(p.numel() for p in self.pristine_unet.parameters())
        self._batches: dict = {}

    def batches(self, batch_size: int, resolution: int) -> dict:
        """The pixel batch, or its latents, encoded once in chunks (what the latents stage would store)."""
        key = (batch_size, resolution)
        if key not in self._batches:
            self._batches = {}  # one batch size in memory at a time
            free_device_memory(self.suite.device)
            pixels = pixel_batch(self.model, batch_size, resolution, self.suite.device)
            with torch.no_grad():
                lat = {IMAGE_LATENTS: torch.cat([self.model.encode_images(pixels[IMAGE][i:i + ENCODE_CHUNK])
                                                 for i in range(0, batch_size, ENCODE_CHUNK)]),
                       CAPTION_LATENTS: torch.cat([self.model.encode_tokens(pixels[CAPTIONS][i:i + ENCODE_CHUNK])
                                                   for i in range(0, batch_size, ENCODE_CHUNK)])}
            self._batches[key] = {"pixels": pixels, "latents": lat}
        return self._batches[key]

    def run(self, key: str, batch_size: int, resolution: int, steps: int, warmup: int) -> dict:
        args = argparse.Namespace(batch_size=batch_size, steps=steps, warmup=warmup, seed=0, compile=False,
                                  no_progress=True)
        try:
            batches = self.batches(batch_size, resolution)
        except torch.OutOfMemoryError:
            self._batches = {}
            free_device_memory(self.suite.device)
            return {"key": key, "error": "out of memory", "notes": ["encoding the batch ran out of memory"]}
        row = ROWS[key]
        if not self.suite.cuda and row.bf16:  # never bf16 on CPU: no fast kernels there (50x slower matmuls)
            row = dataclasses.replace(row, bf16=False, change=row.change + " [bf16 autocast off on CPU: fp32]")
        return run_row(row, self.model, self.pristine_unet, batches, args, self.suite.device)

    def probe(self, key: str, resolution: int):
        def probe(b: int) -> Probe:
            r = self.run(key, b, resolution, steps=1, warmup=1)
            if "error" in r:
                return Probe(b, False, error=r["error"])
            return Probe(b, True, step_s=r["step_ms_median"] / 1e3, peak_bytes=r.get("peak_memory_bytes"))
        return probe

    def close(self):
        self._batches = {}
        del self.model, self.pristine_unet
        free_device_memory(self.suite.device)


def search_limits(suite: Suite, resolution: int, start: int, time_cap_s: float) -> SearchLimits:
    return SearchLimits(start=start, cap=1024 if resolution <= 256 else 256, max_step_s=1.5, time_cap_s=time_cap_s)


def run_group(suite: Suite, runner: RowRunner, resolution: int, keys: list[str], budget_s: float,
              peak_tflops: float) -> dict:
    """Rows `keys` of one (UNet, resolution), each searched then timed, plus train_throughput's derived
    figures (speed-up vs row a where a ran, MFU against the measured peak)."""
    device, clock0 = suite.device, suite.elapsed()
    memory = int(torch.cuda.get_device_properties(device).total_memory * MEMORY_FRACTION) if suite.cuda else None
    rows, start = [], (8 if resolution <= 256 else 4)
    per_row_s = budget_s / max(len(keys), 1)
    for key in keys:
        if key == "f" and rows and "batch_size" in rows[-1]:  # compile per probe is too dear: row e's batch
            batch, limited, probes = rows[-1]["batch_size"], "row e's batch (no probing under compile)", []
        elif suite.quick:  # the search's logic is tested on its own (tests/benchmarks/test_gpu_suite.py)
            batch, limited, probes = QUICK_BATCH, "fixed in --quick", []
        else:
            search0 = suite.elapsed()
            limits = search_limits(suite, resolution, start, time_cap_s=0.4 * per_row_s)
            try:
                batch, limited, probes = largest_batch(runner.probe(key, resolution), limits, memory,
                                                       lambda: suite.elapsed() - search0)
            except RuntimeError as exc:
                rows.append({"key": key, "change": ROWS[key].change, "error": f"batch search: {exc}", "notes": []})
                suite.log(f"  row {key}: batch search failed: {exc}")
                continue
        step_s = next((p.step_s for p in reversed(probes) if p.ok and p.batch == batch), None)
        if step_s is None and rows and rows[-1].get("step_ms_median"):  # row f: row e's step time
            step_s = rows[-1]["step_ms_median"] / 1e3
        steps = 2 if suite.quick else max(3, min(20, int(0.5 * per_row_s / step_s))) if step_s else 10
        row = runner.run(key, batch, resolution, steps=steps, warmup=0 if suite.quick else 2)
        row.update(batch_size=batch, batch_limited_by=limited,
                   batch_probes=[dataclasses.asdict(p) for p in probes])
        rows.append(row)
        suite.log(f"  {runner.config} {resolution}px row {key}: batch {batch} ({limited}), "
                  f"{row.get('images_per_s', row.get('error'))} images/s")
        start = batch
        free_device_memory(device)
    return finish_group(suite, runner, resolution, rows, peak_tflops, suite.elapsed() - clock0)


def finish_group(suite, runner, resolution, rows, peak_tflops, seconds) -> dict:
    model = runner.model
    model.unet = runner.pristine_unet  # for counting only: count_train_flops_per_image uses a meta copy
    try:
        flops = count_train_flops_per_image(model, resolution, latents=True)
    finally:
        model.unet = torch.nn.Identity()
    group = {"config": runner.config, "resolution": resolution, "device": suite.device.type, "rows": rows,
             "flops": {"unet_train_step_per_image": flops}, "peak_matmul": {"bf16": {"tflops": peak_tflops}},
             "spec_peak_bf16_tflops": None, "unet_params": runner.unet_params, "seconds": round(seconds, 1)}
    add_derived(group)  # speedup_vs_a, mfu_vs_measured_bf16_peak (here: against the peak part a measured)
    return group


def groups(suite: Suite) -> list[tuple[str, int, list[str], float]]:
    """(UNet config, resolution, rows, share of the part's budget)."""
    if suite.quick:
        return [("tiny", 32, list("abcdef"), 1.0)]
    return [("sd2", 256, list("abcdef"), 0.6), ("sd2", 512, ["e", "f"], 0.2), ("sdxl_size", 256, ["e", "f"], 0.2)]


def flat_rows(group: dict) -> list[dict]:
    """The suite's row format: name, images_per_s, mfu, speedup_vs_naive (sd2 256 only: where row a ran)."""
    out = []
    for r in group["rows"]:
        row = {"name": f"train_{group['config']}_{group['resolution']}_{r['key']}", "change": r.get("change"),
               "images_per_s": r.get("images_per_s"), "mfu": r.get("mfu_vs_measured_bf16_peak"),
               "batch_size": r.get("batch_size"), "batch_limited_by": r.get("batch_limited_by"),
               "peak_memory_gib": round(r["peak_memory_bytes"] / 2 ** 30, 2) if r.get("peak_memory_bytes") else None,
               "step_ms_median": r.get("step_ms_median"), "compiled": r.get("compiled"),
               "attention": r.get("attention"), "notes": list(r.get("notes", []))}
        if r.get("speedup_vs_a") is not None:
            row["speedup_vs_naive"] = r["speedup_vs_a"]
        if "error" in r:
            row["error"] = r["error"]
        out.append(row)
    return out


def run(suite: Suite, budget_s: float) -> dict:
    peak = (suite.parts.get("a") or {}).get("peak_tflops")
    notes = []
    if not peak:
        from benchmarks.gpu.environment import peak_dtype
        from benchmarks.train_throughput import matmul_peak_tflops

        peak = matmul_peak_tflops(suite.device, peak_dtype(suite), n=256 if suite.quick else None)["tflops"]
        notes.append("part a gave no peak: measured again here")
    start, result_groups, runner = suite.elapsed(), [], None
    compile_s = None  # warm-up of the first compiled row: what another row f would cost
    try:
        for config, resolution, keys, share in groups(suite):
            if runner is None or runner.config != config:
                if runner:
                    runner.close()
                suite.log(f"part b: building the {config} model")
                runner = RowRunner(suite, config)
            left = budget_s - (suite.elapsed() - start)
            if compile_s and "f" in keys and suite.cuda and left < 1.5 * compile_s + 30:
                keys = [k for k in keys if k != "f"]
                notes.append(f"{config} {resolution}px: row f skipped, {left:.0f}s of the part's budget left "
                             f"and a compile took {compile_s:.0f}s")
            group = run_group(suite, runner, resolution, keys, share * budget_s, peak)
            result_groups.append(group)
            compile_s = compile_s or next((r.get("warmup_s") for r in group["rows"] if r.get("compiled")), None)
    finally:
        if runner:
            runner.close()
    rows = [row for g in result_groups for row in flat_rows(g)]
    return {"groups": result_groups, "rows": rows, "peak_tflops": peak, "notes": notes}

"""The dataloader target: benchmarks.dataloader_throughput (its own code and files) against the GPU's
measured consumption rate, the fastest sd2 256 px row of part b (the tiny model's with --quick).
Target: the default worker count delivers >= 4x that rate."""
from __future__ import annotations

from benchmarks import dataloader_throughput
from benchmarks.gpu.common import Suite


def gpu_rate(suite: Suite) -> tuple[float, str]:
    rows = [r for r in (suite.parts.get("b") or {}).get("rows", []) if r.get("images_per_s")]
    wanted = "train_tiny_32_" if suite.quick else "train_sd2_256_"
    best = max((r for r in rows if r["name"].startswith(wanted)), key=lambda r: r["images_per_s"], default=None)
    if best is None:
        raise RuntimeError("part b measured no training rate to compare against")
    return best["images_per_s"], best["name"]


def run(suite: Suite, budget_s: float) -> dict:
    rate, source = gpu_rate(suite)
    if suite.quick:
        argv = ["--resolution", "32", "--image-size", "64", "--samples", "48", "--batch-size", "8",
                "--workers", "0", "--paths", "latents"]
    else:
        argv = ["--resolution", "256", "--samples", "1024", "--batch-size", "32", "--workers", "1,4"]
    result = dataloader_throughput.main(argv + ["--gpu-rate", str(rate), "--out", suite.out])
    rows = []
    for path, v in result["verdict"].items():
        rows.append({"name": f"dataloader_{path}_{result['resolution']}", "samples_per_s": v["at_default_workers"],
                     "samples_per_s_per_worker": v["per_worker"], "default_workers": result["default_workers"],
                     "gpu_rate": rate, "gpu_rate_row": source, "ratio_to_gpu_rate": v["ratio"],
                     "target_met": v["met"]})
    return {"rows": rows, "runs": result["rows"],
            "notes": [f"samples/s = best per-worker rate x {result['default_workers']} default workers (extrapolated, "
                      "one free core per worker); full table in dataloader_throughput_*.md beside this file"]}

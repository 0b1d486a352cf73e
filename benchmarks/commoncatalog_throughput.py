"""Throughput of data_prep.commoncatalog: CommonCatalog-layout parquet -> checked, re-encoded images in MDS.

    python -m benchmarks.commoncatalog_throughput [--n 300 --workers 1 2 --max-side 0 512 --out benchmarks/results]

Generates ``--n`` photo-like JPEGs (benchmarks.fetch_throughput.photo_like; 1024x768 and 768x1024,
quality 90, a few hundred KB each) into two parts of the published 35-column schema in the Hive folder
layout, row groups of 64, all CC-BY, and runs the real stage (run_commoncatalog, split C) once per
(max_side, workers) into a fresh folder: without resize (--max-side 0: decode + EXIF/RGB checks +
re-encode at full size) and with --max-side 512 (draft decoding + Lanczos shrink to a 512px short side).

Reported per run: wall images/s, process CPU seconds (user+sys, all threads) per image, and images per
CPU-core-second (= images / CPU seconds), the figure that carries to other machines.
Writes commoncatalog_throughput.json and .md under --out.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile

import numpy as np
import pyarrow.parquet as pq

from benchmarks.fetch_throughput import photo_like
from benchmarks.report import CpuTimer, cpu_environment, image_stage_figures, markdown_table, write_result
from data_prep.commoncatalog import CatalogConfig, run_commoncatalog
from data_prep.commoncatalog_layout import catalog_table
from data_prep.images import configure_pillow

PARTS = ("0/least_dim_range=768-1024/aspect_ratio_bucket=4-3/part-00000-tid-1-bench-1-1-c000.parquet",
         "1/least_dim_range=768-1024/aspect_ratio_bucket=3-4/part-00000-tid-2-bench-2-1-c000.parquet")


def make_snapshot(folder: str, n: int, seed: int = 0, row_group_size: int = 64) -> tuple[str, int]:
    """n rows over len(PARTS) part files under folder/commoncatalog-bench; returns (snapshot, JPEG bytes)."""
    rng = np.random.default_rng(seed)
    snapshot = os.path.join(folder, "commoncatalog-bench")
    total = 0
    for p, rel in enumerate(PARTS):
        rows = []
        for i in range(p, n, len(PARTS)):
            size = (1024, 768) if p == 0 else (768, 1024)
            out = io.BytesIO()
            photo_like(*size, rng).save(out, "JPEG", quality=90)
            data = out.getvalue()
            total += len(data)
            rows.append({"jpg": data, "photoid": 10_000 + i, "blip2_caption": f"a photo of scene {i}",
                         "licensename": "Attribution License",
                         "licenseurl": "http://creativecommons.org/licenses/by/2.0/", "uid": "1@N00",
                         "unickname": "bench", "title": f"photo {i}", "description": "",
                         "pageurl": f"http://www.flickr.com/photos/1@N00/{10_000 + i}/",
                         "downloadurl": f"http://farm1.staticflickr.com/1/{10_000 + i}_ab.jpg",
                         "width": size[0], "height": size[1], "longitude": 13.4, "latitude": 52.5})
        path = os.path.join(snapshot, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(catalog_table(rows), path, row_group_size=row_group_size)
    return snapshot, total


def run_once(snapshot: str, out_dir: str, workers: int, max_side: int) -> dict:
    config = CatalogConfig(split="C", max_side=max_side or None, workers=workers, progress=False)
    with CpuTimer() as timer:
        counts = run_commoncatalog([snapshot], out_dir, config, rank=0, world=1)
    n = counts["written"]
    return {"workers": workers, "max_side": max_side or None, "images": n, "skipped": counts["skipped"],
            **image_stage_figures(n, timer, out_dir)}


def to_markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# commoncatalog ingest throughput (CommonCatalog parquet -> MDS, CPU)",
        "",
        f"`{result['command']}`",
        "",
        f"{result['n_images']} generated photo-like JPEGs, 1024x768 / 768x1024, quality 90, {result['input_mb']} MB, "
        f"in {len(PARTS)} parquet parts of the published 35-column schema (row groups of 64). Machine: "
        f"{env['cpus']} CPU cores, {env['processor']}, Python {env['python']}, Pillow {env['pillow']}.",
        "",
    ]
    lines += markdown_table(
        [("max_side", "l"), ("workers", "r"), ("images/s (wall)", "r"), ("CPU ms / image", "r"),
         ("images / CPU-core-s", "r"), ("MDS MB", "r"), ("load avg (before, after)", "l")],
        [[r["max_side"] or "none", r["workers"], r["images_per_s"], r["cpu_ms_per_image"], r["images_per_cpu_core_s"],
          r["mds_mb"], r["load_avg_1min"]] for r in result["runs"]])
    lines += ["", "images / CPU-core-s = images written / (user+sys CPU seconds of the whole process, all threads), "
              "parquet read and MDS write included; it is the figure to scale by cores. Wall images/s depends on "
              "the cores free at the time (see the load averages)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.commoncatalog_throughput",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300, help="images to generate")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="image threads per run")
    p.add_argument("--max-side", type=int, nargs="+", default=[0, 512], help="0 = no resize")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"))
    p.add_argument("--work-dir", default=None, help="where inputs/outputs go (default: a temp dir, removed)")
    args = p.parse_args(argv)
    if args.n < 1 or min(args.workers) < 1:
        p.error("--n and --workers must be >= 1")
    configure_pillow()
    work = args.work_dir or tempfile.mkdtemp(prefix="commoncatalog_bench_")
    try:
        snapshot, input_bytes = make_snapshot(os.path.join(work, "inputs"), args.n)
        runs = []
        for max_side in args.max_side:
            for workers in args.workers:
                out_dir = os.path.join(work, f"out_{max_side}_{workers}")
                shutil.rmtree(out_dir, ignore_errors=True)
                runs.append(run_once(snapshot, out_dir, workers, max_side))
                print(json.dumps(runs[-1]), flush=True)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "commoncatalog_throughput",
        "command": "python -m benchmarks.commoncatalog_throughput " + " ".join(
            [f"--n {args.n}", "--workers", *map(str, args.workers), "--max-side", *map(str, args.max_side)]),
        "n_images": args.n, "input_mb": round(input_bytes / 1e6, 1),
        "environment": cpu_environment(),
        "runs": runs,
    }
    write_result(args.out, "commoncatalog_throughput", result, to_markdown(result))
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    main()

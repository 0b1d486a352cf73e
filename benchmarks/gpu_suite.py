"""One command that runs the recipes' real code on one GPU and measures it against the project's targets.

    python -m benchmarks.gpu_suite --out DIR [--quick] [--parts a,b,c,d,e,loader] [--budget-s 450]

Parts (each in benchmarks/gpu/, each a failure of its own: recorded with its error, the suite goes on):
  a       environment, versions actually imported, measured bf16 matmul peak (8192^3): the MFU denominator
  b       training-step ablation rows a-f (benchmarks.train_throughput) for sd2 at 256 px, the full stack
          for sd2 at 512 px and sdxl_size at 256 px, each row at the largest batch that fits (searched)
  c       run.py yamls/commoncanvas-s-c.yaml on synthetic latent shards: FSDP, EMA, bf16, checkpoint, autoresume
  d       data-prep models at real size, random weights: SD2 VAE + OpenCLIP-H latents, BLIP-2 OPT-2.7b captions
  e       replication search, 10k queries x 10M 512-d descriptors
  loader  benchmarks.dataloader_throughput against part b's measured rate
Writes DIR/gpu_suite.json (every figure) and DIR/gpu_suite.md (targets first) after every part, so an
interrupted run keeps what finished. Parts size their work to --budget-s (default 450 s: the issue's 8
minutes on one H100/H200 with room to spare). --quick: tiny models, fp32 on CPU, well under a minute
(CI runs it); its numbers are not performance claims. See benchmarks/README.md for running on a GPU box
without a package registry (benchmarks/gpu/run_on_gpu.sh).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # fewer OOMs from fragmentation
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model is built from config: never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from benchmarks.gpu import data_prep_models, environment, loader, recipe, search, training  # noqa: E402
from benchmarks.gpu.common import Suite, free_device_memory  # noqa: E402
from benchmarks.gpu.markdown import targets, to_markdown  # noqa: E402
from benchmarks.report import write_result  # noqa: E402

# key -> (title, runner, share of the budget)
PARTS = {
    "a": ("environment and matmul peak", lambda s, b: environment.run(s), 0.03),
    "b": ("training-step ablation at the largest batch", training.run, 0.45),
    "c": ("recipe via run.py (FSDP, EMA, bf16, checkpoint, autoresume)", recipe.run, 0.25),
    "d": ("data-prep models (latents, BLIP-2 captions)", data_prep_models.run, 0.10),
    "e": ("replication search", search.run, 0.05),
    "loader": ("dataloader vs the measured GPU rate", loader.run, 0.07),
}


def run_part(suite: Suite, key: str) -> dict:
    title, fn, share = PARTS[key]
    suite.log(f"part {key}: {title} (budget {share * suite.budget_s:.0f}s, {suite.left():.0f}s left overall)")
    start, cpu0 = suite.elapsed(), time.process_time()
    try:
        part = fn(suite, share * suite.budget_s)
    except Exception as exc:  # one part's failure is a row of the report, not the end of the suite
        traceback.print_exc()
        part = {"rows": [], "notes": [], "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]}
    free_device_memory(suite.device)
    # CPU seconds of this process beside the wall time: on a shared machine the wall time says little
    part.update(title=title, seconds=round(suite.elapsed() - start, 1), cpu_s=round(time.process_time() - cpu0, 1))
    for row in part["rows"]:
        row["part"] = key
    failed = [r["name"] for r in part["rows"] if r.get("error")]
    suite.log(f"part {key}: done in {part['seconds']}s" + (f"; FAILED: {part['error']}" if part.get("error") else "")
              + (f"; rows with errors: {failed}" if failed else ""))
    return part


def assemble(suite: Suite, command: str, started_utc: str) -> dict:
    a = suite.parts.get("a") or {}
    env = a.get("environment", {})
    result = {"suite": "gpu_suite", "command": command, "quick": suite.quick, "device": str(suite.device),
              "gpu_name": env.get("gpu_name"), "performance_claim": suite.cuda and not suite.quick,
              "started_utc": started_utc, "seconds": round(suite.elapsed(), 1), "budget_s": suite.budget_s,
              "peak_tflops": a.get("peak_tflops"), "peak_dtype": a.get("peak_dtype"), "parts": suite.parts,
              "rows": [r for p in suite.parts.values() for r in p["rows"]]}
    result["targets"] = targets(result)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", required=True, help="folder for gpu_suite.json and gpu_suite.md")
    p.add_argument("--quick", action="store_true", help="tiny models (fp32 on CPU): a smoke run of every part")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {','.join(PARTS)}")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock target; default 450 (60 with --quick)")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a new temporary one, removed after)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    keys = [k.strip() for k in args.parts.split(",") if k.strip()]
    unknown = [k for k in keys if k not in PARTS]
    if unknown or not keys:
        print(f"gpu_suite: --parts: unknown part(s) {unknown or keys}; choose from {','.join(PARTS)}", file=sys.stderr)
        sys.exit(2)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_suite: --device {args.device}: CUDA is not available here", file=sys.stderr)
        sys.exit(2)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    os.makedirs(args.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="gpu_suite_", dir=args.workdir)
    suite = Suite(device=torch.device(device), quick=args.quick, out=args.out, workdir=workdir,
                  budget_s=args.budget_s or (60.0 if args.quick else 450.0))
    command = "python -m benchmarks.gpu_suite " + " ".join(argv)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    threads = torch.get_num_threads()
    if args.quick and device == "cpu":  # tiny ops: one thread, no spinning for busy cores on a shared machine
        torch.set_num_threads(1)
    try:
        for key in [k for k in PARTS if k in keys]:  # in dependency order: b feeds c and loader
            suite.parts[key] = run_part(suite, key)
            result = assemble(suite, command, started)
            write_result(args.out, "gpu_suite", result, to_markdown(result))
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(workdir, ignore_errors=True)
    suite.log(f"wrote {os.path.join(args.out, 'gpu_suite.json')} and gpu_suite.md")
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    main()

"""`make demo`: draws the demo data, builds the tiny frozen parts (training the VAE), precomputes latents, trains
yamls/demo-cpu.yaml on the CPU, scores how well the samples follow their prompts at the start and the end, and
exports a diffusers folder; demo_report.json keeps the scores and the seconds each phase took.

Every step skips what an earlier run already finished, and training resumes from its last checkpoint,
so an interrupted demo picks up where it stopped.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time

from diffusion.config import load_config
from diffusion.demo.adherence import score_grid
from diffusion.demo.components import build_demo_components, precompute_demo_latents
from diffusion.demo.shapes import write_shapes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_YAML = os.path.join(REPO, "yamls", "demo-cpu.yaml")


def run_demo(out: str, overrides: list[str] | None = None) -> dict:
    phases: dict[str, float] = {}
    started = last = time.time()

    def phase(name: str) -> None:
        nonlocal last
        phases[name] = round(time.time() - last, 1)
        last = time.time()

    from diffusion import train  # heavy imports only once the cheap steps are done

    phase("imports")
    out = os.path.abspath(out)
    shards = os.path.join(out, "data", "shapes")
    if not os.path.isfile(os.path.join(shards, "index.json")):
        write_shapes(shards)
    phase("draw_shapes")
    models = os.path.join(out, "models")
    build_demo_components(models, shards)
    phase("frozen_models_and_vae")
    precompute_demo_latents(shards, models, os.path.join(out, "data", "latents"))
    phase("precompute_latents")
    cfg = load_config(DEMO_YAML, [f"variables.demo_dir={out}", *(overrides or [])], train.TrainConfig)
    train.run(cfg)
    phase("train_unet")

    samples = sorted(glob.glob(os.path.join(cfg.trainer.save_folder, "samples", "samples_ba???????.png")))
    prompts = list(cfg.callbacks.sample_images.prompts)
    report = {
        "start": {"grid": samples[0], **score_grid(samples[0], prompts)},
        "end": {"grid": samples[-1], **score_grid(samples[-1], prompts)},
        "loss_log": cfg.loggers.file.filename,
    }
    from diffusion.export import export_pipeline

    report["pipeline"] = export_pipeline(
        os.path.join(cfg.trainer.save_folder, "latest-rank0.pt"), os.path.join(out, "pipeline"),
        ema=True, dtype="fp32", overwrite=True,
    )
    phase("score_and_export")
    report["phase_seconds"] = phases
    report["wall_seconds"] = round(time.time() - started, 1)
    with open(os.path.join(out, "demo_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_out", help="folder for data, models, checkpoints and samples")
    parser.add_argument("overrides", nargs="*", help="yaml overrides, e.g. trainer.max_duration=300ba")
    args = parser.parse_args(argv)
    report = run_demo(args.out, args.overrides)
    start, end = report["start"], report["end"]
    for key, what in (("accuracy", "colours right (mean of shape and background)"),
                      ("foreground_accuracy", "shape colour right"), ("background_accuracy", "background colour right"),
                      ("both_accuracy", "shape AND background colour right")):
        print(f"prompt adherence, {what}: start {start[key]:.0%} -> end {end[key]:.0%}")
    print(f"sample grids: {start['grid']} (start), {end['grid']} (end); *_x4.png beside them are enlarged copies")
    print("phase seconds: " + ", ".join(f"{k} {v}" for k, v in report["phase_seconds"].items()))
    print(f"loss log: {report['loss_log']}")
    print(f"diffusers pipeline: {report['pipeline']}")
    print(f"demo took {report['wall_seconds'] / 60:.1f} min; report in {os.path.join(os.path.abspath(args.out), 'demo_report.json')}")


if __name__ == "__main__":
    main()

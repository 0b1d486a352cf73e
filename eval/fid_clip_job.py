"""The FID / KID / CLIP-FID / CLIP-score eval job (yamls/eval-fid-clip.yaml): config schema and `run(cfg)`.

It scores folders of already generated images, one per guidance scale, against a reference folder.
Generating those images from a trained model is a separate step that writes `<id>.png` for every id in
the prompts file into each scale's folder.

    python -m eval.fid_clip_job CONFIG.yaml [key=value ...]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from eval.config import resolve_device, to_config
from eval.extractors import load_clip, load_inception
from eval.results import evaluate_guidance_scales, load_prompts


@dataclass
class FidClipEvalConfig:
    generated_dirs: Dict[Any, str] = MISSING
    """Guidance scale -> folder of generated images named `<prompt id>.png`, e.g. {1.5: gen/w1.5, 7.5: gen/w7.5}."""
    out_dir: str = MISSING
    """Where results.json, fid_vs_clip_score.png, per-scale results and the feature cache are written."""
    reference_dir: str = MISSING
    """Folder of real reference images (e.g. the COCO-30k subset at the generation resolution)."""
    prompts_file: str = MISSING
    """JSONL of {"id": ..., "prompt": ...}; each generated image's file stem is its id."""
    coco_mds: Optional[str] = None
    """If set: a data_prep.coco MDS folder, exported first into reference_dir and prompts_file."""
    reference_resolution: int = 512
    """Side of the square centre crop the COCO reference images are resized to (used with coco_mds)."""
    inception_path: str = "weights/inception-2015-12-05.pt"
    """clean-fid's TorchScript Inception (file, or folder holding it). "random-tiny": tests only."""
    clip_path: str = "weights/clip-vit-large-patch14"
    """transformers CLIP folder for CLIP-FID and CLIP score. "random-tiny": tests only."""
    batch_size: int = 32
    """Images per feature-extraction batch."""
    num_workers: int = 4
    """DataLoader workers decoding and resizing images."""
    device: str = "auto"
    """"auto" (cuda if available), "cpu", "cuda", "cuda:1", ..."""
    kid_subsets: int = 100
    """Number of random subsets KID is averaged over."""
    kid_subset_size: int = 1000
    """Images per KID subset (capped at the smaller set's size)."""
    seed: int = 0
    """Seed of the KID subset draw."""


def run(cfg: Any) -> dict:
    """Runs the job from a FidClipEvalConfig, a dict or a DictConfig; returns the results dict."""
    cfg = to_config(FidClipEvalConfig, cfg)
    if cfg.coco_mds:
        from eval.coco_reference import write_coco_reference

        write_coco_reference(cfg.coco_mds, cfg.reference_dir, cfg.prompts_file, cfg.reference_resolution)
    device = resolve_device(cfg.device)
    # Load both models before any long work, so a missing weight file fails first.
    inception = load_inception(cfg.inception_path, device)
    clip = load_clip(cfg.clip_path, device)
    return evaluate_guidance_scales(
        cfg.generated_dirs, cfg.reference_dir, load_prompts(cfg.prompts_file), cfg.out_dir,
        fid_extractor=inception, clip=clip, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
        device=device, kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size, seed=cfg.seed,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.fid_clip_job", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="yaml with FidClipEvalConfig fields")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    cfg = OmegaConf.merge(OmegaConf.load(args.config), OmegaConf.from_dotlist(args.overrides))
    try:
        results = run(cfg)
    except (FileNotFoundError, ValueError, KeyError, OmegaConfBaseException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, row in results["per_scale"].items():
        print(f"w={key}: FID {row['fid']:.3f}  KID {row['kid']:.5f}  CLIP-FID {row['clip_fid']:.3f}  CLIP {row['clip_score']:.2f}  n={row['n']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

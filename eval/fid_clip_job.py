"""The FID / KID / CLIP-FID / CLIP-score eval job (yamls/eval-fid-clip.yaml): config schema and `run(cfg)`.

With `model` set it first generates `<id>.png` for every prompt at every guidance scale (eval.generate_images:
each rank its share, resumable), then rank 0 scores each scale's folder against a reference folder. Without
`model` it scores the folders given in `generated_dirs`.

    composer -n 8 run.py yamls/eval-fid-clip.yaml model=CHECKPOINT.pt    (or python run.py ... on one device)
    python -m eval.fid_clip_job CONFIG.yaml [key=value ...]
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import MISSING

from data_prep.shards import get_rank_world
from diffusion.config import ConfigError
from eval.config import resolve_device, run_job_cli, to_config
from eval.extractors import load_clip, load_inception
from eval.generate_images import GenerationSettings, generate_for_job
from eval.results import evaluate_guidance_scales, load_prompts


@dataclass
class FidClipEvalConfig(GenerationSettings):
    job: str = "eval_fid_clip"
    """run.py's job key."""
    variables: Dict[str, Any] = field(default_factory=dict)
    """Free values for ${variables.x} interpolation; read by nothing else."""
    generated_dirs: Optional[Dict[Any, str]] = None
    """Without `model`: guidance scale -> folder of generated images named `<prompt id>.png`,
    e.g. {1.5: gen/w1.5, 7.5: gen/w7.5}. With `model` it is derived (generation_dir/scale_<g>)."""
    out_dir: str = MISSING
    """Where results.json, fid_vs_clip_score.png, per-scale results and the feature cache are written."""
    reference_dir: str = MISSING
    """Folder of real reference images (e.g. the COCO-30k subset at the generation resolution)."""
    prompts_file: str = MISSING
    """JSONL of {"id": ..., "prompt": ...}; each generated image's file stem is its id."""
    coco_mds: Optional[str] = None
    """If set: a data_prep.coco MDS folder, exported into reference_dir and prompts_file (and the prompts generated
    from, when `model` is set)."""
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


def run(cfg: Any) -> Optional[dict]:
    """Runs the job from a FidClipEvalConfig, a dict or a DictConfig; returns the results dict (None on ranks > 0,
    which only generate)."""
    cfg = to_config(FidClipEvalConfig, cfg)
    if cfg.model and cfg.generated_dirs:
        raise ConfigError("set either model (generate, then score) or generated_dirs (score existing images), not both")
    if not cfg.model and not cfg.generated_dirs:
        raise ConfigError("model: required, a checkpoint (.pt) or exported model folder (e.g. model=PATH on the "
                          "command line); or leave it unset and give generated_dirs to score existing images")
    device = resolve_device(cfg.device)
    # Load both models before any long work (generation included), so a missing weight file fails first.
    inception = load_inception(cfg.inception_path, device)
    clip = load_clip(cfg.clip_path, device)
    generated_dirs = cfg.generated_dirs
    if cfg.model:
        # The COCO MDS and the prompts file it exports hold the same prompts in the same order; reading the MDS
        # directly lets every rank start at once, before rank 0 has exported anything.
        generated_dirs = generate_for_job(cfg, cfg.coco_mds or cfg.prompts_file, cfg.out_dir, cfg.device)
        if get_rank_world()[0] != 0:
            return None
    if cfg.coco_mds:
        from eval.coco_reference import write_coco_reference

        write_coco_reference(cfg.coco_mds, cfg.reference_dir, cfg.prompts_file, cfg.reference_resolution)
    return evaluate_guidance_scales(
        generated_dirs, cfg.reference_dir, load_prompts(cfg.prompts_file), cfg.out_dir,
        fid_extractor=inception, clip=clip, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
        device=device, kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size, seed=cfg.seed,
    )


CONFIG_SCHEMA = FidClipEvalConfig  # what run.py checks a `job: eval_fid_clip` yaml against


def main(argv=None) -> int:
    status, results = run_job_cli(argv, "python -m eval.fid_clip_job", __doc__.split("\n\n")[0], CONFIG_SCHEMA, run)
    if results is None:  # an error, or a rank > 0: it generated its share, rank 0 scored
        return status
    for key, row in results["per_scale"].items():
        print(f"w={key}: FID {row['fid']:.3f}  KID {row['kid']:.5f}  CLIP-FID {row['clip_fid']:.3f}  CLIP {row['clip_score']:.2f}  n={row['n']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Metrics for each guidance scale's image folder against one reference folder -> results JSON + plot.

Reference features are extracted once and cached; each scale's result is written as soon as it is done
and skipped on a rerun while its images and the extractors are unchanged, so a long eval resumes.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np
import torch

from data_prep.json_records import write_json_atomic
from eval.config import RANDOM_TINY
from eval.extractors import ClipEmbedder, FeatureExtractor
from eval.features import cached_features, extract_features, files_fingerprint
from eval.images import ids_of, list_images
from eval.metrics import clip_score, fid_from_features, kid_from_features

RESULTS_FILE = "results.json"
PLOT_FILE = "fid_vs_clip_score.png"


def load_prompts(path: str) -> dict[str, str]:
    """JSONL, one {"id": ..., "prompt": ...} per line; the id is the stem of the generated image's file name."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no prompts file at {path}")
    prompts: dict[str, str] = {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompts[str(row["id"])] = str(row["prompt"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: expected a JSON object with 'id' and 'prompt' ({e})") from None
    return prompts


def parse_scales(images_by_scale: Mapping) -> dict[float, str]:
    scales = {}
    for key, folder in images_by_scale.items():
        try:
            scales[float(key)] = str(folder)
        except (TypeError, ValueError):
            raise ValueError(f"generated_dirs: key {key!r} is not a guidance scale (a number)") from None
    if not scales:
        raise ValueError("generated_dirs: no guidance scale given")
    return scales


def _scale_key(scale: float) -> str:
    return f"{scale:g}"


def evaluate_guidance_scales(
    images_by_scale: Mapping, reference_dir: str, prompts: Mapping[str, str], out_dir: str, *,
    fid_extractor: FeatureExtractor, clip: ClipEmbedder, batch_size: int = 32, num_workers: int = 0,
    device: torch.device = torch.device("cpu"), kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
) -> dict:
    """Per scale: FID, KID (Inception, clean-fid "clean" mode), CLIP-FID and CLIP score, and n images.

    Writes out_dir/results.json and out_dir/fid_vs_clip_score.png; returns the results dict.
    """
    scales = parse_scales(images_by_scale)
    os.makedirs(out_dir, exist_ok=True)
    cache_dir = os.path.join(out_dir, "cache")
    loader = dict(batch_size=batch_size, num_workers=num_workers, device=device)
    clip_extractor = clip.image_extractor()

    ref_files = list_images(reference_dir)
    ref_inception = cached_features(cache_dir, "reference", ref_files, fid_extractor, **loader)
    ref_clip = cached_features(cache_dir, "reference", ref_files, clip_extractor, **loader)
    ref_key = files_fingerprint(ref_files)

    results = {
        "reference_dir": os.path.abspath(reference_dir),
        "n_reference": len(ref_files),
        "fid_extractor": fid_extractor.name,
        "clip_model": clip.name,
        "per_scale": {},
    }
    if RANDOM_TINY in fid_extractor.name or RANDOM_TINY in clip.name:
        results["warning"] = f"{RANDOM_TINY} (randomly initialised) extractors: these numbers measure nothing"

    for scale in sorted(scales):
        folder = scales[scale]
        files = list_images(folder)
        ids = ids_of(files)
        missing = [i for i in ids if i not in prompts]
        if missing:
            raise KeyError(f"no prompt for image id {missing[0]!r} ({len(missing)} in all) of {folder}")
        fingerprint = {
            "images": files_fingerprint(files), "reference": ref_key, "fid_extractor": fid_extractor.name,
            "clip_model": clip.name, "kid": [kid_subsets, kid_subset_size, seed],
        }
        done_path = os.path.join(out_dir, "per_scale", f"{_scale_key(scale)}.json")
        if os.path.exists(done_path):
            with open(done_path) as f:
                done = json.load(f)
            if done.get("fingerprint") == fingerprint:
                results["per_scale"][_scale_key(scale)] = done["metrics"]
                continue

        gen_inception = extract_features(files, fid_extractor, description=f"w={scale:g} {fid_extractor.name}", **loader)
        gen_clip = extract_features(files, clip_extractor, description=f"w={scale:g} {clip.name}", **loader)
        text = clip.embed_texts([prompts[i] for i in ids], batch_size=batch_size)
        metrics = {
            "guidance_scale": scale,
            "image_dir": os.path.abspath(folder),
            "n": len(files),
            "fid": fid_from_features(gen_inception, ref_inception),
            "kid": kid_from_features(gen_inception, ref_inception, kid_subsets, kid_subset_size, seed),
            "clip_fid": fid_from_features(gen_clip, ref_clip),
            "clip_score": clip_score(gen_clip, text),
        }
        os.makedirs(os.path.dirname(done_path), exist_ok=True)
        _write_json(done_path, {"fingerprint": fingerprint, "metrics": metrics})
        results["per_scale"][_scale_key(scale)] = metrics
        _write_json(os.path.join(out_dir, RESULTS_FILE), results)  # partial results survive a crash

    results["plot"] = PLOT_FILE
    plot_fid_vs_clip(results, os.path.join(out_dir, PLOT_FILE))
    _write_json(os.path.join(out_dir, RESULTS_FILE), results)
    return results


def plot_fid_vs_clip(results: dict, path: str) -> None:
    """FID and CLIP-FID against CLIP score, one point per guidance scale, joined in scale order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(results["per_scale"].values(), key=lambda r: r["guidance_scale"])
    clip = [r["clip_score"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, label in ((axes[0], "fid", "FID (Inception)"), (axes[1], "clip_fid", "CLIP-FID")):
        values = [r[key] for r in rows]
        ax.plot(clip, values, "o-")
        for r, x, y in zip(rows, clip, values):
            ax.annotate(f"w={r['guidance_scale']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("CLIP score")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    title = f"{len(rows)} guidance scales, {results['n_reference']} reference images"
    if "warning" in results:
        title += "\n" + results["warning"]
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_json(path: str, obj) -> None:
    write_json_atomic(path, obj, default=_json_default)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

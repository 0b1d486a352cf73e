"""The replication (training-data copy) audit job (yamls/eval-replication.yaml): config schema and `run(cfg)`.

For every generated image, the most similar training images by copy-detection descriptor (SSCD by
default), with their attribution. Reports the distribution of top-1 similarities against the same
statistic for training images among themselves (each one's nearest *other* training image), so a
number like "2% of generations above 0.5" can be read against how often that happens inside the data.

With `model` set it first generates one image per prompt at each guidance scale (eval.generate_images: each
rank its share, resumable; prompts best drawn from the training captions, where copying would show), then
rank 0 audits each scale into out_dir/scale_<g>/ and writes a summary out_dir/replication.json ("per_scale").
Without `model` it audits the one folder `generated_dir` into out_dir.

    composer -n 8 run.py yamls/eval-replication.yaml model=CHECKPOINT.pt   (or python run.py ... on one device)
    python -m eval.replication.job CONFIG.yaml [key=value ...]
"""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from omegaconf import MISSING
from PIL import Image
from torch.utils.data import Dataset

from data_prep import schema
from data_prep.shards import get_rank_world
from diffusion.config import ConfigError
from eval.config import resolve_device, run_job_cli, to_config
from eval.generate_images import GenerationSettings, generate_for_job, scale_dir
from eval.images import ids_of, list_images
from eval.replication.descriptors import SSCD_RESIZE, build_descriptor
from eval.replication.index import IndexSettings, ReplicationIndex, open_index, recall_at_1
from eval.replication.report import draw_match_grid, similarity_stats
from eval.replication.search import nearest_other, topk_cosine
from eval.replication.store import DescriptorStore, build_store, embed_dataset

REPORT_FILE = "replication.json"
MATCHES_FILE = "matches.jsonl"
GRID_FILE = "top_matches.png"
log = logging.getLogger(__name__)


@dataclass
class ReplicationEvalConfig(GenerationSettings):
    job: str = "eval_replication"
    """run.py's job key."""
    variables: Dict[str, Any] = field(default_factory=dict)
    """Free values for ${variables.x} interpolation; read by nothing else."""
    generated_dir: Optional[str] = None
    """Without `model`: folder of generated images (PNG etc.) to audit; each file's stem names it in the report."""
    prompts: Optional[str] = None
    """With `model`: what to generate from, a JSONL of {"id", "prompt"} or an MDS folder (e.g. the captioned
    training set: prompting with training captions is where copies would show)."""
    prompts_caption_key: str = "caption"
    """MDS prompts: the caption column (a captioned training set's is "blip2_caption")."""
    prompts_id_key: Optional[str] = None
    """MDS prompts: the id column naming each image; None: image_id or photo_id, whichever is there."""
    train_mds: str = MISSING
    """Local MDS folder of the training set: an "image" column plus the attribution columns."""
    out_dir: str = MISSING
    """Where replication.json, matches.jsonl and top_matches.png are written."""
    store_dir: Optional[str] = None
    """Training-descriptor store, computed once and reused / resumed; default <out_dir>/train_descriptors."""
    descriptor: str = "sscd"
    """"sscd" (default; weights CC-BY-NC 4.0), "dinov2" (Apache-2.0; calibrate its threshold with
    eval.replication.calibrate), "clip" or "dino"."""
    weights: Optional[str] = "weights/sscd_disc_mixup.torchscript.pt"
    """SSCD: a .torchscript.pt or .torchvision.pt file. dinov2: a hub name or transformers folder. clip / dino:
    a transformers model folder."""
    random_weights_test_only: bool = False
    """Randomly initialised descriptor instead of `weights`. Tests only: the audit then means nothing."""
    resize: int = SSCD_RESIZE
    """SSCD: short side images are resized to (288 in SSCD's evaluations)."""
    store_dtype: str = "float16"
    """Stored descriptor precision: "float16" (half the disk/RAM) or "float32"."""
    chunk_size: int = 10000
    """Training samples per stored chunk, the unit of resumption."""
    index: IndexSettings = field(default_factory=IndexSettings)
    """The FAISS search index over the store (eval.replication.index.IndexSettings: kind, approx_threshold,
    factory, nprobe, candidates, memory_budget_gb, ...); built beside the store, resumable, reused."""
    recall_queries: int = 1000
    """Generated images (random, seeded) whose index top-1 is checked against exact search: the report's recall@1."""
    search_chunk_rows: int = 65536
    """Training descriptors per matrix product in that exact check."""
    top_k: int = 5
    """Matches kept per generated image in matches.jsonl."""
    background_queries: int = 10000
    """Training images (random, seeded) whose nearest other training image forms the background; all if fewer."""
    thresholds: List[float] = field(default_factory=lambda: [0.5, 0.75])
    """Similarities whose exceedance share is reported (SSCD: > 0.75 is a copy at ~90% precision on DISC)."""
    grid_rows: int = 16
    """Generations (highest top-1 similarity first) drawn in top_matches.png."""
    grid_matches: int = 3
    """Training matches drawn beside each generation."""
    batch_size: int = 64
    """Images per descriptor batch."""
    num_workers: int = 4
    """DataLoader workers decoding images."""
    device: str = "auto"
    """"auto" (cuda if available), "cpu", "cuda", ..."""
    max_train_samples: Optional[int] = None
    """Embed only the first N training samples (a quick partial audit); None: all."""
    seed: int = 0
    """Seed of the background sample (and of random test weights)."""


class FolderImages(Dataset):
    def __init__(self, files: list[str], transform):
        self.files = files
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as image:
            return self.transform(image), os.path.basename(self.files[i])


def run(cfg) -> Optional[dict]:
    """Runs the audit from a ReplicationEvalConfig, a dict or a DictConfig; returns the report dict (None on
    ranks > 0, which only generate)."""
    cfg = to_config(ReplicationEvalConfig, cfg)
    if cfg.index.kind not in ("auto", "flat", "approx"):  # checked before hours of embedding, not after
        raise ValueError(f"index.kind must be one of auto, flat, approx; got {cfg.index.kind!r}")
    if cfg.model and cfg.generated_dir:
        raise ConfigError("set either model (generate, then audit) or generated_dir (audit existing images), not both")
    if not cfg.model and not cfg.generated_dir:
        raise ConfigError("model: required, a checkpoint (.pt) or exported model folder (e.g. model=PATH on the "
                          "command line); or leave it unset and give generated_dir to audit existing images")
    if cfg.model and not cfg.prompts:
        raise ConfigError("prompts: required with model (a JSONL of {\"id\", \"prompt\"} or an MDS folder)")
    device = resolve_device(cfg.device)
    # Built before any long work (generation included), so missing weights fail first.
    descriptor = build_descriptor(cfg.descriptor, cfg.weights, device, random_weights=cfg.random_weights_test_only,
                                  resize=cfg.resize, seed=cfg.seed)
    log.warning("descriptor %s: weights license %s", descriptor.name, descriptor.license)
    if cfg.model:
        folders = generate_for_job(cfg, cfg.prompts, cfg.out_dir, cfg.device,
                                   caption_key=cfg.prompts_caption_key, id_key=cfg.prompts_id_key)
        if get_rank_world()[0] != 0:
            return None
    else:
        ids_of(list_images(cfg.generated_dir))  # a bad folder fails before the training set is embedded
    store_dir = cfg.store_dir or os.path.join(cfg.out_dir, "train_descriptors")
    store = build_store(cfg.train_mds, store_dir, descriptor, chunk_size=cfg.chunk_size, dtype=cfg.store_dtype,
                        batch_size=cfg.batch_size, num_workers=cfg.num_workers, max_samples=cfg.max_train_samples)
    if store.num_samples < 2:
        raise ValueError(f"{cfg.train_mds}: the background needs at least 2 training images")
    index = open_index(store, cfg.index)
    search = dict(chunk_rows=cfg.search_chunk_rows, device=device)  # the exact check of the index's recall

    # The background depends only on the training set, so one serves every scale.
    rng = np.random.default_rng(cfg.seed)
    n_bg = min(cfg.background_queries, store.num_samples)
    bg_index = np.sort(rng.choice(store.num_samples, n_bg, replace=False))
    bg_scores, _ = nearest_other(store.rows(bg_index), bg_index, index.search)
    background = similarity_stats(bg_scores, cfg.thresholds)

    if not cfg.model:
        return audit_folder(cfg.generated_dir, cfg.out_dir, cfg, descriptor, index, store_dir, background, search)
    summary = {"model": cfg.model, "ema": cfg.ema, "descriptor_weights_license": descriptor.license,
               "train_background": background, "per_scale": {}}
    for scale, folder in sorted(folders.items()):
        report = audit_folder(folder, scale_dir(cfg.out_dir, scale), cfg, descriptor, index, store_dir, background, search)
        summary["per_scale"][f"{scale:g}"] = {"guidance_scale": scale, "dir": os.path.basename(scale_dir(cfg.out_dir, scale)),
                                             **report}
    with open(os.path.join(cfg.out_dir, REPORT_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def index_recall(index: ReplicationIndex, queries: np.ndarray, scores: np.ndarray, ids: np.ndarray, n: int,
                 seed: int, search: dict) -> dict:
    """The index's re-ranked top-1 against exact search over the whole store, on a random sample of the queries."""
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(queries), min(n, len(queries)), replace=False))
    exact_s, exact_i = topk_cosine(queries[sample], index.store.blocks(), k=1, **search)
    ok = recall_at_1(ids[sample, 0], scores[sample, 0], exact_i[:, 0], exact_s[:, 0])
    high = exact_s[:, 0] >= 0.5
    return {
        "kind": index.kind, "type": index.factory, "shards": index.num_shards, "index_bytes": index.index_bytes,
        "nprobe": index.settings.nprobe if index.kind == "approx" else None,
        "candidates_reranked": index.settings.candidates, "similarities": "exact cosine (re-ranked from the store)",
        "recall_queries": int(len(sample)), "recall_at_1": float(ok.mean()),
        "recall_queries_exact_top1_ge_0.5": int(high.sum()),
        "recall_at_1_exact_top1_ge_0.5": float(ok[high].mean()) if high.any() else None,
    }


def audit_folder(folder: str, out_dir: str, cfg: ReplicationEvalConfig, descriptor, index: ReplicationIndex,
                 store_dir: str, background: dict, search: dict) -> dict:
    """Top-k training matches of every image in `folder` -> out_dir/{replication.json, matches.jsonl, top_matches.png}."""
    store = index.store
    files = list_images(folder)
    ids_of(files)
    generated, names = embed_dataset(FolderImages(files, descriptor.transform), descriptor,
                                     batch_size=cfg.batch_size, num_workers=cfg.num_workers, description="generated")
    scores, ids = index.search(generated, min(cfg.top_k, store.num_samples))
    index_report = index_recall(index, generated, scores, ids, cfg.recall_queries, cfg.seed, search)

    os.makedirs(out_dir, exist_ok=True)
    matches = []
    attribution = store.attributions(ids)
    with open(os.path.join(out_dir, MATCHES_FILE), "w") as f:
        for name, row_scores, row_index in zip(names, scores, ids):
            row = {"generated": name, "matches": [
                {"score": float(s), **attribution[int(i)]} for s, i in zip(row_scores, row_index)
            ]}
            matches.append(row)
            f.write(json.dumps(row) + "\n")

    order = np.argsort(-scores[:, 0], kind="stable")
    top = [matches[i] for i in order[:cfg.grid_rows]]
    report = {
        "descriptor": descriptor.name,
        "descriptor_weights_license": descriptor.license,
        "index": index_report,
        "random_weights_test_only": cfg.random_weights_test_only,
        "generated_dir": os.path.abspath(folder),
        "train_mds": os.path.abspath(cfg.train_mds),
        "store_dir": os.path.abspath(store_dir),
        "n_train": store.num_samples,
        "thresholds": list(cfg.thresholds),
        "generated": similarity_stats(scores[:, 0], cfg.thresholds),
        "train_background": background,
        "top_matches": [{"generated": m["generated"], **m["matches"][0]} for m in top],
        "matches_file": MATCHES_FILE,
        "grid": GRID_FILE,
    }
    if cfg.random_weights_test_only:
        report["warning"] = "random descriptor weights: these similarities measure nothing"
    _draw_grid(top, folder, cfg, os.path.join(out_dir, GRID_FILE))
    with open(os.path.join(out_dir, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=2)
    return report


def _draw_grid(top: list[dict], folder: str, cfg: ReplicationEvalConfig, path: str) -> None:
    from streaming import LocalDataset

    train = LocalDataset(local=cfg.train_mds)
    rows = []
    for m in top:
        with Image.open(os.path.join(folder, m["generated"])) as image:
            generated = image.convert("RGB")
        rows.append({"name": m["generated"], "image": generated, "matches": [
            {**match, "image": train[match["index"]][schema.IMAGE]} for match in m["matches"][:cfg.grid_matches]
        ]})
    draw_match_grid(rows, path)


def main(argv=None) -> int:
    status, report = run_job_cli(argv, "python -m eval.replication.job", __doc__.split("\n\n")[0], CONFIG_SCHEMA, run)
    if report is None:  # an error, or a rank > 0: it generated its share, rank 0 audited
        return status
    reports = report["per_scale"] if "per_scale" in report else {None: report}
    for scale, rep in reports.items():
        for label in ("generated", "train_background"):
            s = rep[label]
            shares = "  ".join(f"> {t:g}: {s[f'share_above_{t:g}']:.2%}" for t in rep["thresholds"])
            prefix = f"w={scale} " if scale is not None else ""
            print(f"{prefix}{label}: n={s['n']} mean {s['mean']:.3f} p95 {s['p95']:.3f}  {shares}")
    return 0


CONFIG_SCHEMA = ReplicationEvalConfig  # what run.py checks a `job: eval_replication` yaml against


if __name__ == "__main__":
    sys.exit(main())

"""The replication (training-data copy) audit job (yamls/eval-replication.yaml): config schema and `run(cfg)`.

For every generated image, the most similar training images by copy-detection descriptor (SSCD by
default), with their attribution. Reports the distribution of top-1 similarities against the same
statistic for training images among themselves (each one's nearest *other* training image), so a
number like "2% of generations above 0.5" can be read against how often that happens inside the data.

    python -m eval.replication.job CONFIG.yaml [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image
from torch.utils.data import Dataset

from data_prep import schema
from eval.config import resolve_device, to_config
from eval.images import ids_of, list_images
from eval.replication.descriptors import SSCD_RESIZE, build_descriptor
from eval.replication.report import draw_match_grid, similarity_stats
from eval.replication.search import nearest_other, topk_cosine
from eval.replication.store import DescriptorStore, build_store, embed_dataset

REPORT_FILE = "replication.json"
MATCHES_FILE = "matches.jsonl"
GRID_FILE = "top_matches.png"
SEARCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class ReplicationEvalConfig:
    generated_dir: str = MISSING
    """Folder of generated images (PNG etc.) to audit; each file's stem names it in the report."""
    train_mds: str = MISSING
    """Local MDS folder of the training set: an "image" column plus the attribution columns."""
    out_dir: str = MISSING
    """Where replication.json, matches.jsonl and top_matches.png are written."""
    store_dir: Optional[str] = None
    """Training-descriptor store, computed once and reused / resumed; default <out_dir>/train_descriptors."""
    descriptor: str = "sscd"
    """"sscd" (default), "clip" or "dino"."""
    weights: Optional[str] = "weights/sscd_disc_mixup.torchscript.pt"
    """SSCD: a .torchscript.pt or .torchvision.pt file. clip / dino: a transformers model folder."""
    random_weights_test_only: bool = False
    """Randomly initialised descriptor instead of `weights`. Tests only: the audit then means nothing."""
    resize: int = SSCD_RESIZE
    """SSCD: short side images are resized to (288 in SSCD's evaluations)."""
    store_dtype: str = "float16"
    """Stored descriptor precision: "float16" (half the disk/RAM) or "float32"."""
    chunk_size: int = 10000
    """Training samples per stored chunk, the unit of resumption."""
    search_chunk_rows: int = 65536
    """Training descriptors per matrix product in the search."""
    search_dtype: str = "float32"
    """Precision of the search's products: "float32" (exact), "float16" or "bfloat16" (faster where the hardware
    has kernels for them; see benchmarks/results/replication_search.md)."""
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


def run(cfg) -> dict:
    """Runs the audit from a ReplicationEvalConfig, a dict or a DictConfig; returns the report dict."""
    cfg = to_config(ReplicationEvalConfig, cfg)
    if cfg.search_dtype not in SEARCH_DTYPES:  # checked before hours of embedding, not after
        raise ValueError(f"search_dtype must be one of {sorted(SEARCH_DTYPES)}, got {cfg.search_dtype!r}")
    device = resolve_device(cfg.device)
    files = list_images(cfg.generated_dir)
    ids_of(files)
    descriptor = build_descriptor(cfg.descriptor, cfg.weights, device, random_weights=cfg.random_weights_test_only,
                                  resize=cfg.resize, seed=cfg.seed)
    store_dir = cfg.store_dir or os.path.join(cfg.out_dir, "train_descriptors")
    store = build_store(cfg.train_mds, store_dir, descriptor, chunk_size=cfg.chunk_size, dtype=cfg.store_dtype,
                        batch_size=cfg.batch_size, num_workers=cfg.num_workers, max_samples=cfg.max_train_samples)
    if store.num_samples < 2:
        raise ValueError(f"{cfg.train_mds}: the background needs at least 2 training images")
    search = dict(chunk_rows=cfg.search_chunk_rows, device=device, compute_dtype=SEARCH_DTYPES[cfg.search_dtype])

    generated, names = embed_dataset(FolderImages(files, descriptor.transform), descriptor,
                                     batch_size=cfg.batch_size, num_workers=cfg.num_workers, description="generated")
    scores, index = topk_cosine(generated, store.blocks(), k=min(cfg.top_k, store.num_samples), **search)

    rng = np.random.default_rng(cfg.seed)
    n_bg = min(cfg.background_queries, store.num_samples)
    bg_index = np.sort(rng.choice(store.num_samples, n_bg, replace=False))
    bg_scores, _ = nearest_other(store.rows(bg_index), bg_index, store.blocks(), **search)

    os.makedirs(cfg.out_dir, exist_ok=True)
    matches = []
    attribution = store.attributions(index)
    with open(os.path.join(cfg.out_dir, MATCHES_FILE), "w") as f:
        for name, row_scores, row_index in zip(names, scores, index):
            row = {"generated": name, "matches": [
                {"score": float(s), **attribution[int(i)]} for s, i in zip(row_scores, row_index)
            ]}
            matches.append(row)
            f.write(json.dumps(row) + "\n")

    order = np.argsort(-scores[:, 0], kind="stable")
    top = [matches[i] for i in order[:cfg.grid_rows]]
    report = {
        "descriptor": descriptor.name,
        "random_weights_test_only": cfg.random_weights_test_only,
        "generated_dir": os.path.abspath(cfg.generated_dir),
        "train_mds": os.path.abspath(cfg.train_mds),
        "store_dir": os.path.abspath(store_dir),
        "n_train": store.num_samples,
        "thresholds": list(cfg.thresholds),
        "generated": similarity_stats(scores[:, 0], cfg.thresholds),
        "train_background": similarity_stats(bg_scores, cfg.thresholds),
        "top_matches": [{"generated": m["generated"], **m["matches"][0]} for m in top],
        "matches_file": MATCHES_FILE,
        "grid": GRID_FILE,
    }
    if cfg.random_weights_test_only:
        report["warning"] = "random descriptor weights: these similarities measure nothing"
    _draw_grid(top, cfg, os.path.join(cfg.out_dir, GRID_FILE))
    with open(os.path.join(cfg.out_dir, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=2)
    return report


def _draw_grid(top: list[dict], cfg: ReplicationEvalConfig, path: str) -> None:
    from streaming import LocalDataset

    train = LocalDataset(local=cfg.train_mds)
    rows = []
    for m in top:
        with Image.open(os.path.join(cfg.generated_dir, m["generated"])) as image:
            generated = image.convert("RGB")
        rows.append({"name": m["generated"], "image": generated, "matches": [
            {**match, "image": train[match["index"]][schema.IMAGE]} for match in m["matches"][:cfg.grid_matches]
        ]})
    draw_match_grid(rows, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.replication.job", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="yaml with ReplicationEvalConfig fields")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    cfg = OmegaConf.merge(OmegaConf.load(args.config), OmegaConf.from_dotlist(args.overrides))
    try:
        report = run(cfg)
    except (FileNotFoundError, ValueError, KeyError, OmegaConfBaseException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for label in ("generated", "train_background"):
        s = report[label]
        shares = "  ".join(f"> {t:g}: {s[f'share_above_{t:g}']:.2%}" for t in report["thresholds"])
        print(f"{label}: n={s['n']} mean {s['mean']:.3f} p95 {s['p95']:.3f}  {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

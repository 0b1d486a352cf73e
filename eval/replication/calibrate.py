"""Copy threshold for a descriptor: train-vs-train background similarities vs planted-copy similarities.

SSCD comes with thresholds measured on DISC21 (0.5 likely copy, 0.75 copy at ~90% precision); any other
descriptor (DINOv2 above all, the permissively licensed option) needs its own. The procedure, on the audited
training set itself:
  1. background: for `n_background` random training images, the cosine of their nearest *other* training image
     (found with the audit's index, re-ranked exactly): what "not a copy" looks like in this data;
  2. planted copies: `n_copies` other random training images, each edited as generations that copy tend to be
     (EDITS: exact, centre crop 80%, resize to half and back, colour/brightness jitter, JPEG q=40), embedded, and
     compared with their own source's stored descriptor: what "a copy" looks like;
  3. the threshold: if every copy scores above every background pair, the midpoint of the gap; otherwise the
     value maximising TPR - FPR (Youden's J) over all observed similarities. The report gives the threshold,
     the gap (or overlap), and the false-positive rate on the background and the recall per edit at it.

    python -m eval.replication.calibrate CONFIG.yaml [key=value ...]   (the replication yaml; writes
        <out_dir>/calibration.json)
"""
from __future__ import annotations

import io
import json
import os
import sys
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance
from torch.utils.data import Dataset

from data_prep import schema
from eval.config import resolve_device, run_job_cli, to_config
from eval.replication.descriptors import build_descriptor
from eval.replication.index import open_index
from eval.replication.search import nearest_other
from eval.replication.store import build_store, embed_dataset

CALIBRATION_FILE = "calibration.json"


def _jpeg(image: Image.Image, quality: int = 40) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _center_crop(image: Image.Image, keep: float = 0.8) -> Image.Image:
    w, h = image.size
    dw, dh = int(w * (1 - keep) / 2), int(h * (1 - keep) / 2)
    return image.crop((dw, dh, w - dw, h - dh))


EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "exact": lambda im: im.copy(),
    "crop80": _center_crop,
    "resize_half": lambda im: im.resize((max(1, im.width // 2), max(1, im.height // 2))).resize(im.size),
    "color_jitter": lambda im: ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.2)).enhance(0.7),
    "jpeg40": _jpeg,
}


def separating_threshold(background: np.ndarray, copies: np.ndarray) -> dict:
    """The threshold between background (negatives) and copy (positives) similarities, with its error rates."""
    background, copies = np.asarray(background, np.float64), np.asarray(copies, np.float64)
    gap = float(copies.min() - background.max())
    if gap > 0:
        threshold, method = float((copies.min() + background.max()) / 2), "midpoint of the gap"
    else:
        candidates = np.unique(np.concatenate([background, copies]))
        # a similarity counts as a copy when > threshold; try each observed value as the threshold
        tpr = (copies[None, :] > candidates[:, None]).mean(1)
        fpr = (background[None, :] > candidates[:, None]).mean(1)
        threshold, method = float(candidates[np.argmax(tpr - fpr)]), "max TPR - FPR (distributions overlap)"
    return {
        "threshold": threshold, "method": method, "separated": gap > 0, "gap": gap,
        "false_positive_rate": float((background > threshold).mean()), "recall": float((copies > threshold).mean()),
        "background": {"n": int(len(background)), "max": float(background.max()), "p99": float(np.percentile(background, 99)),
                       "mean": float(background.mean())},
        "copies": {"n": int(len(copies)), "min": float(copies.min()), "p01": float(np.percentile(copies, 1)),
                   "mean": float(copies.mean())},
    }


class EditedTrainImages(Dataset):
    """Training images [indices], each under `edit`, as the descriptor's input tensors."""

    def __init__(self, mds_dir: str, indices: np.ndarray, edit: Callable, transform: Callable):
        self.mds_dir, self.indices, self.edit, self.transform = mds_dir, indices, edit, transform
        self._dataset = None

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        from streaming import LocalDataset

        if self._dataset is None:
            self._dataset = LocalDataset(local=self.mds_dir)
        image = self._dataset[int(self.indices[i])][schema.IMAGE].convert("RGB")
        return self.transform(self.edit(image)), int(self.indices[i])


def run(cfg, n_background: int = 1000, n_copies: int = 200) -> dict:
    """Calibrates the threshold of cfg's descriptor on cfg's training set (a ReplicationEvalConfig / dict)."""
    from eval.replication.job import ReplicationEvalConfig

    cfg = to_config(ReplicationEvalConfig, cfg)
    descriptor = build_descriptor(cfg.descriptor, cfg.weights, resolve_device(cfg.device),
                                  random_weights=cfg.random_weights_test_only, resize=cfg.resize, seed=cfg.seed)
    store = build_store(cfg.train_mds, cfg.store_dir or os.path.join(cfg.out_dir, "train_descriptors"), descriptor,
                        chunk_size=cfg.chunk_size, dtype=cfg.store_dtype, batch_size=cfg.batch_size,
                        num_workers=cfg.num_workers, max_samples=cfg.max_train_samples)
    if store.num_samples < 4:
        raise ValueError(f"{cfg.train_mds}: calibration needs at least 4 training images")
    index = open_index(store, cfg.index)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(store.num_samples)
    n_copies = min(n_copies, store.num_samples // 2)
    copy_src, bg_rows = np.sort(order[:n_copies]), np.sort(order[n_copies:n_copies + n_background])
    background, _ = nearest_other(store.rows(bg_rows), bg_rows, index.search)
    per_edit, all_copies = {}, []
    for name, edit in EDITS.items():
        emb, src = embed_dataset(EditedTrainImages(cfg.train_mds, copy_src, edit, descriptor.transform), descriptor,
                                 batch_size=cfg.batch_size, num_workers=cfg.num_workers, description=f"copies {name}")
        sims = (emb * store.rows(np.array(src))).sum(1)
        per_edit[name] = sims
        all_copies.append(sims)
    result = separating_threshold(background, np.concatenate(all_copies))
    result["recall_per_edit"] = {k: float((v > result["threshold"]).mean()) for k, v in per_edit.items()}
    result.update({"descriptor": descriptor.name, "descriptor_weights_license": descriptor.license,
                   "train_mds": os.path.abspath(cfg.train_mds), "n_train": store.num_samples, "index": index.factory})
    if cfg.random_weights_test_only:
        result["warning"] = "random descriptor weights: this threshold means nothing"
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, CALIBRATION_FILE), "w") as f:
        json.dump(result, f, indent=2)
    return result


def main(argv=None) -> int:
    from eval.replication.job import CONFIG_SCHEMA

    status, result = run_job_cli(argv, "python -m eval.replication.calibrate", __doc__.split("\n\n")[0], CONFIG_SCHEMA, run)
    if result is not None:
        print(f"threshold {result['threshold']:.3f} ({result['method']}): background FPR {result['false_positive_rate']:.2%}, "
              f"copy recall {result['recall']:.2%}, gap {result['gap']:+.3f}")
    return status


if __name__ == "__main__":
    sys.exit(main())

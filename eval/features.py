"""Runs a feature extractor over image files through clean-fid's own loader (clean-mode resize, batching)."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch
from cleanfid.fid import get_files_features

from eval.extractors import FeatureExtractor


def extract_features(
    files: list[str], extractor: FeatureExtractor, *, batch_size: int = 32, num_workers: int = 0,
    device: torch.device = torch.device("cpu"), description: str = "",
) -> np.ndarray:
    """One row per file, in the order of `files`."""
    feats = get_files_features(
        files, model=extractor.fn, num_workers=num_workers, batch_size=batch_size, device=device, mode="clean",
        custom_fn_resize=extractor.resize, description=description, verbose=True,
    )
    return np.asarray(feats, dtype=np.float32)


def files_fingerprint(files: list[str]) -> str:
    """Changes when a file is added, removed, renamed or rewritten (size or mtime)."""
    h = hashlib.sha1()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.basename(f)}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()


def cached_features(cache_dir: str, label: str, files: list[str], extractor: FeatureExtractor, **kwargs) -> np.ndarray:
    """`extract_features`, stored under cache_dir and reused while the files and the extractor are the same."""
    os.makedirs(cache_dir, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{label}__{extractor.name}")
    path = os.path.join(cache_dir, safe + ".npz")
    key = json.dumps({"files": files_fingerprint(files), "extractor": extractor.name})
    if os.path.exists(path):
        cached = np.load(path)
        if str(cached["key"]) == key:
            return cached["feats"]
    feats = extract_features(files, extractor, description=f"{label} {extractor.name}", **kwargs)
    tmp = path + ".tmp.npz"
    np.savez(tmp, feats=feats, key=np.array(key))
    os.replace(tmp, path)
    return feats

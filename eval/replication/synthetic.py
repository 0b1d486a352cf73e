"""Synthetic descriptor stores with the structure of real ones, for benchmarks/replication_search.py and tests.

A mixture of n/256 clusters: centres uniform on the unit sphere, cluster sizes log-normal (sigma 1, so a few
clusters are large), each point x = c*centre + sqrt(1-c^2)*u with u a random unit direction orthogonal to the
centre and c ~ U(0.35, 0.6) per cluster. In 512-d, same-cluster points then have cosine ~0.12-0.36 and
nearest-neighbour cosines mostly 0.25-0.45 (SSCD's train-vs-train background outside duplicates sits below 0.5).
1% of rows are replaced by near-duplicates of other rows (cosine U(0.7, 1.0)), as web-scale sets hold duplicates.
Written as a real descriptor store: float16 .npy chunks + manifest.json.
"""
from __future__ import annotations

import json
import os

import numpy as np
from tqdm import tqdm

from eval.replication.store import MANIFEST, DescriptorStore


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def toward(source: np.ndarray, cos: np.ndarray, rng) -> np.ndarray:
    """Unit vectors at exactly cosine `cos` from each (unit) source row."""
    u = rng.standard_normal(source.shape, dtype=np.float32)
    u -= (u * source).sum(1, keepdims=True) * source  # orthogonal to the source
    u = unit(u)
    return unit(cos[:, None] * source + np.sqrt(1 - cos[:, None] ** 2) * u).astype(np.float32)


class Mixture:
    """The clustered distribution described in the module docstring."""

    def __init__(self, n: int, dim: int, seed: int):
        rng = np.random.default_rng(seed)
        k = max(1, n // 256)
        self.centres = unit(rng.standard_normal((k, dim), dtype=np.float32))
        w = rng.lognormal(0.0, 1.0, k)
        self.weights = w / w.sum()
        self.spread = rng.uniform(0.35, 0.6, k).astype(np.float32)

    def sample(self, n: int, rng) -> np.ndarray:
        c = rng.choice(len(self.centres), n, p=self.weights)
        return toward(self.centres[c], self.spread[c], rng)


def write_store(folder: str, n: int, dim: int, chunk: int, seed: int) -> DescriptorStore:
    """The synthetic database as a descriptor store (float16 chunks); reused if already complete."""
    if os.path.exists(os.path.join(folder, MANIFEST)):
        store = DescriptorStore(folder)
        if store.is_complete():
            return store
    os.makedirs(os.path.join(folder, "chunks"), exist_ok=True)
    mixture = Mixture(n, dim, seed)
    rng = np.random.default_rng(seed + 1)
    num_chunks = -(-n // chunk)
    for k in tqdm(range(num_chunks), desc=f"synthetic {n:,}", unit="chunk"):
        rows = mixture.sample(min(chunk, n - k * chunk), rng)
        dup = np.nonzero(rng.random(len(rows)) < 0.01)[0]  # near-duplicates of rows of the same chunk
        if len(dup):
            src = rng.integers(0, len(rows), len(dup))
            rows[dup] = toward(rows[src], rng.uniform(0.7, 1.0, len(dup)).astype(np.float32), rng)
        path = os.path.join(folder, "chunks", f"desc_{k:06d}.npy")
        np.save(path + ".tmp.npy", rows.astype(np.float16))
        os.replace(path + ".tmp.npy", path)
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump({"descriptor": f"synthetic-mixture-seed{seed}", "num_samples": n, "chunk_size": chunk,
                   "dtype": "float16", "dim": dim}, f)
    return DescriptorStore(folder)

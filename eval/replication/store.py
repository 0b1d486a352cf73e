"""Descriptors of the whole training set, computed once from its MDS shards and stored beside their attribution.

Layout of a store folder:
    manifest.json                  what was embedded (descriptor, source, sample count, chunk size, dtype)
    chunks/desc_000000.npy         (rows, dim) descriptors of samples [k*chunk_size, (k+1)*chunk_size)
    chunks/attr_000000.jsonl       one line per sample: its index and attribution columns
Each chunk is written to a temporary name and renamed, the .npy last, so a chunk whose .npy exists is
complete: an interrupted run resumes at the first missing chunk. The MDS folder must be local (sync
remote shards first); `streaming.LocalDataset` reads it, opened separately in every DataLoader worker.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Optional

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data_prep import schema
from eval.replication.descriptors import ImageDescriptor

MANIFEST = "manifest.json"
# Attribution travels with every match so a report can credit (or flag) the exact source photo.
ATTRIBUTION_KEYS = ("photo_id", "title", "author_name", "page_url", "license", "license_url")


class MDSImages(Dataset):
    """(transformed image, attribution dict) for samples [start, stop) of a local MDS folder."""

    def __init__(self, mds_dir: str, transform: Callable, start: int = 0, stop: Optional[int] = None):
        self.mds_dir = mds_dir
        self.transform = transform
        self.start = start
        self.stop = num_samples(mds_dir) if stop is None else stop
        self._dataset = None  # opened lazily so each worker process has its own readers

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        from streaming import LocalDataset

        if self._dataset is None:
            self._dataset = LocalDataset(local=self.mds_dir)
        index = self.start + i
        sample = self._dataset[index]
        try:
            tensor = self.transform(sample[schema.IMAGE])
        except (OSError, KeyError) as e:
            raise ValueError(f"{self.mds_dir} sample {index}: cannot read column {schema.IMAGE!r} ({e})") from None
        return tensor, attribution_of(sample, index)


def attribution_of(sample: dict, index: int) -> dict:
    row = {"index": index}
    for key in ATTRIBUTION_KEYS:
        value = sample.get(key)
        row[key] = "" if value is None else str(value)
    return row


def num_samples(mds_dir: str) -> int:
    path = os.path.join(mds_dir, "index.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no MDS index.json in {mds_dir}")
    with open(path) as f:
        return sum(int(shard["samples"]) for shard in json.load(f)["shards"])


def _collate(batch):
    tensors, rows = zip(*batch)
    return list(tensors), list(rows)


def embed_dataset(dataset: Dataset, descriptor: ImageDescriptor, *, batch_size: int, num_workers: int,
                  description: str = "") -> tuple[np.ndarray, list]:
    """Descriptors (float32) and the dataset's second item for each sample, in dataset order."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    embeddings, extras = [], []
    for tensors, rows in tqdm(loader, desc=description, unit="batch", leave=False):
        embeddings.append(descriptor.embed_list(tensors).numpy())
        extras.extend(rows)
    return np.concatenate(embeddings).astype(np.float32), extras


class DescriptorStore:
    def __init__(self, store_dir: str):
        path = os.path.join(store_dir, MANIFEST)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no descriptor store at {store_dir} ({MANIFEST} missing)")
        with open(path) as f:
            self.manifest = json.load(f)
        self.store_dir = store_dir
        self.num_samples = int(self.manifest["num_samples"])
        self.chunk_size = int(self.manifest["chunk_size"])
        self.num_chunks = -(-self.num_samples // self.chunk_size)

    def _path(self, kind: str, k: int) -> str:
        ext = "npy" if kind == "desc" else "jsonl"
        return os.path.join(self.store_dir, "chunks", f"{kind}_{k:06d}.{ext}")

    def is_complete(self) -> bool:
        return all(os.path.exists(self._path("desc", k)) for k in range(self.num_chunks))

    def blocks(self) -> list[np.ndarray]:
        """The descriptor chunks, memory-mapped, in sample order (the search walks them one by one)."""
        return [np.load(self._path("desc", k), mmap_mode="r") for k in range(self.num_chunks)]

    def rows(self, indices: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Descriptors of the given sample indices, in that order, as `dtype` (None: as stored, e.g. float16, which
        leaves the conversion to a faster caller); one fancy-indexed read per chunk."""
        indices = np.asarray(indices, dtype=np.int64).ravel()
        blocks = self._blocks_cached()
        out = np.empty((len(indices), blocks[0].shape[1]), dtype=dtype or blocks[0].dtype)
        order = np.argsort(indices, kind="stable")
        chunk_of = indices[order] // self.chunk_size
        starts = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1]])
        for a, b in zip(starts, np.r_[starts[1:], len(order)]):
            k = int(chunk_of[a])
            where = order[a:b]
            out[where] = blocks[k][indices[where] - k * self.chunk_size]  # sorted rows: sequential-ish reads
        return out

    def _blocks_cached(self) -> list[np.ndarray]:
        # memory maps are cheap to keep; re-opening ~1000 chunk files per re-rank batch is not
        if getattr(self, "_mmaps", None) is None:
            self._mmaps = self.blocks()
        return self._mmaps

    def _attribution_chunk(self, k: int) -> list[dict]:
        with open(self._path("attr", k)) as f:
            return [json.loads(line) for line in f]

    def attributions(self, indices) -> dict[int, dict]:
        """Attribution rows of the given sample indices, reading each chunk file once."""
        wanted: dict[int, list[int]] = {}
        for i in {int(i) for i in np.asarray(indices).ravel() if i >= 0}:
            wanted.setdefault(i // self.chunk_size, []).append(i)
        out = {}
        for k, members in wanted.items():
            rows = self._attribution_chunk(k)
            for i in members:
                out[i] = rows[i % self.chunk_size]
        return out

    def attribution(self, index: int) -> dict:
        return self.attributions([index])[int(index)]


def build_store(
    mds_dir: str, store_dir: str, descriptor: ImageDescriptor, *, chunk_size: int = 10000, dtype: str = "float16",
    batch_size: int = 64, num_workers: int = 4, max_samples: Optional[int] = None,
) -> DescriptorStore:
    """Embeds every sample of `mds_dir` (or its first max_samples), resuming a partial store of the same manifest."""
    if dtype not in ("float16", "float32"):
        raise ValueError(f"store dtype must be float16 or float32, got {dtype!r}")
    total = num_samples(mds_dir)
    if max_samples is not None:
        total = min(total, max_samples)
    if total == 0:
        raise ValueError(f"{mds_dir} holds no samples")
    manifest = {
        "descriptor": descriptor.name, "source": os.path.abspath(mds_dir), "num_samples": total,
        "chunk_size": chunk_size, "dtype": dtype,
    }
    os.makedirs(os.path.join(store_dir, "chunks"), exist_ok=True)
    manifest_path = os.path.join(store_dir, MANIFEST)
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            previous = json.load(f)
        previous.pop("dim", None)
        if previous != manifest:
            raise ValueError(
                f"{store_dir} holds descriptors of another run ({previous}); delete it or choose another store folder"
            )
    else:
        with open(manifest_path, "w") as f:
            json.dump(manifest, f, indent=2)
    store = DescriptorStore(store_dir)
    todo = [k for k in range(store.num_chunks) if not os.path.exists(store._path("desc", k))]
    for k in tqdm(todo, desc=f"train descriptors ({descriptor.name})", unit="chunk"):
        start, stop = k * chunk_size, min((k + 1) * chunk_size, total)
        dataset = MDSImages(mds_dir, descriptor.transform, start, stop)
        emb, rows = embed_dataset(dataset, descriptor, batch_size=batch_size, num_workers=num_workers,
                                  description=f"chunk {k}")
        attr_path, desc_path = store._path("attr", k), store._path("desc", k)
        with open(attr_path + ".tmp", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        os.replace(attr_path + ".tmp", attr_path)
        np.save(desc_path + ".tmp.npy", emb.astype(dtype))
        os.replace(desc_path + ".tmp.npy", desc_path)
    manifest["dim"] = int(store.blocks()[0].shape[1])
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=2)
    store.manifest = manifest
    return store

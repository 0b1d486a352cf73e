"""FAISS index over a descriptor store: built chunk by chunk (resumable), sharded by a memory budget, searched
approximately, then re-ranked with exact cosine similarity from the stored descriptors.

Layout, beside the store's chunks:
    <store_dir>/index/<name>/trained.faiss          the trained, empty index (coarse quantizer + PQ codebooks)
    <store_dir>/index/<name>/shard_000.faiss        finished shards, contiguous runs of store chunks
    <store_dir>/index/<name>/shard_001.partial.faiss the shard being filled, saved every `checkpoint_rows`
    <store_dir>/index/<name>/index.json             settings + finished shards (rows, first row)
A crash loses at most the rows added since the last checkpoint: a resumed build reloads the partial shard and
continues at row first_row + ntotal (chunks are added whole and in order, so ntotal says where it stopped).
Ids are global store row numbers (add_with_ids), so shards need no offsets.

"flat" is an exact IndexFlatIP (IDMap,Flat); "approx" a compressed IVF index (FAISS index_factory string,
default chosen from the set size by `default_factory`, see benchmarks/replication_search.py for the
measurement behind it). Every similarity returned by `ReplicationIndex.search` is recomputed exactly from
the stored float16 descriptors: the index only proposes candidates.
"""
from __future__ import annotations

import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from tqdm import tqdm

from eval.replication.store import DescriptorStore

log = logging.getLogger(__name__)
INDEX_KINDS = ("auto", "flat", "approx")
INDEX_FILE = "index.json"
RERANK_BLOCK = 256  # queries re-ranked together (see rerank)


@dataclass
class IndexSettings:
    kind: str = "auto"
    """"auto" (exact below approx_threshold training descriptors, approximate above), "flat" or "approx"."""
    approx_threshold: int = 1_000_000
    """auto: training sets of at least this many descriptors get the approximate index."""
    factory: Optional[str] = None
    """approx: a FAISS index_factory string (inner-product metric); None: default_factory(n, dim)."""
    nprobe: int = 16
    """approx: inverted lists visited per query (an HNSW graph index searches with efSearch = 4 * nprobe)."""
    candidates: int = 16
    """Index candidates per query re-ranked exactly (at least the k asked for)."""
    train_samples: int = 262_144
    """approx: stored descriptors (random, seeded) the coarse quantizer and PQ are trained on."""
    memory_budget_gb: float = 8.0
    """A shard holds at most this much index; above it the index is split and searched shard by shard."""
    checkpoint_rows: int = 1_000_000
    """Rows added between saves of the shard being built (the most a crash can lose)."""
    search_threads: int = 0
    """Query batches searched and re-ranked concurrently (0: one per CPU core; 1 on GPU)."""
    gpu: bool = True
    """Search on GPUs when faiss-gpu is installed and sees one. Fast-scan PQ has no GPU version and stays on CPU
    (with a warning); for GPU search choose e.g. factory "IVF8192,PQ64"."""
    seed: int = 0


def default_factory(n: int, dim: int) -> str:
    """IVF with ~2*sqrt(n) lists (a power of two; an HNSW coarse quantizer from 4096 lists, so assigning 10M+
    vectors stays cheap) and 4-bit fast-scan PQ, one sub-quantizer per 8 dimensions (32 bytes for 512-d).

    Measured side by side at 1M synthetic 512-d descriptors by benchmarks/replication_search.py
    (results/replication_search_cpu.md; 2 shared cores, nprobe 16, 16 candidates re-ranked): this index
    (IVF2048,PQ64x4fs) searched ~26k queries/s wall on an otherwise idle machine (~11k with other jobs running),
    ~13k per CPU second (~15k per CPU second with 8 candidates),
    8-bit IVF2048,PQ64 ~1.9k per CPU second with the same recall@1 (1.0 on every query whose exact top-1 is
    >= 0.5, planted copies all at rank 1), 1.7x the bytes and 2.3x the build CPU time; its finer codes only
    raise recall on plain queries (top-1 ~0.34, below any audit threshold). An HNSW coarse quantizer over 2048
    lists (IVF2048_HNSW32) was 2.4-2.8x slower than the flat one (its graph walk costs more than one BLAS product
    with 2048 centroids), so it is used only from 4096 lists, where a flat assignment of every added vector gets
    expensive. HNSW over PQ (IDMap,HNSW32_PQ64, efSearch 64) found only 68% of planted copies' exact top-1, at
    1.8k queries per CPU second, 7.6x the bytes and 7x the build CPU time. At 10M this default
    (IVF8192_HNSW32,PQ64x4fs) kept recall@1 1.0 at ~2.5k queries per CPU second; 22M/57M are extrapolated there.
    Searching that index through a flat quantizer over the same centroids was tried at 10M: ~4.9k queries per
    CPU second, but planted-copy recall@1 fell to 0.993 (nprobe 16) and 0.927 (nprobe 8), because the vectors
    were put in their lists by the HNSW walk, and the same walk at search time finds those lists again."""
    nlist = 2 ** max(2, min(16, round(math.log2(max(4.0, 2 * math.sqrt(n))))))
    quantizer = "_HNSW32" if nlist >= 4096 else ""
    m = max(1, dim // 8)
    m += m % 2  # fast-scan packs sub-quantizers in pairs
    while dim % m:
        m -= 2
    return f"IVF{nlist}{quantizer},PQ{max(m, 2)}x4fs"


def resolve_kind(settings: IndexSettings, n: int) -> str:
    if settings.kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {settings.kind!r}")
    if settings.kind == "auto":
        return "approx" if n >= settings.approx_threshold else "flat"
    return settings.kind


def _factory(settings: IndexSettings, kind: str, n: int, dim: int) -> str:
    if kind == "flat":
        return "IDMap,Flat"
    return settings.factory or default_factory(n, dim)


def _index_name(factory: str) -> str:
    return factory.replace(",", "-").replace("_", "-").lower()


def _atomic_write_index(index, path: str) -> None:
    import faiss

    faiss.write_index(index, path + ".tmp")
    os.replace(path + ".tmp", path)


def _atomic_write_json(obj: dict, path: str) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def bytes_per_vector(index) -> int:
    """Stored bytes per added vector: its code plus an 8-byte id."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return int(ivf.code_size) + 8
    try:
        return int(index.sa_code_size()) + 8
    except RuntimeError:  # e.g. IDMap or HNSW wrappers: count float32 rows, an upper bound for their codes
        return index.d * 4 + 8


def build_index(store: DescriptorStore, settings: IndexSettings, *, kind: Optional[str] = None) -> str:
    """Builds (or resumes, or reuses) the index of `store`; returns its folder."""
    import faiss

    n, dim = store.num_samples, int(store.manifest["dim"])
    kind = kind or resolve_kind(settings, n)
    factory = _factory(settings, kind, n, dim)
    folder = os.path.join(store.store_dir, "index", _index_name(factory))
    os.makedirs(folder, exist_ok=True)
    meta_path = os.path.join(folder, INDEX_FILE)
    identity = {"factory": factory, "kind": kind, "num_samples": n, "dim": dim, "chunk_size": store.chunk_size,
                "descriptor": store.manifest.get("descriptor")}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if {k: meta.get(k) for k in identity} != identity:
            raise ValueError(f"{folder} holds an index of other descriptors ({meta}); delete it to rebuild")
        if meta.get("complete"):
            return folder
    else:
        meta = {**identity, "shards": [], "complete": False}
        _atomic_write_json(meta, meta_path)

    trained_path = os.path.join(folder, "trained.faiss")
    if not os.path.exists(trained_path):
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            rng = np.random.default_rng(settings.seed)
            sample = np.sort(rng.choice(n, min(n, settings.train_samples), replace=False))
            ivf = faiss.try_extract_index_ivf(index)
            if ivf is not None:
                ivf.cp.niter = 10  # k-means on a sample: 10 iterations are within noise of 25 and 2.5x cheaper
            log.info("training %s on %d descriptors", factory, len(sample))
            index.train(store.rows(sample))
        _atomic_write_index(index, trained_path)
    per_vector = bytes_per_vector(faiss.read_index(trained_path))
    shard_rows = max(store.chunk_size, int(settings.memory_budget_gb * 2**30 // per_vector))

    next_row = sum(s["rows"] for s in meta["shards"])
    blocks = store.blocks()
    with tqdm(total=n, initial=next_row, desc=f"index {factory}", unit="row") as progress:
        while next_row < n:
            shard_id = len(meta["shards"])
            final_path = os.path.join(folder, f"shard_{shard_id:03d}.faiss")
            partial_path = os.path.join(folder, f"shard_{shard_id:03d}.partial.faiss")
            first_row = next_row
            index = faiss.read_index(partial_path if os.path.exists(partial_path) else trained_path)
            progress.update(index.ntotal)
            row = first_row + index.ntotal
            since_save = 0
            while row < n and index.ntotal < shard_rows:
                chunk = row // store.chunk_size
                x = np.ascontiguousarray(blocks[chunk], dtype=np.float32)
                index.add_with_ids(x, np.arange(row, row + len(x), dtype=np.int64))
                row += len(x)
                since_save += len(x)
                progress.update(len(x))
                if since_save >= settings.checkpoint_rows and row < n and index.ntotal < shard_rows:
                    _atomic_write_index(index, partial_path)
                    since_save = 0
            # finish order: shard file, then its record, then drop the partial (a crash in between redoes it)
            _atomic_write_index(index, final_path)
            meta["shards"].append({"file": os.path.basename(final_path), "first_row": first_row,
                                   "rows": int(index.ntotal)})
            _atomic_write_json(meta, meta_path)
            if os.path.exists(partial_path):
                os.remove(partial_path)
            next_row = row
    meta["complete"] = True
    meta["index_bytes"] = sum(os.path.getsize(os.path.join(folder, s["file"])) for s in meta["shards"])
    meta["settings"] = asdict(settings)
    _atomic_write_json(meta, meta_path)
    return folder


def _gpu_count() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


class ReplicationIndex:
    """Top-k training matches with exact similarities: index candidates, re-ranked from the store."""

    def __init__(self, folder: str, store: DescriptorStore, settings: IndexSettings):
        with open(os.path.join(folder, INDEX_FILE)) as f:
            self.meta = json.load(f)
        if not self.meta.get("complete"):
            raise ValueError(f"{folder}: index build not finished; run build_index again to resume it")
        self.folder = folder
        self.store = store
        self.settings = settings
        self.factory = self.meta["factory"]
        self.kind = self.meta["kind"]
        self.index_bytes = int(self.meta["index_bytes"])
        # all shards stay loaded when they fit the budget; otherwise each search streams them one by one
        self._cache = [] if self.index_bytes <= settings.memory_budget_gb * 2**30 else None
        self.on_gpu = False

    @property
    def num_shards(self) -> int:
        return len(self.meta["shards"])

    def _load(self, shard: dict):
        import faiss

        index = faiss.read_index(os.path.join(self.folder, shard["file"]))
        if self.kind == "approx":
            params = faiss.ParameterSpace()
            if faiss.try_extract_index_ivf(index) is not None:
                params.set_index_parameter(index, "nprobe", self.settings.nprobe)
                if "HNSW" in self.factory.split(",")[0]:  # the coarse quantizer must see at least nprobe lists
                    params.set_index_parameter(index, "quantizer_efSearch", max(64, 2 * self.settings.nprobe))
            elif "HNSW" in self.factory:  # a graph index (HNSW over PQ): its search breadth plays nprobe's part
                params.set_index_parameter(index, "efSearch", 4 * self.settings.nprobe)
        if self.settings.gpu and _gpu_count() > 0:
            try:
                index = faiss.index_cpu_to_all_gpus(index)
                self.on_gpu = True
            except RuntimeError as e:  # e.g. fast-scan PQ has no GPU version
                log.warning("searching %s on CPU: %s", self.factory, str(e).splitlines()[0])
        return index

    def _shards(self):
        if self._cache is None:
            for shard in self.meta["shards"]:
                yield self._load(shard)
            return
        if not self._cache:
            self._cache = [self._load(s) for s in self.meta["shards"]]
        yield from self._cache

    def candidates(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The index's own top-k (approximate scores for "approx"), merged over shards; ids -1 where none."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        best_s = best_i = None
        for index in self._shards():
            s, i = index.search(q, k)
            s = np.where(i < 0, -np.inf, s)
            if best_s is None:  # the first (often only) shard needs no merge
                best_s, best_i = s, i
                continue
            all_s, all_i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1)
            top = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
        return best_s, best_i

    def search(self, queries: np.ndarray, k: int, batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), (n, k), best first; scores are exact cosines with the stored descriptors.

        Query batches run on `search_threads` Python threads: FAISS, the store gather and torch release the GIL,
        so one batch's index search overlaps another's re-rank (the re-rank alone is single-threaded)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        c = max(k, self.settings.candidates)
        if self._cache is None:  # shards streamed from disk: each read once for all queries, then re-ranked
            ids = self.candidates(q, c)[1]

            def work(s):
                return rerank(q[s:s + batch], ids[s:s + batch], self.store, k)
        else:
            list(self._shards())  # loads the shards once, before the threads share them

            def work(s):
                return rerank(q[s:s + batch], self.candidates(q[s:s + batch], c)[1], self.store, k)
        threads = 1 if self.on_gpu else (self.settings.search_threads or os.cpu_count() or 1)
        starts = range(0, len(q), batch)
        if threads == 1 or len(starts) <= 1:
            out = [work(s) for s in starts]
        else:
            with ThreadPoolExecutor(min(threads, len(starts))) as pool:
                out = list(pool.map(work, starts))
        if not out:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


def rerank(queries: np.ndarray, ids: np.ndarray, store: DescriptorStore, k: int,
           block: int = RERANK_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine of each query with its candidate rows (read from the store), top-k of them, best first.

    The rows are gathered once in the stored dtype, then converted to float32 and multiplied `block` queries at a
    time so each float32 block stays in cache (torch: vectorised float16 conversion, batched dot products); one
    float32 gather + numpy einsum over all candidates ran ~5x slower at 1M (memory-bound)."""
    import torch

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    n, c = ids.shape
    # one gather in the stored dtype (rows sorted per chunk: few, near-sequential reads); -1 ids masked below
    rows = torch.from_numpy(store.rows(np.where(ids >= 0, ids, 0), dtype=None)).view(n, c, -1)
    sims = np.empty((n, c), dtype=np.float32)
    for s in range(0, n, block):
        sims[s:s + block] = torch.bmm(rows[s:s + block].float(), q[s:s + block, :, None])[..., 0].numpy()
    sims[ids < 0] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    scores, top = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
    return scores, np.where(np.isneginf(scores), -1, top)


def recall_at_1(approx_top1: np.ndarray, approx_scores: np.ndarray, exact_top1: np.ndarray,
                exact_scores: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """Per query: the index's re-ranked top-1 is the exact top-1 (or an exact tie with it, e.g. a duplicate)."""
    return (approx_top1 == exact_top1) | (approx_scores >= exact_scores - tol)


def open_index(store: DescriptorStore, settings: IndexSettings) -> ReplicationIndex:
    return ReplicationIndex(build_index(store, settings), store, settings)

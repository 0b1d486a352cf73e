import json
import os
import shutil

import numpy as np
import pytest

from eval.replication.synthetic import toward, write_store
from eval.replication.index import (
    IndexSettings, ReplicationIndex, build_index, default_factory, open_index, recall_at_1, rerank, resolve_kind,
)
from eval.replication.search import topk_cosine
from eval.replication.store import DescriptorStore

N, DIM, CHUNK = 2000, 64, 200
# small enough to train in a second on 2 cores; the same code path as the default (IVF + 4-bit fast-scan PQ)
APPROX = dict(kind="approx", factory="IVF16,PQ16x4fs", nprobe=8, candidates=16, train_samples=1000)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """A clustered synthetic store (the benchmark's generator) with float16 chunks; read-only for tests."""
    return write_store(str(tmp_path_factory.mktemp("store") / "s"), N, DIM, CHUNK, seed=0).store_dir


def _copy(store_dir, tmp_path) -> DescriptorStore:
    """A private copy, so each test builds its own index beside the chunks."""
    shutil.copytree(store_dir, tmp_path / "s", ignore=shutil.ignore_patterns("index"))
    return DescriptorStore(str(tmp_path / "s"))


def _planted(store: DescriptorStore, rng):
    """Exact copies and lightly edited copies (cosine 0.85-0.98 to their source) of random stored rows."""
    sources = rng.choice(N, 40, replace=False)
    cos = np.r_[np.ones(10), rng.uniform(0.85, 0.98, 30)].astype(np.float32)
    return toward(store.rows(sources), cos, rng), sources


def test_approximate_index_finds_planted_exact_and_edited_copies_at_rank_one(store_dir, tmp_path):
    store = _copy(store_dir, tmp_path)
    index = open_index(store, IndexSettings(**APPROX))
    assert index.kind == "approx" and index.factory == "IVF16,PQ16x4fs"
    queries, sources = _planted(store, np.random.default_rng(1))
    scores, ids = index.search(queries, 5)
    exact_s, exact_i = topk_cosine(queries, store.blocks(), k=1)
    exact_top1 = recall_at_1(ids[:, 0], scores[:, 0], exact_i[:, 0], exact_s[:, 0])
    # rank 1 is the planted copy's source, or the exact top-1 (a stored near-duplicate of it may be closer)
    assert ((ids[:, 0] == sources) | exact_top1).all()
    assert exact_top1.mean() >= 0.95 and (ids[:, 0] == sources).mean() >= 0.9
    np.testing.assert_allclose(scores[:10, 0], 1.0, atol=2e-3)  # float16 storage of an exact copy
    assert (np.diff(scores, axis=1) <= 0).all()


def test_reranked_similarities_equal_exact_cosine(store_dir, tmp_path):
    store = _copy(store_dir, tmp_path)
    index = open_index(store, IndexSettings(**APPROX))
    rng = np.random.default_rng(2)
    queries = toward(store.rows(rng.choice(N, 20)), rng.uniform(0.3, 1.0, 20).astype(np.float32), rng)
    scores, ids = index.search(queries, 5)
    approx_scores, _ = index.candidates(queries, 5)
    stored = np.concatenate(store.blocks()).astype(np.float64)  # the float16 descriptors, exactly
    exact = np.einsum("qd,qkd->qk", queries.astype(np.float64), stored[ids])
    np.testing.assert_allclose(scores, exact, rtol=0, atol=1e-6)
    assert np.abs(approx_scores - scores).max() > 1e-3  # the PQ scores alone would not have been exact


def test_threaded_batched_search_equals_serial_and_rerank_skips_missing_candidates(store_dir, tmp_path):
    store = _copy(store_dir, tmp_path)
    queries, _ = _planted(store, np.random.default_rng(4))
    serial = open_index(store, IndexSettings(**APPROX, search_threads=1))
    threaded = ReplicationIndex(serial.folder, store, IndexSettings(**APPROX, search_threads=3))
    s1, i1 = serial.search(queries, 5)
    s3, i3 = threaded.search(queries, 5, batch=7)  # 6 batches over 3 threads, the last one short
    np.testing.assert_array_equal(i1, i3)
    np.testing.assert_array_equal(s1, s3)
    assert threaded.search(queries[:0], 5)[1].shape == (0, 5)

    # -1 = the index had fewer candidates than asked: never returned, and padded with -1 / -inf past the real ones
    ids = np.array([[5, -1, 7], [-1, -1, 9], [-1, -1, -1]], dtype=np.int64)
    q = queries[:3]
    scores, top = rerank(q, ids, store, 3, block=2)  # block 2: the re-rank's block boundary falls inside
    stored = store.rows(np.array([5, 7, 9])).astype(np.float64)
    exact = q.astype(np.float64) @ stored.T
    first = [5, 7] if exact[0, 0] >= exact[0, 1] else [7, 5]
    assert top[0].tolist() == first + [-1] and top[1].tolist() == [9, -1, -1] and top[2].tolist() == [-1] * 3
    np.testing.assert_allclose(scores[0, :2], sorted(exact[0, :2], reverse=True), atol=1e-6)
    np.testing.assert_allclose(scores[1, 0], exact[1, 2], atol=1e-6)
    assert np.isneginf(scores[0, 2]) and np.isneginf(scores[2]).all()


def test_flat_index_is_exact_and_sharded_by_the_memory_budget(store_dir, tmp_path):
    store = _copy(store_dir, tmp_path)
    budget = 700 * (DIM * 4 + 8) / 2**30  # ~700 rows per shard -> whole chunks, 3 shards
    index = open_index(store, IndexSettings(kind="flat", memory_budget_gb=budget))
    assert index.kind == "flat" and index.num_shards == 3 and index._cache is None  # searched shard by shard
    rows = [s["rows"] for s in index.meta["shards"]]
    assert sum(rows) == N and all(r % CHUNK == 0 for r in rows[:-1])
    queries = store.rows(np.arange(0, N, 97)) + 0.05
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, ids = index.search(queries, 3)
    exact_s, exact_i = topk_cosine(queries, store.blocks(), k=3)
    np.testing.assert_array_equal(ids, exact_i)
    np.testing.assert_allclose(scores, exact_s, atol=1e-6)


class _FailingBlocks(list):
    """The store's chunks, recording which are read and failing (like a killed job) at `fail_at`."""

    def __init__(self, blocks, seen, fail_at=None):
        super().__init__(blocks)
        self.seen, self.fail_at = seen, fail_at

    def __getitem__(self, k):
        if k == self.fail_at:
            raise KeyboardInterrupt("killed")
        self.seen.append(k)
        return super().__getitem__(k)


def test_interrupted_build_resumes_from_its_last_checkpoint(store_dir, tmp_path):
    store = _copy(store_dir, tmp_path)
    settings = IndexSettings(**APPROX, checkpoint_rows=2 * CHUNK)
    real_blocks = store.blocks
    store.rows(np.arange(3))  # opens the store's own cached chunks for training/re-ranking: only adds are watched
    seen = []
    store.blocks = lambda: _FailingBlocks(real_blocks(), seen, fail_at=5)
    with pytest.raises(KeyboardInterrupt):
        build_index(store, settings)
    folder = os.path.join(store.store_dir, "index", "ivf16-pq16x4fs")
    assert seen == [0, 1, 2, 3, 4] and os.path.exists(os.path.join(folder, "shard_000.partial.faiss"))
    with pytest.raises(ValueError, match="not finished"):
        ReplicationIndex(folder, store, settings)

    seen.clear()
    store.blocks = lambda: _FailingBlocks(real_blocks(), seen)
    assert build_index(store, settings) == folder
    assert seen == [4, 5, 6, 7, 8, 9]  # chunks 0-3 were in the checkpoint; chunk 4 was lost and redone
    meta = json.load(open(os.path.join(folder, "index.json")))
    assert meta["complete"] and meta["shards"] == [{"file": "shard_000.faiss", "first_row": 0, "rows": N}]
    assert not os.path.exists(os.path.join(folder, "shard_000.partial.faiss"))
    seen.clear()
    build_index(store, settings)  # complete: reused, nothing read
    assert seen == []

    store.blocks = real_blocks
    fresh = _copy(store_dir, tmp_path / "fresh")
    queries, _ = _planted(store, np.random.default_rng(3))
    resumed = ReplicationIndex(folder, store, settings)
    uninterrupted = open_index(fresh, settings)
    assert resumed.candidates(queries, 8)[1].tolist() == uninterrupted.candidates(queries, 8)[1].tolist()


def test_index_settings_and_identity_checks(store_dir, tmp_path):
    assert default_factory(1_000_000, 512) == "IVF2048,PQ64x4fs"
    assert default_factory(22_000_000, 512) == "IVF8192_HNSW32,PQ64x4fs"
    assert default_factory(1000, 32).endswith("PQ4x4fs")
    assert resolve_kind(IndexSettings(), 999_999) == "flat" and resolve_kind(IndexSettings(), 10**6) == "approx"
    with pytest.raises(ValueError, match="index kind"):
        resolve_kind(IndexSettings(kind="hnsw"), 10)
    store = _copy(store_dir, tmp_path)
    folder = build_index(store, IndexSettings(kind="flat"))
    meta_path = os.path.join(folder, "index.json")
    meta = json.load(open(meta_path))
    json.dump({**meta, "num_samples": N + 1}, open(meta_path, "w"))
    with pytest.raises(ValueError, match="other descriptors"):
        build_index(store, IndexSettings(kind="flat"))

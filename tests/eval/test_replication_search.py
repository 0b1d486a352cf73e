import numpy as np
import pytest
import torch

from eval.replication.search import nearest_other, topk_cosine


def unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("chunk_rows,query_batch", [(7, 3), (1000, 4096), (1, 2)])
def test_topk_matches_brute_force_across_blocks_and_chunks(chunk_rows, query_batch):
    rng = np.random.default_rng(0)
    db = unit(rng, 50, 16)
    q = unit(rng, 9, 16)
    blocks = [db[:13], db[13:14], db[14:]]  # uneven blocks, like a store's last chunk
    scores, index = topk_cosine(q, blocks, k=4, chunk_rows=chunk_rows, query_batch=query_batch)
    brute = q @ db.T
    expected = np.argsort(-brute, axis=1)[:, :4]
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), rtol=1e-5, atol=1e-6)


def test_float16_storage_and_small_database():
    rng = np.random.default_rng(1)
    db = unit(rng, 40, 32)
    q = db[[3, 17]] + 0.01 * rng.normal(size=(2, 32)).astype(np.float32)
    for dtype in (torch.float32, torch.bfloat16):
        scores, index = topk_cosine(q, db.astype(np.float16), k=1, chunk_rows=16, compute_dtype=dtype)
        assert index[:, 0].tolist() == [3, 17]
    scores, index = topk_cosine(q, db[:2], k=3)
    assert index[0, 2] == -1 and scores[0, 2] == -np.inf  # fewer rows than k


def test_nearest_other_skips_self_and_keeps_duplicates():
    rng = np.random.default_rng(2)
    db = unit(rng, 30, 8)
    db[20] = db[5]  # an exact duplicate inside the training set
    idx = np.array([0, 5, 20, 29])
    scores, index = nearest_other(db[idx], idx, lambda q, k: topk_cosine(q, [db[:10], db[10:]], k=k, chunk_rows=4))
    sims = db @ db.T
    np.fill_diagonal(sims, -np.inf)
    assert index[0] == np.argmax(sims[0]) and index[3] == np.argmax(sims[29])
    assert index[1] == 20 and index[2] == 5 and scores[1] == pytest.approx(1.0)
    assert (index != idx).all()


def _benchmark_module():
    # by path: tests/benchmarks/ is also a package named "benchmarks" and shadows the repository's one
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "replication_search.py")
    spec = importlib.util.spec_from_file_location("replication_search_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_search_benchmark_writes_one_row_per_index_and_size(tmp_path):
    import json

    bench = _benchmark_module()
    out = tmp_path / "out"
    argv = ["--runs", "3000:IVF8,PQ8x4fs", "3000:IDMap,Flat", "--dim", "32", "--matched", "40", "--plain", "40",
            "--ground-truth", "20", "--chunk", "1000", "--train-samples", "1000", "--sweep", "8:16",
            "--scratch", str(tmp_path / "scratch"), "--out", str(out)]
    assert bench.main(argv) == 0
    result = json.loads((out / bench.RESULT_FILE).read_text())
    rows = {r["index"]: r for r in result["rows"]}
    assert set(rows) == {"exact", "IVF8,PQ8x4fs", "IDMap,Flat"} and all(r["n_database"] == 3000 for r in rows.values())
    for r in rows.values():
        for key in ("queries_per_s", "recall_at_1_matched", "recall_at_1_plain", "build_s", "index_bytes"):
            assert key in r
        assert r["queries_per_s"] > 0
    assert rows["IDMap,Flat"]["recall_at_1_matched"] == 1.0 and rows["IDMap,Flat"]["recall_at_1_plain"] == 1.0
    assert rows["IVF8,PQ8x4fs"]["recall_at_1_matched"] >= 0.5 and 0 < rows["IVF8,PQ8x4fs"]["index_bytes"]
    assert {e["n_database"] for e in result["extrapolated"]} == {22_000_000, 57_000_000}
    assert all(e["extrapolated"] for e in result["extrapolated"])
    assert all(r["command"] == "python -m benchmarks.replication_search " + " ".join(argv) and len(r["load_average"]) == 3
               for r in rows.values())
    assert "nice -n 10 python -m benchmarks.replication_search --runs 3000:IVF8,PQ8x4fs" in (out / "replication_search_cpu.md").read_text()
    assert bench.best_rows(result["rows"])[3000]["index"] in ("IVF8,PQ8x4fs", "IDMap,Flat")  # never the exact row
    assert bench.best_rows([{**rows["IDMap,Flat"], "recall_at_1_matched": 0.99}]) == {}
    (out / "replication_search_cpu.md").unlink()
    assert bench.main(["--render-only", "--out", str(out)]) == 0 and (out / "replication_search_cpu.md").exists()
    assert json.loads((out / bench.RESULT_FILE).read_text())["rows"] == result["rows"]
    # the default factory is one family across sizes (its quantizer changes with n); other factories are not in it
    label = " nprobe=16 rerank=16"
    default_1m = bench.index_family("IVF2048,PQ64x4fs" + label, 10**6, 512)
    assert default_1m == bench.index_family("IVF8192_HNSW32,PQ64x4fs" + label, 10**7, 512)
    assert default_1m != bench.index_family("IVF2048_HNSW32,PQ64x4fs" + label, 10**6, 512)
    assert not (tmp_path / "scratch").exists()  # synthetic stores are deleted
    assert bench.main(["--runs", "3000"]) == 2

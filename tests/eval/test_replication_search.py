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
    scores, index = nearest_other(db[idx], idx, [db[:10], db[10:]], chunk_rows=4)
    sims = db @ db.T
    np.fill_diagonal(sims, -np.inf)
    assert index[0] == np.argmax(sims[0]) and index[3] == np.argmax(sims[29])
    assert index[1] == 20 and index[2] == 5 and scores[1] == pytest.approx(1.0)
    assert (index != idx).all()


def test_search_benchmark_writes_json_and_markdown(tmp_path):
    import json

    from benchmarks.replication_search import main

    assert main(["--sizes", "3000", "--queries", "16", "--dim", "32", "--chunk-rows", "1000", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "replication_search.json").read_text())
    rows = [r for r in result["rows"] if "error" not in r]
    assert rows and all(r["queries_per_second"] > 0 and r["database"] == 3000 for r in rows)
    assert rows[0]["top1_agrees_with_float64"] == 1.0  # float32 search is exact
    assert "queries/s" in (tmp_path / "replication_search.md").read_text()

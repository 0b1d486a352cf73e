"""Exact top-k cosine search of query descriptors against a large stored set, chunk by chunk: the ground truth.

The audit searches with a FAISS index (eval.replication.index); this exact search measures that index's
recall@1 on a held-out sample of queries, streaming the store's memory-mapped chunks (which never have to fit
in memory at once): one matrix product + torch.topk per chunk, merged into a running top-k. Kept beside
FAISS because its IndexFlatIP needs the whole set in RAM as float32, and a sample of queries needs one pass.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence, Union

import numpy as np
import torch

Database = Union[np.ndarray, Sequence[np.ndarray]]


def _blocks(database: Database) -> Iterable[np.ndarray]:
    if isinstance(database, np.ndarray):
        return [database]
    return database


@torch.no_grad()
def topk_cosine(
    queries: Union[np.ndarray, torch.Tensor], database: Database, k: int = 1, *, chunk_rows: int = 65536,
    query_batch: int = 4096, compute_dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, indices), both (num_queries, k), best first; indices count rows across all blocks in order.

    Rows past the end of a small database are filled with score -inf and index -1.
    """
    device = torch.device(device)
    q_all = torch.as_tensor(np.asarray(queries) if not torch.is_tensor(queries) else queries)
    q_all = q_all.to(device=device, dtype=compute_dtype)
    n_q = q_all.shape[0]
    best_scores = torch.full((n_q, k), float("-inf"), device=device)
    best_index = torch.full((n_q, k), -1, dtype=torch.long, device=device)
    offset = 0
    for block in _blocks(database):
        for start in range(0, len(block), chunk_rows):
            rows = block[start:start + chunk_rows]
            if not (rows.flags.writeable and rows.flags.c_contiguous):  # e.g. a read-only memmap: copy it in
                rows = np.array(rows)
            rows = torch.from_numpy(rows)
            rows = rows.to(device=device, dtype=compute_dtype)
            kk = min(k, rows.shape[0])
            for q0 in range(0, n_q, query_batch):
                q = slice(q0, q0 + query_batch)
                scores, index = torch.topk(q_all[q] @ rows.T, kk, dim=1)
                merged_scores = torch.cat([best_scores[q], scores.float()], dim=1)
                merged_index = torch.cat([best_index[q], index + (offset + start)], dim=1)
                top, pos = torch.topk(merged_scores, k, dim=1)
                best_scores[q] = top
                best_index[q] = torch.gather(merged_index, 1, pos)
        offset += len(block)
    return best_scores.cpu().numpy(), best_index.cpu().numpy()


def nearest_other(
    queries: np.ndarray, query_indices: np.ndarray, search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 neighbour of database rows `query_indices` excluding the row itself: the train-vs-train background.

    `search(queries, k)` returns (scores, ids) best first (an index's search, or exact topk_cosine). Asks for
    top-2 and drops the query's own row wherever it appears (an exact duplicate elsewhere may tie and come first).
    """
    scores, index = search(queries, 2)
    self_first = index[:, 0] == np.asarray(query_indices)
    pick = np.where(self_first, 1, 0)
    rows = np.arange(len(index))
    return scores[rows, pick], index[rows, pick]

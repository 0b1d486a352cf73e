"""Part e: the replication audit's exact top-1 cosine search on the device: 10k query descriptors against
10M stored 512-d ones (random unit vectors; the cost does not depend on their values), fp16 on GPU.

Self-contained on purpose (eval.replication.search walks host numpy chunks, and is being moved to FAISS on
another branch): the database is generated on the device in chunks, every chunk is one fp16 matmul and a
max over its columns, merged into a running best. Correctness: PLANTED queries are noisy copies of known
stored rows and must find them at rank 1, and the first chunk's answers are recomputed in fp32.
--quick: 256 queries against 10k, fp32, on CPU.
"""
from __future__ import annotations

import torch

from benchmarks.gpu.common import Suite, free_device_memory, median, timed

PLANTED = 100


def unit_rows(n: int, dim: int, gen: torch.Generator, device, dtype) -> torch.Tensor:
    x = torch.randn(n, dim, generator=gen, device=device)
    return (x / x.norm(dim=1, keepdim=True)).to(dtype)


@torch.no_grad()
def top1(queries: torch.Tensor, chunks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(best score, best row index) per query over all chunks, in order."""
    best = torch.full((len(queries),), float("-inf"), device=queries.device)
    index = torch.full((len(queries),), -1, dtype=torch.long, device=queries.device)
    offset = 0
    for chunk in chunks:
        scores, pos = (queries @ chunk.T).max(dim=1)
        better = scores.float() > best
        best = torch.where(better, scores.float(), best)
        index = torch.where(better, pos + offset, index)
        offset += len(chunk)
    return best, index


def run(suite: Suite, budget_s: float) -> dict:
    device = suite.device
    n_queries, n_db, dim, chunk = (256, 10_000, 512, 4096) if suite.quick else (10_000, 10_000_000, 512, 262_144)
    dtype = torch.float16 if suite.cuda else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    chunks = [unit_rows(min(chunk, n_db - s), dim, gen, device, dtype) for s in range(0, n_db, chunk)]
    queries = unit_rows(n_queries, dim, gen, device, torch.float32)
    # plant near-copies: query i is stored row targets[i] plus noise (cosine ~0.9 to its source)
    targets = torch.randint(0, n_db, (PLANTED,), generator=gen, device=device)
    sources = torch.stack([chunks[int(t) // chunk][int(t) % chunk].float() for t in targets])
    noisy = sources + 0.5 * unit_rows(PLANTED, dim, gen, device, torch.float32)
    queries[:PLANTED] = noisy / noisy.norm(dim=1, keepdim=True)
    queries = queries.to(dtype)
    top1(queries, chunks[:1])  # warm-up
    times = [timed(lambda: top1(queries, chunks), device) for _ in range(3)]
    _, index = top1(queries, chunks)
    planted_found = float((index[:PLANTED] == targets).float().mean())
    # fp32 recomputation on the first chunk: how often reduced precision changes the top-1 (near-ties)
    _, low = top1(queries[:1024], chunks[:1])
    _, ref = top1(queries[:1024].float(), [chunks[0].float()])
    agree = float((low == ref).float().mean())
    seconds = median(times)
    row = {"name": f"replication_search_{n_queries}x{n_db}", "queries_per_s": round(n_queries / seconds, 1),
           "seconds_per_search": round(seconds, 4), "database_rows": n_db, "queries": n_queries, "dim": dim,
           "chunk_rows": chunk, "dtype": str(dtype).removeprefix("torch."), "planted_found_at_rank1": planted_found,
           "top1_agrees_with_fp32_first_chunk": round(agree, 4),
           "database_gib": round(n_db * dim * torch.finfo(dtype).bits / 8 / 2 ** 30, 2)}
    suite.log(f"  search: {row['queries_per_s']} queries/s, planted found {planted_found:.0%}")
    if planted_found < 0.99:
        row["error"] = f"only {planted_found:.0%} of the planted near-copies were found at rank 1"
    del chunks, queries
    free_device_memory(device)
    return {"rows": [row], "notes": []}

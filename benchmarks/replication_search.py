"""Replication-audit search at CommonCatalog scale: FAISS indices vs exact search on synthetic descriptors.

Synthetic database (stands in for 512-d SSCD descriptors, which are L2-normalised and clustered):
eval.replication.synthetic's mixture of n/256 clusters on the sphere (log-normal cluster sizes, per-cluster
spread giving nearest-neighbour cosines mostly 0.25-0.45) with 1% of rows replaced by near-duplicates of other
rows. Queries: "matched" = planted copies of random database rows at cosine U(0.5, 1.0) to their source (10%
exact copies); "plain" = fresh draws from the mixture.

The database is written in chunks as a real descriptor store (float16 .npy chunks + manifest, in a scratch
folder outside git, deleted afterwards), and every index is built and searched by the audit's own code
(eval.replication.index: build from chunks, search, exact re-rank from the float16 store). Recall@1 is checked
against exact chunked search (eval.replication.search.topk_cosine over the same float16 store) on a few hundred
queries of each kind; queries/s are measured on the full query set (re-ranking included). Results are merged
into <out>/replication_search_cpu.json (one row per index and database size) after each run, so a long run
keeps its finished rows. Extrapolations to 22M / 57M and a 240k-query sweep on 16 cores are computed from
the measured rows and labelled as such.

    nice -n 10 python -m benchmarks.replication_search --runs 1000000:default 1000000:IVF2048,PQ64 \\
        1000000:IDMap,HNSW32_PQ64 10000000:default --scratch /tmp/repl_bench
"""
from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import platform
import re
import shutil
import sys
import threading
import time

import numpy as np
from tqdm import tqdm

from eval.replication.index import IndexSettings, ReplicationIndex, build_index, default_factory, recall_at_1
from eval.replication.search import topk_cosine
from eval.replication.store import DescriptorStore
from eval.replication.synthetic import Mixture, toward, write_store

RESULT_FILE = "replication_search_cpu.json"
TARGETS = {"queries_per_s_1m": 10_000, "recall_at_1_matched": 0.99, "index_bytes_1m": 2**30,
           "index_bytes_22m": 16 * 2**30, "sweep_queries": 240_000, "sweep_s_16_cores": 3600}


def make_queries(store: DescriptorStore, mixture_seed: int, n_matched: int, n_plain: int, seed: int):
    rng = np.random.default_rng(seed)
    sources = rng.choice(store.num_samples, n_matched, replace=False)
    cos = rng.uniform(0.5, 1.0, n_matched).astype(np.float32)
    cos[: n_matched // 10] = 1.0  # exact copies
    matched = toward(store.rows(sources), cos, rng)
    plain = Mixture(store.num_samples, matched.shape[1], mixture_seed).sample(n_plain, rng)
    return matched, sources, plain


class PeakRss:
    """Peak anonymous resident memory of this process (memory-mapped store pages are page cache, not counted)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    @staticmethod
    def anon_bytes() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.anon_bytes())
            time.sleep(0.2)

    def reset(self):
        self.peak = self.anon_bytes()


def _merge_rows(path: str, result: dict) -> None:
    """Adds/replaces this run's rows in the shared JSON, under a lock (several runs may write it)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.load(open(path)) if os.path.exists(path) else {"rows": []}
        keys = {(r["index"], r["n_database"]) for r in result["rows"]}
        rows = [r for r in old.get("rows", []) if (r["index"], r["n_database"]) not in keys] + result["rows"]
        rows.sort(key=lambda r: (r["n_database"], r["index"]))
        for r in rows:
            r["index_family"] = index_family(r["index"], r["n_database"], old.get("dim", result.get("dim", 512)))
        merged = {**old, **{k: v for k, v in result.items() if k != "rows"}, "rows": rows}
        merged["extrapolated"] = extrapolate(rows)
        with open(path + ".tmp", "w") as f:
            json.dump(merged, f, indent=2)
        os.replace(path + ".tmp", path)
        with open(path[: -len(".json")] + ".md", "w") as f:
            f.write(markdown(merged))


def markdown(result: dict) -> str:
    """The measured rows and the extrapolations as Markdown tables (regenerated from the JSON on every merge)."""
    commands = list(dict.fromkeys(r["command"] for r in result["rows"] if r.get("command"))) or [result.get("command", "")]
    loads = [r["load_average"][0] for r in result["rows"] if r.get("load_average")]
    lines = ["# Replication search (CPU, FAISS)", "", "Reproduce (each command adds its rows to the JSON):", "",
             *[f"    nice -n 10 {c}" for c in commands], "",
             f"faiss {result.get('faiss')}, {result.get('cpu_count')} cores shared with other jobs (1-min load average "
             f"{min(loads, default=0):.1f}-{max(loads, default=0):.1f} during the runs, per row in the JSON): wall-clock "
             "q/s are lower bounds; q/CPU-s (queries per CPU second of this process, all threads) is the rate per core.", "",
             "| index | n | q/s (wall) | q/CPU-s | recall@1 matched | recall@1 plain | recall@1 (exact top-1 >= 0.5) "
             "| build s (wall) | build CPU s | index MiB | peak anon RSS MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        high = r.get("recall_at_1_exact_top1_ge_0.5")
        lines.append(
            f"| {r['index']} | {r['n_database']:,} | {r['queries_per_s']:,.0f} | {r.get('queries_per_cpu_s', float('nan')):,.0f} "
            f"| {r['recall_at_1_matched']:.3f} | {r['recall_at_1_plain']:.3f} | {'' if high is None else f'{high:.3f}'} "
            f"| {r['build_s']:,.0f} | {r.get('build_cpu_s', 0):,.0f} | {r['index_bytes'] / 2**20:,.1f} "
            f"| {r.get('peak_anon_rss_bytes', 0) / 2**20:,.0f} |")
    lines += ["", "Fastest per CPU second among the rows that meet the recall target (recall@1 >= "
              f"{TARGETS['recall_at_1_matched']} on queries whose exact top-1 is >= 0.5, the exact top-1 of every planted-copy query at rank 1):", ""]
    lines += [f"- {n:,}: {r['index']} ({r['queries_per_cpu_s']:,.0f} q/CPU-s, {r['queries_per_s']:,.0f} q/s wall)"
              for n, r in best_rows(result["rows"]).items()]
    lines += ["", "EXTRAPOLATED (not measured; see extrapolate() for the model):", "",
              "| index family | n | q/s per core | q/s on 16 cores | 240k-query sweep on 16 cores (s) | index GiB | build CPU h "
              "| recall target met where measured |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for e in result.get("extrapolated", []):
        lines.append(f"| {e['index_family']} | {e['n_database']:,} | {e['queries_per_s_per_core']:,.0f} | "
                     f"{e['queries_per_s_16_cores']:,.0f} | {e['sweep_240k_s_16_cores']:,.0f} | "
                     f"{e['index_bytes'] / 2**30:.2f} | {e['build_cpu_s'] / 3600:.2f} | "
                     f"{'yes' if e.get('meets_recall_target_measured') else 'no'} (measured at {e['from_sizes']}) |")
    return "\n".join(lines) + "\n"


def index_family(label: str, n: int, dim: int) -> str:
    """Rows of one family scale together in extrapolate(): the default factory (whose list count, and from 4096
    lists its HNSW coarse quantizer, follow n) is one family; any other factory only across list counts."""
    if label == "exact":
        return "exact"
    factory = label.split(" ")[0]
    if factory == default_factory(n, dim):
        return "default_factory: " + re.sub(r"IVF\d+(_HNSW\d+)?", "IVF{nlist}", label)
    return re.sub(r"IVF\d+", "IVF{nlist}", label)


def meets_target(r: dict) -> bool:
    """recall@1 >= target on queries whose exact top-1 is >= 0.5, and every planted query's exact top-1 (its
    source, or a closer stored copy) at rank 1."""
    high = r.get("recall_at_1_exact_top1_ge_0.5")
    return high is not None and high >= TARGETS["recall_at_1_matched"] and r["recall_at_1_matched"] >= 1.0


def best_rows(rows: list[dict]) -> dict[int, dict]:
    """Per database size, the approximate row with the most queries per CPU second that meets the recall target."""
    best: dict[int, dict] = {}
    for r in rows:
        if r["index"] == "exact" or not meets_target(r):
            continue
        if r["n_database"] not in best or r["queries_per_cpu_s"] > best[r["n_database"]]["queries_per_cpu_s"]:
            best[r["n_database"]] = r
    return dict(sorted(best.items()))


def extrapolate(rows: list[dict]) -> list[dict]:
    """EXTRAPOLATED, not measured. Per index family (same index and search setting, nlist growing with n), the
    per-core rate (queries per CPU second, so other jobs on the shared machine do not count) follows a power law
    in n fitted through its smallest and largest measured sizes (with one size: q/s ~ 1/sqrt(n), the IVF scan
    cost when lists grow as sqrt(n)); index bytes and build CPU time per row come from the largest size.
    16 cores: 16 x the per-core rate (FAISS splits a query batch over threads; assumes linear scaling)."""
    out = []
    by_index: dict[str, list[dict]] = {}
    for r in rows:
        if r["index"] != "exact" and "queries_per_cpu_s" in r:
            by_index.setdefault(r["index_family"], []).append(r)
    for family, rs in by_index.items():
        rs = sorted(rs, key=lambda r: r["n_database"])
        small, big = rs[0], rs[-1]
        if big["n_database"] > small["n_database"]:
            slope = math.log(big["queries_per_cpu_s"] / small["queries_per_cpu_s"]) / math.log(big["n_database"] / small["n_database"])
        else:
            slope = -0.5
        for n in (22_000_000, 57_000_000):
            per_core = big["queries_per_cpu_s"] * (n / big["n_database"]) ** slope
            out.append({
                "extrapolated": True, "index_family": family, "n_database": n, "from_sizes": [r["n_database"] for r in rs],
                "queries_per_s_per_core": per_core, "queries_per_s_16_cores": per_core * 16,
                "sweep_240k_s_16_cores": TARGETS["sweep_queries"] / (per_core * 16),
                "index_bytes": big["index_bytes"] / big["n_database"] * n,
                "build_cpu_s": big["build_cpu_s"] / big["n_database"] * n, "qps_exponent": slope,
                "meets_recall_target_measured": all(meets_target(r) for r in rs),
            })
    return out


def run_one(store, n: int, factory: str, queries, args, rss: PeakRss) -> list[dict]:
    """Builds one index, then times and checks every (nprobe, candidates) search setting of --sweep on it."""
    matched, sources, plain = queries
    settings = IndexSettings(kind="flat" if factory == "IDMap,Flat" else "approx", factory=factory,
                             memory_budget_gb=args.memory_budget_gb, checkpoint_rows=args.checkpoint_rows,
                             train_samples=args.train_samples)
    shutil.rmtree(os.path.join(store.store_dir, "index"), ignore_errors=True)  # timed from scratch, never resumed
    rss.reset()
    start, cpu_start = time.perf_counter(), time.process_time()
    folder = build_index(store, settings)
    build_s, build_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    build_rss = rss.peak
    all_q = np.concatenate([matched, plain])
    g = args.ground_truth
    rows = []
    for nprobe, candidates in args.sweep:
        settings.nprobe, settings.candidates = nprobe, candidates
        index = ReplicationIndex(folder, store, settings)
        index.search(all_q[:64], args.k)  # warm-up: loads the shards
        start, cpu_start = time.perf_counter(), time.process_time()
        scores, ids = index.search(all_q, args.k)
        search_s, search_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        checked = {"matched": (matched[:g], scores[:g], ids[:g]),
                   "plain": (plain[:g], scores[len(matched):len(matched) + g], ids[len(matched):len(matched) + g])}
        recall, gt_top1 = {}, {}
        for kind, (q, s, i) in checked.items():
            if (n, kind) not in args.exact_cache:
                args.exact_cache[(n, kind)] = topk_cosine(q, store.blocks(), k=1)
            exact_s, exact_i = args.exact_cache[(n, kind)]
            recall[kind] = recall_at_1(i[:, 0], s[:, 0], exact_i[:, 0], exact_s[:, 0])
            gt_top1[kind] = exact_s[:, 0]
        high = np.concatenate([gt_top1["matched"], gt_top1["plain"]]) >= 0.5
        ok_all = np.concatenate([recall["matched"], recall["plain"]])
        label = factory if len(args.sweep) == 1 else f"{factory} nprobe={nprobe} rerank={candidates}"
        rows.append({
            "index": label, "index_family": index_family(label, n, args.dim),
            "n_database": n, "queries_per_s": len(all_q) / search_s,
            # CPU seconds of this process (all threads): what a core delivers when it is not shared
            "queries_per_cpu_s": len(all_q) / max(search_cpu_s, 1e-3), "build_cpu_s": build_cpu_s,
            "recall_at_1_matched": float(recall["matched"].mean()), "recall_at_1_plain": float(recall["plain"].mean()),
            "recall_at_1_exact_top1_ge_0.5": float(ok_all[high].mean()) if high.any() else None,
            "n_exact_top1_ge_0.5": int(high.sum()), "planted_source_at_rank_1": float((ids[:g, 0] == sources[:g]).mean()),
            "build_s": build_s, "index_bytes": index.index_bytes, "shards": index.num_shards,
            "peak_anon_rss_bytes_build": build_rss, "peak_anon_rss_bytes": rss.peak, "nprobe": nprobe,
            "candidates_reranked": candidates, "k": args.k, "n_queries_timed": len(all_q), "n_queries_recall": 2 * g,
            "plain_exact_top1_median": float(np.median(gt_top1["plain"])), "load_average": os.getloadavg(),
            "command": args.command,
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def exact_row(store, n: int, queries, args, rss) -> dict:
    """The chunked exact search the audit used before FAISS, timed on the ground-truth queries (recall 1 by definition)."""
    matched, _, plain = queries
    q = np.concatenate([matched[: args.ground_truth], plain[: args.ground_truth]])
    rss.reset()
    start, cpu_start = time.perf_counter(), time.process_time()
    s, i = topk_cosine(q, store.blocks(), k=1)
    elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    g = args.ground_truth
    args.exact_cache[(n, "matched")] = (s[:g], i[:g])
    args.exact_cache[(n, "plain")] = (s[g:], i[g:])
    return {"index": "exact", "index_family": "exact", "n_database": n, "queries_per_s": len(q) / elapsed,
            "queries_per_cpu_s": len(q) / max(cpu_s, 1e-3),
            "recall_at_1_matched": 1.0, "recall_at_1_plain": 1.0, "build_s": 0.0, "index_bytes": 0,
            "peak_anon_rss_bytes": rss.peak, "n_queries_timed": len(q), "note": "chunked float32 matmul over the float16 store",
            "load_average": os.getloadavg(), "command": args.command}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replication_search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=["1000000:default", "1000000:IVF2048,PQ64", "1000000:IDMap,HNSW32_PQ64"],
                        help="N:FACTORY pairs run in order; FACTORY 'default' = eval.replication.index.default_factory(N)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--matched", type=int, default=10_000, help="planted-copy queries timed")
    parser.add_argument("--plain", type=int, default=10_000, help="plain queries timed")
    parser.add_argument("--ground-truth", type=int, default=300, help="queries of each kind checked against exact search")
    parser.add_argument("--k", type=int, default=5, help="matches returned per query (the audit's top_k)")
    parser.add_argument("--sweep", nargs="+", default=["16:16"],
                        help="NPROBE:CANDIDATES search settings tried on each built index (candidates re-ranked exactly)")
    parser.add_argument("--train-samples", type=int, default=262_144)
    parser.add_argument("--memory-budget-gb", type=float, default=4.0)
    parser.add_argument("--checkpoint-rows", type=int, default=2_000_000)
    parser.add_argument("--chunk", type=int, default=100_000, help="rows per synthetic store chunk")
    parser.add_argument("--no-exact", action="store_true", help="skip the timed exact-search row")
    parser.add_argument("--scratch", default="/tmp/replication_search_bench", help="where the synthetic stores go (deleted at the end)")
    parser.add_argument("--keep-scratch", action="store_true")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--render-only", action="store_true",
                        help="run nothing: recompute families, extrapolations and the .md from the JSON in --out")
    args = parser.parse_args(argv)
    if args.render_only:
        _merge_rows(os.path.join(args.out, RESULT_FILE), {"rows": []})
        return 0
    try:
        runs = [(int(r.split(":", 1)[0]), r.split(":", 1)[1]) for r in args.runs]
    except (ValueError, IndexError):
        print(f"error: --runs takes N:FACTORY pairs, got {args.runs}", file=sys.stderr)
        return 2
    if min(n for n, _ in runs) < 2 or min(args.matched, args.plain, args.ground_truth) < 1:
        print("error: sizes and query counts must be positive", file=sys.stderr)
        return 2
    args.ground_truth = min(args.ground_truth, args.matched, args.plain)
    try:
        args.sweep = [tuple(int(v) for v in p.split(":")) for p in args.sweep]
    except ValueError:
        print(f"error: --sweep takes NPROBE:CANDIDATES pairs, got {args.sweep}", file=sys.stderr)
        return 2
    import faiss

    args.command = "python -m benchmarks.replication_search " + " ".join(argv if argv is not None else sys.argv[1:])
    rss = PeakRss()
    args.exact_cache = {}
    header = {"benchmark": "replication_search_cpu", "faiss": faiss.__version__, "cpu": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(), "dim": args.dim,
              "data": "synthetic clustered unit descriptors + planted near-duplicates (see benchmarks/replication_search.py)",
              "command": args.command,
              "targets": TARGETS, "shared_machine_note": "2 cores shared with other jobs: queries/s are lower bounds"}
    out_path = os.path.join(args.out, RESULT_FILE)
    try:
        for n in dict.fromkeys(n for n, _ in runs):
            store = write_store(os.path.join(args.scratch, f"n{n}"), n, args.dim, min(args.chunk, n), seed=0)
            queries = make_queries(store, 0, args.matched, args.plain, seed=1)
            if not args.no_exact:
                _merge_rows(out_path, {**header, "rows": [exact_row(store, n, queries, args, rss)]})
            for _, factory in [r for r in runs if r[0] == n]:
                factory = default_factory(n, args.dim) if factory == "default" else factory
                _merge_rows(out_path, {**header, "rows": run_one(store, n, factory, queries, args, rss)})
                shutil.rmtree(os.path.join(store.store_dir, "index"), ignore_errors=True)
            if not args.keep_scratch:
                shutil.rmtree(store.store_dir, ignore_errors=True)
    finally:
        if not args.keep_scratch:
            shutil.rmtree(args.scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The batched read -> model -> write loop of the model stages (data_prep.caption, data_prep.precompute_latents).

Each of those stages reads a merged MDS folder, runs a model over batches of samples and writes every input
column plus its new ones to a new folder, rank-sharded and resumable. Only the batch transform (`flush`) and
the manifest's flags differ; this module holds the rest once.

Its own module rather than part of data_prep.shards: shards is the storage layer that every stage (the
CPU-only metadata stages too) codes against, with no threads, progress bars or batching; this is a driver
for the model stages, built on it.

Columns travel undecoded: samples come from iter_mds(raw=True), so every value is a shards.Encoded. A flush
decodes only the columns it needs (`sample[name].decode()`) and writes the rest back as the Encoded values
they came in as, which ResumableMDSWriter copies byte for byte (streaming's writer would re-compress a
decoded JPEG at quality 75, and the loss would compound stage after stage).

    def flush(batch, out, pool):        # batch: [(key, sample)], values Encoded
        ... out.write(key, {**sample, "new_column": value})   or   out.skip(key, "reason", sample)
    stats = run_batched_stage("caption", in_dir, out_dir, columns, flush, rank=rank, world=world, ...)

add_stage_loop_args adds the loop's own flags to a stage's parser; run_stage_cli gives its main() the
one-line failures (StageError, a missing input folder).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from tqdm import tqdm

from data_prep import fingerprint
from data_prep.shards import (Encoded, ResumableMDSWriter, barrier, count_samples, iter_mds, merge_ranks,
                              part_counts, write_manifest)
from data_prep.subset_writers import SubsetWriters, merge_subsets, subset_part_counts

Batch = list[tuple[str, dict]]


class StageError(Exception):
    """Bad input or settings; run_stage_cli prints it as one line and exits non-zero."""


def default_device() -> torch.device:
    """cuda:$LOCAL_RANK (one GPU per rank, as composer's launcher and torchrun set it) if CUDA is available."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def add_stage_loop_args(p: argparse.ArgumentParser) -> None:
    """--part-size, --workers, --device, --no-progress: the flags every batched model stage shares."""
    p.add_argument("--part-size", type=int, default=1000, help="samples per atomically published part")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="image decoding threads")
    p.add_argument("--device", default=None, help="default: cuda:$LOCAL_RANK if CUDA is available, else cpu")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="start OUT_DIR over when it was made from another input or settings (else refused)")


def prepare_stage_output(stage: str, args: argparse.Namespace, flags: dict, rank: int, world: int,
                         extra_patterns: tuple[str, ...] = ()) -> dict:
    """Fingerprint this run (args.in_dir's content or its upstream fingerprint, and `flags`, the settings that
    decide the output) and check args.out_dir against it before any work: a StageError if OUT_DIR was made
    from something else, unless --overwrite. Returns the record for run_batched_stage's manifest."""
    record = fingerprint.make(stage, [args.in_dir], flags)
    try:
        fingerprint.prepare_output(args.out_dir, record, overwrite=args.overwrite, rank=rank, world=world,
                                   extra_patterns=extra_patterns)
    except fingerprint.FingerprintMismatch as exc:
        raise StageError(str(exc)) from exc
    return record


def run_stage_cli(stage: str, run: Callable[[argparse.Namespace], dict], args: argparse.Namespace) -> dict:
    """run(args) with INFO logging; a StageError or a missing input ends the process with one line
    `stage: why`. Logs and returns run's stats."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        stats = run(args)
    except (StageError, FileNotFoundError) as exc:
        sys.exit(f"{stage}: {exc}")
    logging.getLogger(run.__module__).info("%s: %s", stage, stats)
    return stats


class BatchOutput:
    """What a flush writes through: the rank's writer, plus this run's counts for the stage's stats.

    jpeg_copied / jpeg_reencoded count the `jpeg` columns written as the input's own bytes (an Encoded
    value) / as a decoded image that streaming re-encodes (a stage should never do that)."""

    def __init__(self, writer: ResumableMDSWriter | SubsetWriters, columns: dict[str, str]):
        self._writer = writer
        self._jpeg_columns = [name for name, encoding in columns.items() if encoding == "jpeg"]
        self.stats = {"written_this_run": 0, "skipped_this_run": 0, "jpeg_copied": 0, "jpeg_reencoded": 0}

    def write(self, key: str, sample: dict, subset: str | None = None) -> None:
        """`subset`: the sub-dataset folder, when the stage writes one (run_batched_stage's subset_prefix)."""
        if isinstance(self._writer, SubsetWriters):
            self._writer.write(key, sample, subset=subset)
        elif subset is not None:
            raise ValueError(f"sample {key!r}: this stage writes one dataset, not sub-dataset {subset!r}")
        else:
            self._writer.write(key, sample)
        self.stats["written_this_run"] += 1
        for name in self._jpeg_columns:
            self.stats["jpeg_copied" if isinstance(sample[name], Encoded) else "jpeg_reencoded"] += 1

    def skip(self, key: str, reason: str, sample: dict) -> None:
        """Record `key` as dropped for `reason`, under the licence of `sample` (as read)."""
        lic = sample.get("license")
        self._writer.skip(key, reason, license=lic.decode() if isinstance(lic, Encoded) else lic)
        self.stats["skipped_this_run"] += 1


def run_batched_stage(stage: str, in_dir: str, out_dir: str, columns: dict[str, str],
                      flush: Callable[[Batch, BatchOutput, ThreadPoolExecutor], None], *,
                      rank: int, world: int, batch_size: int, part_size: int, workers: int,
                      progress_desc: str, show_progress: bool = True,
                      manifest_flags: Callable[[int], dict], fingerprint_record: dict | None = None,
                      subset_prefix: str | None = None) -> dict:
    """Run `flush` over this rank's share of `in_dir` in batches of `batch_size` not yet done, writing `columns`
    to `out_dir`; then wait for every rank, and on rank 0 merge the ranks' parts and write the manifest
    (flags from manifest_flags(merged sample count), counts from the ledgers).

    flush(batch, out, pool) gets [(key, sample)] with Encoded values, a BatchOutput to write/skip each key
    through, and a pool of `workers` threads for decoding. Returns this run's counts (BatchOutput.stats),
    plus merged_samples on rank 0.

    subset_prefix: write sub-datasets (data_prep.subset_writers; flush passes out.write(..., subset=folder),
    folders named with this prefix); rank 0 then also returns {"subsets": {folder: samples}}."""
    total = count_samples(in_dir)
    rank_total = (rank + 1) * total // world - rank * total // world
    writer = (SubsetWriters(out_dir, columns, rank=rank, part_size=part_size, prefix=subset_prefix) if subset_prefix
              else ResumableMDSWriter(out_dir, columns, rank=rank, part_size=part_size))
    with writer, ThreadPoolExecutor(workers) as pool:
        out = BatchOutput(writer, columns)
        done = writer.done_keys()
        batch: Batch = []
        progress = tqdm(iter_mds(in_dir, rank, world, raw=True), total=rank_total, desc=progress_desc,
                        unit="img", disable=not show_progress)
        for key, sample in progress:
            if key in done:
                continue
            batch.append((key, sample))
            if len(batch) == batch_size:
                flush(batch, out, pool)
                batch = []
        if batch:
            flush(batch, out, pool)
    stats = dict(out.stats)

    barrier()
    if rank == 0:
        if subset_prefix:
            stats["subsets"] = merge_subsets(out_dir, subset_prefix)
            stats["merged_samples"], counts = count_samples(out_dir), subset_part_counts(out_dir, subset_prefix)
        else:
            stats["merged_samples"], counts = merge_ranks(out_dir), part_counts(out_dir)
        write_manifest(out_dir, stage, [in_dir], counts, manifest_flags(stats["merged_samples"]),
                       fingerprint=fingerprint_record)
    return stats

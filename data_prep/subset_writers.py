"""A stage output split into sub-datasets (e.g. one per aspect-ratio bucket), each resumable and rank-sharded.

data_prep.precompute_latents --aspect-buckets writes every sample into the folder of its bucket, because the
trainer streams each bucket as its own Streaming stream. Each folder is an ordinary data_prep.shards output
(its own ranks' parts, ledgers and merged index.json); keys skipped before a bucket is known (an undecodable
image) are recorded in out_dir's own parts. Resume reads every folder's ledgers, so a key is never written twice.

After every rank is done, rank 0 merges each folder and writes out_dir/index.json over all of them (shard
names prefixed with their folder), so tools that read the whole set (attribution, counts, iter_mds) see one
dataset. A kill can lose at most one unfinished part per folder (part_size keys each).
"""
from __future__ import annotations

import json
import os

from data_prep.shards import INDEX_FILE, ResumableMDSWriter, merge_ranks, part_counts


def subset_folders(out_dir: str, prefix: str) -> list[str]:
    """Names of the sub-dataset folders in out_dir (those starting with `prefix`), sorted."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(n for n in os.listdir(out_dir) if n.startswith(prefix) and os.path.isdir(os.path.join(out_dir, n)))


class SubsetWriters:
    """One ResumableMDSWriter per sub-dataset folder (opened when first written), and one in out_dir itself
    for keys skipped before their folder is known. write(key, sample, subset=...) / skip(...) / done_keys()."""

    def __init__(self, out_dir: str, columns: dict[str, str], *, rank: int, part_size: int, prefix: str,
                 **writer_kwargs):
        """writer_kwargs: passed to every ResumableMDSWriter (compression, key_column, ...)."""
        self.out_dir, self.columns, self.prefix = out_dir, columns, prefix
        self.kwargs = dict(rank=rank, part_size=part_size, **writer_kwargs)
        self.root = ResumableMDSWriter(out_dir, columns, **self.kwargs)
        self.writers: dict[str, ResumableMDSWriter] = {}
        try:
            for name in subset_folders(out_dir, prefix):  # earlier runs' folders: their keys are done
                self._writer(name)
        except BaseException:
            self.close()
            raise

    def _writer(self, subset: str) -> ResumableMDSWriter:
        if not subset.startswith(self.prefix) or os.sep in subset:
            raise ValueError(f"subset folder {subset!r} must start with {self.prefix!r} and have no {os.sep!r}")
        if subset not in self.writers:
            self.writers[subset] = ResumableMDSWriter(os.path.join(self.out_dir, subset), self.columns, **self.kwargs)
        return self.writers[subset]

    def done_keys(self) -> set[str]:
        done = self.root.done_keys()
        for writer in self.writers.values():
            done |= writer.done_keys()
        return done

    def write(self, key, sample: dict, subset: str | None = None) -> None:
        if subset is None:
            raise ValueError(f"sample {key!r}: a sub-dataset output needs the subset folder to write it to")
        self._writer(subset).write(key, sample)

    def skip(self, key, reason: str, license: str | None = None) -> None:
        self.root.skip(key, reason, license=license)

    def counts(self) -> dict:
        """This rank's counts (ResumableMDSWriter.counts) summed over every folder."""
        total = {"written": 0, "skipped": {}, "written_per_license": {}, "skipped_per_license": {}}
        for writer in [self.root, *self.writers.values()]:
            counts = writer.counts()
            total["written"] += counts["written"]
            for name in ("skipped", "written_per_license", "skipped_per_license"):
                for k, v in counts[name].items():
                    total[name][k] = total[name].get(k, 0) + v
        return total

    def close(self) -> None:
        for writer in [self.root, *self.writers.values()]:
            writer.close()

    def __enter__(self) -> SubsetWriters:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


def merge_subsets(out_dir: str, prefix: str) -> dict[str, int]:
    """Rank 0, after every rank closed its writers: merge each sub-dataset folder, then write out_dir/index.json
    over all their shards. Returns {folder: samples}."""
    merge_ranks(out_dir)  # out_dir's own parts hold only skipped keys; this also checks no key is in two parts
    counts, shards = {}, []
    for name in subset_folders(out_dir, prefix):
        counts[name] = merge_ranks(os.path.join(out_dir, name))
        with open(os.path.join(out_dir, name, INDEX_FILE)) as f:
            for shard in json.load(f)["shards"]:
                for kind in ("raw_data", "zip_data"):
                    if shard.get(kind):
                        shard[kind]["basename"] = f"{name}/{shard[kind]['basename']}"
                shards.append(shard)
    path = os.path.join(out_dir, INDEX_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump({"version": 2, "shards": shards}, f)
    os.replace(path + ".tmp", path)
    return counts


def subset_part_counts(out_dir: str, prefix: str) -> dict:
    """data_prep.shards.part_counts over out_dir's own parts and every sub-dataset folder's."""
    return part_counts(out_dir, *(os.path.join(out_dir, n) for n in subset_folders(out_dir, prefix)))

"""Resumable, rank-sharded MDS writing and reading shared by every data_prep stage.

API STATUS: committed and stable (issue 4, part 1). Other stages code against exactly these names:
    get_rank_world, shard_for_rank, barrier, ResumableMDSWriter (+ is_done), merge_ranks, part_counts, iter_ledger,
    write_manifest, read_columns, count_samples, iter_mds, iter_finished, Encoded.
Copying a column unchanged (e.g. the JPEG bytes; streaming would re-compress a decoded JPEG at quality 75):
    for key, sample in iter_mds(src, raw=True): writer.write(key, sample)   # values are Encoded(bytes)
Reading only some columns (no image decode): iter_mds(src, columns=["photo_id", "license"]).

Guarantee: a stage killed at any point (SIGKILL included) and re-run loses no sample and duplicates none.

How (on-disk layout of a stage's out_dir):
    out_dir/r0001_p00003/            one finished *part* of rank 1: streaming MDS shards + index.json
    out_dir/r0001_p00003/ledger.jsonl  every key the part wrote or skipped (with the skip reason, license)
    out_dir/_tmp_r0001_p00004/       the part rank 1 is writing now; renamed atomically to r0001_p00004 when
                                     complete, deleted by rank 1's next run if it was interrupted
    out_dir/index.json               written by merge_ranks() over every finished part of every rank
    out_dir/manifest.json            written by write_manifest()
Memory: every rank holds the set of all finished keys (about 70 bytes a key: ~2 GB for 25M photos).
A part is all-or-nothing: its samples and ledger appear together by one os.rename. A re-run reads the
ledgers of every finished part (of every rank, so a re-run with another world size is also safe) and
skips those keys. Parts sit one level below out_dir because streaming's merge_index names shards
relative to the parent folder of each part's index.json.

Typical stage:
    rank, world = get_rank_world()
    with ResumableMDSWriter(out, columns, rank=rank) as writer:
        done = writer.done_keys()
        for item in tqdm(shard_for_rank(items, rank, world)):
            if item.key in done: continue
            ... writer.write(item.key, sample)   or   writer.skip(item.key, "http_404", license=...)
    barrier()                      # no-op for one process
    if rank == 0:
        merge_ranks(out); write_manifest(out, "fetch", inputs, part_counts(out), flags)
"""

from __future__ import annotations

import datetime
import fcntl
import functools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from typing import Any

import numpy as np
from streaming import MDSWriter
from streaming.base.compression import decompress
from streaming.base.format import reader_from_json
from streaming.base.format.mds.encodings import mds_decode, mds_encode
from streaming.base.util import merge_index

from data_prep.json_records import write_json_atomic
from data_prep.schema import MANIFEST_FILE

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
LEDGER_FILE = "ledger.jsonl"
TMP_PREFIX = "_tmp_"
_PART_RE = re.compile(r"^r(\d{4,})_p(\d{5,})$")
DEFAULT_KEY_COLUMN = "photo_id"
# Packages whose versions decide what a stage writes; recorded in every manifest.
MANIFEST_PACKAGES = (
    "mosaicml-streaming", "mosaicml", "torch", "diffusers", "transformers", "pillow", "numpy", "pyarrow",
)


# ---------------------------------------------------------------------------------------------- ranks
def get_rank_world() -> tuple[int, int]:
    """(rank, world_size): torch.distributed if initialised, else RANK/WORLD_SIZE env (set by composer's
    launcher and torchrun), else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # torch is optional for the CPU-only metadata stages
        pass
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ValueError(f"bad RANK={rank} / WORLD_SIZE={world} in the environment")
    return rank, world


def shard_for_rank(items: list, rank: int, world: int) -> list:
    """This rank's contiguous block of `items` (sizes differ by at most one; the union over ranks is
    `items` exactly once). Deterministic in (len(items), rank, world), so every rank agrees without talking."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world}")
    n = len(items)
    return items[rank * n // world:(rank + 1) * n // world]


def barrier() -> None:
    """Wait for every rank. Uses torch.distributed if initialised; if not but WORLD_SIZE > 1 and
    MASTER_ADDR/MASTER_PORT are set (composer/torchrun launchers), initialises a CPU gloo group first.
    A no-op for a single process."""
    rank, world = get_rank_world()
    if world == 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise RuntimeError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set: cannot synchronise ranks")
        dist.init_process_group("gloo", rank=rank, world_size=world)
    dist.barrier()


# ---------------------------------------------------------------------------------------------- parts
def _part_name(rank: int, part: int) -> str:
    return f"r{rank:04d}_p{part:05d}"


def _finished_parts(out_dir: str) -> list[tuple[int, int, str]]:
    """(rank, part, path) of every finished part in out_dir, sorted."""
    if not os.path.isdir(out_dir):
        return []
    found = []
    for name in os.listdir(out_dir):
        m = _PART_RE.match(name)
        path = os.path.join(out_dir, name)
        if m and os.path.isfile(os.path.join(path, LEDGER_FILE)):
            found.append((int(m.group(1)), int(m.group(2)), path))
    return sorted(found)


def _read_ledger(part_dir: str) -> list[dict]:
    with open(os.path.join(part_dir, LEDGER_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


def _empty_counts() -> dict:
    return {"written": 0, "skipped": {}, "written_per_license": {}, "skipped_per_license": {}}


def _add_to_counts(counts: dict, entry: dict) -> None:
    lic = entry.get("license") or "unrecorded"
    if entry["status"] == "written":
        counts["written"] += 1
        counts["written_per_license"][lic] = counts["written_per_license"].get(lic, 0) + 1
    else:
        counts["skipped"][entry["reason"]] = counts["skipped"].get(entry["reason"], 0) + 1
        counts["skipped_per_license"][lic] = counts["skipped_per_license"].get(lic, 0) + 1


def iter_ledger(out_dir: str) -> Iterator[dict]:
    """Ledger entries of every finished part: {"key", "status": "written"|"skipped", "reason"?, "license"}."""
    for _, _, path in _finished_parts(out_dir):
        yield from _read_ledger(path)


def part_counts(out_dir: str, *more_dirs: str) -> dict:
    """Totals over every finished part of every rank (of out_dir and any `more_dirs`): {"written": n,
    "skipped": {reason: n}, "written_per_license": {license: n}, "skipped_per_license": {license: n}}."""
    counts = _empty_counts()
    for folder in (out_dir, *more_dirs):
        for _, _, path in _finished_parts(folder):
            for entry in _read_ledger(path):
                _add_to_counts(counts, entry)
    return counts


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Encoded:
    """A column value still in its MDS encoding. ResumableMDSWriter writes it byte-for-byte, so copying a
    stage's columns never re-encodes them (a decoded JPEG would otherwise be re-compressed)."""

    encoding: str
    data: bytes

    def decode(self) -> Any:
        return mds_decode(self.encoding, self.data)


class _PassthroughMDSWriter(MDSWriter):
    """streaming.MDSWriter that also accepts Encoded values. Hand-written because MDSWriter always calls
    mds_encode on every value; this mirrors its sample layout (sizes of variable columns, then data)."""

    def encode_sample(self, sample: dict[str, Any]) -> bytes:
        sizes, data = [], []
        for name, encoding, size in zip(self.column_names, self.column_encodings, self.column_sizes):
            value = sample[name]
            if isinstance(value, Encoded):
                if value.encoding != encoding:
                    raise ValueError(f"column {name!r} is {encoding!r}, got an Encoded {value.encoding!r} value")
                datum = value.data
            else:
                datum = mds_encode(encoding, value)
            if size is None:
                sizes.append(len(datum))
            elif size != len(datum):
                raise ValueError(f"column {name!r} ({encoding}) must encode to {size} bytes, got {len(datum)}")
            data.append(datum)
        return np.array(sizes, np.uint32).tobytes() + b"".join(data)


class ResumableMDSWriter:
    """Writes one rank's samples as numbered, atomically published MDS parts with a key ledger.

    Args:
        out_dir: the stage's output folder (shared by all ranks).
        columns: MDS column name -> encoding; must contain `key_column`.
        rank: this process's rank (parts are named after it; only its own unfinished parts are cleaned).
        part_size: keys (written + skipped) per part: the most work a kill can lose.
        compression, size_limit: passed to streaming.MDSWriter (size_limit is per shard file).
        key_column: the column that holds the key; filled from `key` when the sample lacks it.
    """

    def __init__(self, out_dir: str, columns: dict[str, str], rank: int = 0, part_size: int = 1000,
                 compression: str | None = None, size_limit: int | str = "256mb",
                 key_column: str = DEFAULT_KEY_COLUMN):
        if key_column not in columns:
            raise ValueError(f"key column {key_column!r} must be one of the MDS columns {sorted(columns)}")
        if part_size < 1:
            raise ValueError(f"part_size must be >= 1, got {part_size}")
        self.out_dir = out_dir
        self.columns = dict(columns)
        self.rank = rank
        self.part_size = part_size
        self.compression = compression
        self.size_limit = size_limit
        self.key_column = key_column
        os.makedirs(out_dir, exist_ok=True)
        # Two processes claiming one rank would delete each other's temp parts; the kernel drops the lock
        # when a process dies, even by SIGKILL, so a re-run never finds a stale one.
        self._lock = open(os.path.join(out_dir, f".lock_r{rank:04d}"), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RuntimeError(f"another process is writing rank {rank} of {out_dir}") from None
        self._done: set[str] = set()
        self._counts = _empty_counts()  # this rank's finished + current parts
        self._next_part = 0
        try:
            self._remove_own_unfinished_parts()
            for part_rank, part, path in _finished_parts(out_dir):
                self._check_columns(path)
                for entry in _read_ledger(path):
                    self._done.add(entry["key"])
                    if part_rank == rank:
                        _add_to_counts(self._counts, entry)
                if part_rank == rank:
                    self._next_part = max(self._next_part, part + 1)
        except BaseException:
            self._lock.close()  # releases the lock
            raise

        self._mds: _PassthroughMDSWriter | None = None
        self._tmp_dir: str | None = None
        self._ledger: list[dict] = []
        self._current_keys: set[str] = set()

    # -- resume bookkeeping
    def _remove_own_unfinished_parts(self) -> None:
        prefix = f"{TMP_PREFIX}r{self.rank:04d}_"
        for name in os.listdir(self.out_dir):
            if name.startswith(prefix):
                log.info("removing unfinished part %s from an interrupted run", name)
                shutil.rmtree(os.path.join(self.out_dir, name))

    def _check_columns(self, part_dir: str) -> None:
        """A re-run must write the same columns as the parts it continues, or the merged index would mix."""
        index_path = os.path.join(part_dir, INDEX_FILE)
        with open(index_path) as f:
            shards = json.load(f)["shards"]
        if shards:
            old = dict(zip(shards[0]["column_names"], shards[0]["column_encodings"]))
            if old != self.columns:
                raise ValueError(f"{part_dir} was written with columns {old}, this run writes {self.columns}; "
                                 f"use a new out_dir")

    def done_keys(self) -> set[str]:
        """Keys written or skipped in finished parts (any rank) and in this writer's current part.
        A snapshot copy: take it once before the loop (or use is_done for a live O(1) check)."""
        return self._done | self._current_keys

    def is_done(self, key: Any) -> bool:
        return str(key) in self._done or str(key) in self._current_keys

    # -- writing
    def _open_part(self) -> None:
        self._tmp_dir = os.path.join(self.out_dir, TMP_PREFIX + _part_name(self.rank, self._next_part))
        if os.path.exists(self._tmp_dir):
            shutil.rmtree(self._tmp_dir)
        self._mds = _PassthroughMDSWriter(out=self._tmp_dir, columns=self.columns, compression=self.compression,
                              size_limit=self.size_limit)
        self._ledger = []
        self._current_keys = set()

    def _claim(self, key: Any) -> str:
        if self._lock.closed:
            raise RuntimeError("this ResumableMDSWriter is closed; open a new one to continue")
        key = str(key)
        if key in self._done or key in self._current_keys:
            raise ValueError(f"key {key!r} was already written or skipped in {self.out_dir}; "
                             f"filter the work list with done_keys() and dedupe it")
        if self._mds is None:
            self._open_part()
        return key

    def write(self, key: Any, sample: dict) -> None:
        """Write one sample (all `columns`, no others; values may be Encoded to copy them byte-for-byte).
        The key column is filled from `key` if absent."""
        sample = dict(sample)
        sample.setdefault(self.key_column, str(key))
        stored_key = sample[self.key_column]
        if isinstance(stored_key, Encoded):
            stored_key = stored_key.decode()
        if str(stored_key) != str(key):
            raise ValueError(f"sample's {self.key_column}={sample[self.key_column]!r} differs from key {key!r}")
        missing = self.columns.keys() - sample.keys()
        extra = sample.keys() - self.columns.keys()
        if missing or extra:
            raise ValueError(f"sample {key!r}: missing columns {sorted(missing)}, unknown columns {sorted(extra)}")
        key = self._claim(key)
        self._mds.write(sample)
        lic = sample.get("license")
        entry = {"key": key, "status": "written", "license": lic.decode() if isinstance(lic, Encoded) else lic}
        self._record(entry)

    def skip(self, key: Any, reason: str, license: str | None = None) -> None:
        """Record a dropped input, so a re-run neither retries nor double-counts it."""
        key = self._claim(key)
        self._record({"key": key, "status": "skipped", "reason": str(reason), "license": license})

    def _record(self, entry: dict) -> None:
        self._ledger.append(entry)
        self._current_keys.add(entry["key"])
        _add_to_counts(self._counts, entry)
        if len(self._ledger) >= self.part_size:
            self._finish_part()

    def _finish_part(self) -> None:
        """Publish the current part: MDS files + ledger in the temp dir, then one atomic rename."""
        assert self._mds is not None and self._tmp_dir is not None
        self._mds.finish()
        ledger_path = os.path.join(self._tmp_dir, LEDGER_FILE)
        with open(ledger_path, "w") as f:
            for entry in self._ledger:
                f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for name in os.listdir(self._tmp_dir):  # data must be durable before the rename publishes it
            with open(os.path.join(self._tmp_dir, name), "rb") as f:
                os.fsync(f.fileno())
        final = os.path.join(self.out_dir, _part_name(self.rank, self._next_part))
        os.rename(self._tmp_dir, final)
        _fsync_dir(self.out_dir)
        self._done |= self._current_keys
        self._current_keys = set()
        self._ledger = []
        self._mds = None
        self._tmp_dir = None
        self._next_part += 1

    def counts(self) -> dict:
        """This rank's {"written": n, "skipped": {reason: n}, "written_per_license": {..},
        "skipped_per_license": {..}} over its finished parts and the current one."""
        return json.loads(json.dumps(self._counts))  # a deep copy

    def close(self) -> None:
        """Finish the current part (if it holds anything) and release this rank's lock."""
        if self._mds is not None and self._ledger:
            self._finish_part()
        elif self._mds is not None:  # opened, but its only write failed: nothing to publish
            self._mds.finish()
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._mds = self._tmp_dir = None
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> ResumableMDSWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Every recorded key is fully encoded, so publishing the part keeps work done before an error.
        self.close()


# ---------------------------------------------------------------------------------------------- merge
def merge_ranks(out_dir: str) -> int:
    """Write out_dir/index.json over every finished part of every rank (streaming's merge_index) and
    return the number of samples. Call once, after every rank has closed its writer (see barrier()).
    Raises if a key appears in two parts, which would mean two runs overlapped."""
    parts = _finished_parts(out_dir)
    unfinished = [n for n in os.listdir(out_dir) if n.startswith(TMP_PREFIX)] if os.path.isdir(out_dir) else []
    if unfinished:
        log.warning("%s holds unfinished parts %s (a rank still running or killed); they are not merged",
                    out_dir, unfinished)
    seen: dict[str, str] = {}
    for _, _, path in parts:
        for entry in _read_ledger(path):
            if entry["key"] in seen:
                raise RuntimeError(f"key {entry['key']!r} is in both {seen[entry['key']]} and {path}")
            seen[entry["key"]] = path
    index_files = []
    for _, _, path in parts:
        with open(os.path.join(path, INDEX_FILE)) as f:
            if json.load(f)["shards"]:
                index_files.append(os.path.join(path, INDEX_FILE))
    merged = os.path.join(out_dir, INDEX_FILE)
    if os.path.exists(merged):
        os.remove(merged)  # merge_index refuses to overwrite
    if index_files:
        merge_index(index_files, out_dir)
    else:
        with open(merged, "w") as f:
            json.dump({"version": 2, "shards": []}, f)
    return count_samples(out_dir)


# ---------------------------------------------------------------------------------------------- read
def _load_index(in_dir: str) -> dict:
    path = os.path.join(in_dir, INDEX_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: not an MDS dataset, or its ranks were never merged "
                                f"(run data_prep.shards.merge_ranks)")
    with open(path) as f:
        return json.load(f)


def read_columns(in_dir: str) -> dict[str, str]:
    """Column name -> encoding of a merged MDS dir, so a stage can copy every input column."""
    shards = _load_index(in_dir)["shards"]
    if not shards:
        return {}
    return dict(zip(shards[0]["column_names"], shards[0]["column_encodings"]))


def count_samples(in_dir: str) -> int:
    return sum(s["samples"] for s in _load_index(in_dir)["shards"])


def iter_mds(in_dir: str, rank: int = 0, world: int = 1, key_column: str = DEFAULT_KEY_COLUMN,
             columns: list[str] | None = None, raw: bool = False) -> Iterator[tuple[str, dict]]:
    """Yield (key, sample) of a merged MDS dir in index order: this rank's contiguous block of samples.

    columns: decode only these (default all). raw: give values as Encoded (undecoded bytes) so a stage can
    copy them unchanged with ResumableMDSWriter.write; the yielded key is always decoded.
    Shards are opened with streaming's own readers. Compressed shards are decompressed one at a time into a
    temporary folder (streaming's LocalDataset only reads raw shards, and StreamingDataset would need
    shared memory and its own view of the world), so the input folder is never modified."""
    shards = _load_index(in_dir)["shards"]
    total = sum(s["samples"] for s in shards)
    lo, hi = rank * total // world, (rank + 1) * total // world
    start = 0
    with tempfile.TemporaryDirectory(prefix="iter_mds_") as tmp:
        for info in shards:
            end = start + info["samples"]
            if end > lo and start < hi:
                yield from _iter_shard(in_dir, tmp, info, max(lo, start) - start, min(hi, end) - start,
                                       key_column, columns, raw)
            start = end
            if start >= hi:
                break


def iter_finished(out_dir: str, columns: list[str], key_column: str = DEFAULT_KEY_COLUMN,
                  rank: int | None = None) -> Iterator[tuple[str, dict]]:
    """(key, sample) of every finished part of a stage's out_dir (of one rank, or of all when rank is None),
    before any merge, decoding only `columns`: how a resumed stage rebuilds state kept across rows (e.g. the
    sha256 of images written)."""
    for part_rank, _, path in _finished_parts(out_dir):  # each finished part has its own index.json
        if rank is None or part_rank == rank:
            yield from iter_mds(path, key_column=key_column, columns=columns)


def _iter_shard(in_dir: str, tmp: str, info: dict, first: int, stop: int, key_column: str,
                columns: list[str] | None, raw: bool) -> Iterator[tuple[str, dict]]:
    raw_name = info["raw_data"]["basename"]
    root = in_dir
    if not os.path.isfile(os.path.join(in_dir, raw_name)):
        if not info.get("zip_data"):
            raise FileNotFoundError(f"shard {os.path.join(in_dir, raw_name)} is missing")
        with open(os.path.join(in_dir, info["zip_data"]["basename"]), "rb") as f:
            data = decompress(info["compression"], f.read())
        raw_path = os.path.join(tmp, raw_name)
        os.makedirs(os.path.dirname(raw_path), exist_ok=True)
        with open(raw_path, "wb") as f:
            f.write(data)
        root = tmp
    reader = reader_from_json(root, None, info)
    wanted = set(reader.column_names if columns is None else columns) | {key_column}
    unknown = wanted - set(reader.column_names)
    if unknown:
        raise KeyError(f"{in_dir} has no column(s) {sorted(unknown)}; it has {reader.column_names}")
    try:
        for idx in range(first, stop):
            fields = _split_sample(reader, reader.get_sample_data(idx))
            key = str(fields[key_column].decode())
            yield key, {name: (value if raw else value.decode()) for name, value in fields.items() if name in wanted}
    finally:
        if root == tmp:
            os.remove(os.path.join(tmp, raw_name))


def _split_sample(reader: Any, data: bytes) -> dict[str, Encoded]:
    """An MDS sample's bytes -> column name -> Encoded, without decoding. Hand-written (mirrors
    MDSReader.decode_sample) because streaming only offers decoding every column at once."""
    sizes, pos = [], 0
    for size in reader.column_sizes:
        if size is None:
            size = int(np.frombuffer(data[pos:pos + 4], np.uint32)[0])
            pos += 4
        sizes.append(size)
    fields = {}
    for name, encoding, size in zip(reader.column_names, reader.column_encodings, sizes):
        fields[name] = Encoded(encoding, data[pos:pos + size])
        pos += size
    return fields


# ---------------------------------------------------------------------------------------------- manifest
@functools.lru_cache(maxsize=1)  # reading package metadata costs ~0.1 s; installed versions do not change mid-run
def _package_versions() -> dict[str, str | None]:
    versions = {}
    for name in MANIFEST_PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_manifest(out_dir: str, stage: str, inputs: list[str], counts: dict, flags: dict,
                   fingerprint: dict | None = None) -> str:
    """Write out_dir/manifest.json (atomically) and return its path.

    Records the stage, its inputs (and each input folder's own manifest, so provenance chains from the
    metadata filter to the latents), counts kept/dropped per license and per reason as the stage gives
    them, package versions, the code's git commit, the flags, the UTC time and the output's fingerprint
    (data_prep.fingerprint: what every sample was made from; the next stage chains on its digest)."""
    os.makedirs(out_dir, exist_ok=True)
    input_manifests = {}
    for path in inputs:
        candidate = os.path.join(path, MANIFEST_FILE) if os.path.isdir(path) else None
        if candidate and os.path.isfile(candidate):
            with open(candidate) as f:
                input_manifests[path] = json.load(f)
    manifest = {
        "stage": stage,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "inputs": list(inputs),
        "counts": counts,
        "flags": flags,
        "package_versions": dict(_package_versions()),
        "python": sys.version.split()[0],
        "git_commit": _git_commit(),
        "input_manifests": input_manifests,
    }
    if fingerprint is not None:
        manifest["fingerprint"] = fingerprint
    path = os.path.join(out_dir, MANIFEST_FILE)
    write_json_atomic(path, manifest, default=str)
    return path

"""What an output was made from, so a re-run never continues an output whose inputs have changed.

A fingerprint is one JSON record: the stage, the content of every input (the sha256 of an input file, or of an
input folder the upstream stage's own fingerprint plus the sha256 of its index.json), the opt-out list's
sha256 (and its alias map's) and the flags that decide the output; its "digest" is the sha256 of all that
except file paths (moving an input does not change what it holds). It is written to OUT/fingerprint.json
before any work and copied into OUT/manifest.json, so a manifest never names an input or list that was not
applied to every sample in the output.

A stage adopts it in three lines:

    record = fingerprint.make("caption", [in_dir], flags={"model": ..., ...}, optout=None)
    fingerprint.prepare_output(out_dir, record, overwrite=args.overwrite, rank=rank, world=world)
    ... write_manifest(out_dir, stage, inputs, counts, flags, fingerprint=record)

prepare_output refuses (FingerprintMismatch, one line) when OUT holds a different fingerprint, or work but
no fingerprint at all; with overwrite=True rank 0 deletes the stage's outputs (only the names this module and
the stage list, never unknown files) and starts over. The same inputs and flags resume exactly as before.
An input may also be given as a ready-made dict {"path": ..., "sha256": ...} when the caller has a cheaper
content hash (e.g. the LFS sha256 a Hugging Face download records) than reading terabytes.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
from typing import Any

from data_prep.json_records import changed_settings, read_settings, write_json_atomic
from data_prep.schema import MANIFEST_FILE

RECORD_FILE = "fingerprint.json"
_CHUNK = 1 << 20
_BIG_FILE = 256 << 20  # show hashing progress above this size
# What a resumable stage leaves in its output folder (data_prep.shards' layout); removed by --overwrite.
_STAGE_OUTPUT_PATTERNS = ("r[0-9][0-9][0-9][0-9]*_p[0-9][0-9][0-9][0-9][0-9]*", "_tmp_*", ".lock_r*", "index.json",
                          MANIFEST_FILE, RECORD_FILE, RECORD_FILE + ".tmp*")


class FingerprintMismatch(ValueError):
    """OUT was made from other inputs, list or flags; the message is one line naming what differs."""


def file_sha256(path: str) -> str:
    """sha256 of a file, read in 1 MiB chunks; a progress bar for big ones (YFCC100M's bz2 is ~15 GB: about a
    minute at disk speed, once per run)."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {os.path.basename(path)}",
                                     disable=None if size > _BIG_FILE else True) as bar:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _folder_sha256(path: str) -> str:
    """sha256 over the relative names and contents of a folder's files (hidden files, unfinished `_tmp_`
    parts and the folder's own manifest/fingerprint left out): for inputs no stage fingerprinted."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_tmp_")))
        for name in sorted(files):
            if name.startswith(".") or (root == path and name in (MANIFEST_FILE, RECORD_FILE)):
                continue
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode() + b"\0" + file_sha256(full).encode() + b"\n")
    return digest.hexdigest()


def upstream_fingerprint(folder: str) -> dict | None:
    """The fingerprint an upstream stage recorded in folder/manifest.json, or None."""
    manifest = read_settings(os.path.join(folder, MANIFEST_FILE))
    record = manifest.get("fingerprint") if isinstance(manifest, dict) else None
    return record if isinstance(record, dict) and "digest" in record else None


def _is_bucket_of(parent: str, name: str) -> bool:
    manifest = read_settings(os.path.join(parent, MANIFEST_FILE))
    counts = manifest.get("counts") if isinstance(manifest, dict) else None
    return isinstance(counts, dict) and name in (counts.get("written_per_bucket") or {})


def input_record(path: str) -> dict:
    """What the fingerprint keeps of one input: a file's sha256; for a folder its upstream stage's
    fingerprint digest (its own manifest's, or for a resolution bucket of a fetch output the fetch manifest's)
    plus the sha256 of its index.json (which changes when the samples do), or failing that the sha256 of
    every file in it."""
    if os.path.isfile(path):
        return {"path": os.path.abspath(path), "sha256": file_sha256(path)}
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    upstream = upstream_fingerprint(path)
    parent = os.path.dirname(os.path.abspath(path))
    if upstream is None and _is_bucket_of(parent, os.path.basename(os.path.abspath(path))):
        upstream = upstream_fingerprint(parent)  # fetch --bucket-by-resolution: one manifest for every bucket
    if upstream is None:
        return {"path": os.path.abspath(path), "sha256": _folder_sha256(path)}
    index = os.path.join(path, "index.json")
    return {"path": os.path.abspath(path), "upstream_stage": upstream.get("stage"),
            "upstream_fingerprint": upstream["digest"],
            "index_sha256": file_sha256(index) if os.path.isfile(index) else None}


def _digest(record: dict) -> str:
    def strip_paths(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip_paths(v) for k, v in value.items() if k not in ("path", "list", "alias_map", "digest")}
        if isinstance(value, list):
            return [strip_paths(v) for v in value]
        return value

    return hashlib.sha256(json.dumps(strip_paths(record), sort_keys=True, default=str).encode()).hexdigest()


def make(stage: str, inputs: list, flags: dict, optout: Any = None) -> dict:
    """The fingerprint record of a run. inputs: paths (hashed by input_record) or ready-made input dicts.
    optout: an OptOutList (its .fingerprint()), a dict, or None. flags: only those that decide the output."""
    record = {
        "stage": stage,
        "inputs": [dict(i) if isinstance(i, dict) else input_record(i) for i in inputs],
        "optout": optout.fingerprint() if hasattr(optout, "fingerprint") else optout,
        "flags": json.loads(json.dumps(flags, default=str)),
    }
    record["digest"] = _digest(record)
    return record


def read(out_dir: str) -> dict | None:
    return read_settings(os.path.join(out_dir, RECORD_FILE))


def _what_differs(old: dict, new: dict) -> str:
    parts = []
    old_inputs, new_inputs = old.get("inputs") or [], new.get("inputs") or []
    if [_digest(i) for i in old_inputs] != [_digest(i) for i in new_inputs]:
        parts.append("input content")
    if _digest({"o": old.get("optout")}) != _digest({"o": new.get("optout")}):
        parts.append("opt-out list")
    changed = changed_settings(old.get("flags") or {}, new.get("flags") or {})
    if changed:
        parts.append("flags " + ", ".join(changed))
    if old.get("stage") != new.get("stage"):
        parts.append("stage")
    return "; ".join(parts) or "fingerprint"


def _existing_work(out_dir: str, extra_patterns: tuple[str, ...]) -> list[str]:
    if not os.path.isdir(out_dir):
        return []
    patterns = _STAGE_OUTPUT_PATTERNS + tuple(extra_patterns)
    return sorted(n for n in os.listdir(out_dir)
                  if any(fnmatch.fnmatchcase(n, p) for p in patterns) and not n.startswith((".lock_", RECORD_FILE)))


def clear_output(out_dir: str, extra_patterns: tuple[str, ...] = ()) -> None:
    """Delete what a stage wrote in out_dir (data_prep.shards' parts, index, manifest, fingerprint, and the
    stage's own `extra_patterns`); any other file is left alone."""
    if not os.path.isdir(out_dir):
        return
    patterns = _STAGE_OUTPUT_PATTERNS + tuple(extra_patterns)
    for name in os.listdir(out_dir):
        if any(fnmatch.fnmatchcase(name, p) for p in patterns) and not name.startswith(".lock_"):
            full = os.path.join(out_dir, name)
            shutil.rmtree(full) if os.path.isdir(full) and not os.path.islink(full) else os.remove(full)


def prepare_output(out_dir: str, record: dict, *, overwrite: bool = False, rank: int = 0, world: int = 1,
                   extra_patterns: tuple[str, ...] = ()) -> None:
    """Check out_dir against `record` before any work, and record it there.

    Same digest: resume. Other digest with work in out_dir, or work with no fingerprint: FingerprintMismatch
    naming what differs, unless overwrite (rank 0 clears the stage's outputs first; other ranks wait for it when world > 1).
    extra_patterns: glob patterns of the stage's own output names beyond data_prep.shards' layout."""
    path = os.path.join(out_dir, RECORD_FILE)
    if overwrite:
        if rank == 0:
            clear_output(out_dir, extra_patterns)
            os.makedirs(out_dir, exist_ok=True)
            write_json_atomic(path, record)
        if world > 1:
            from data_prep.shards import barrier

            barrier()
    recorded = read(out_dir)
    if recorded is None:
        work = _existing_work(out_dir, extra_patterns)
        if work:
            raise FingerprintMismatch(
                f"{out_dir} holds earlier work ({', '.join(work[:3])}{', ...' if len(work) > 3 else ''}) but no "
                f"{RECORD_FILE}, so what it was made from is unknown: use a new output folder, or --overwrite")
        os.makedirs(out_dir, exist_ok=True)
        write_json_atomic(path, record, tmp_suffix=f".tmp{rank}")  # every rank writes the same record
        return
    if recorded.get("digest") != record["digest"]:
        if not _existing_work(out_dir, extra_patterns):  # e.g. a run that failed on a mistyped flag: nothing to keep
            write_json_atomic(path, record, tmp_suffix=f".tmp{rank}")
            return
        raise FingerprintMismatch(
            f"{out_dir} was made from other inputs ({_what_differs(recorded, record)} differ; see {path}): "
            f"use a new output folder, or --overwrite to start over")

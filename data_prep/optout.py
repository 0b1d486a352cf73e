"""Opt-out list: photos, authors or URLs whose images must never be used, honoured before download
(filter_metadata --optout) and re-applied to finished shards (this module's CLI).

List file formats:
  * text: one entry per line, `#` comments. An entry is `photo:<id>`, `author:<id>`, `url:<url>`, or
    unprefixed and recognised: an http(s)/flickr URL, a Flickr NSID like 12345678@N00 (author), or digits
    (photo id). Anything else is an error naming the file and line.
  * CSV (.csv, or a first line that is a header): columns among photo_id, author_id, url, page_url,
    download_url (every non-empty cell is an entry), or `type,value` rows with type photo_id/author_id/url.
Flickr page and download URLs also opt out their photo id, and author page URLs their author, so a
request matches whichever form of URL the metadata carries.

CLI:  python -m data_prep.optout SHARDS_IN SHARDS_OUT --list FILE
writes SHARDS_OUT: SHARDS_IN minus the opted-out samples, every column copied byte-for-byte, resumable and
rank-sharded like every stage, with manifest.json listing each removed key and which entry removed it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import re
import shutil
import sys
import urllib.parse
from dataclasses import dataclass, field

from data_prep.schema import MANIFEST_FILE

_FLICKR_PHOTO_PAGE = re.compile(r"flickr\.com/photos/([^/?#]+)/(\d+)")
_FLICKR_AUTHOR_PAGE = re.compile(r"flickr\.com/(?:photos|people)/([^/?#]+)/?$")
_FLICKR_DOWNLOAD = re.compile(r"static\.?flickr\.com/(?:[^?#]*/)?(\d+)_[0-9a-f]+(?:_[a-z0-9]+)?\.[a-z]+$")
_NSID = re.compile(r"^\d+@N\d+$", re.IGNORECASE)
_CSV_COLUMNS = {"photo_id": "photo", "author_id": "author", "url": "url", "page_url": "url", "download_url": "url"}


class OptOutListError(ValueError):
    pass


def normalize_url(url: str) -> str:
    """Comparable form: lower case, no scheme, no www., no port 80/443, no query/fragment, no trailing slash."""
    text = url.strip().lower()
    if "://" not in text:
        text = "http://" + text.lstrip("/")
    parts = urllib.parse.urlsplit(text)
    host = (parts.hostname or "").removeprefix("www.")
    if parts.port not in (None, 80, 443):
        host = f"{host}:{parts.port}"
    return host + parts.path.rstrip("/")


@dataclass
class OptOutList:
    photo_ids: set[str] = field(default_factory=set)
    author_ids: set[str] = field(default_factory=set)  # NSIDs or Flickr path aliases, lower case
    urls: set[str] = field(default_factory=set)  # normalize_url forms
    source: str = ""
    sha256: str = ""
    entries: int = 0  # entries read from the list (a URL can also yield a photo or author id)

    def __len__(self) -> int:
        return self.entries

    def add(self, kind: str, value: str) -> None:
        value = value.strip()
        if not value:
            return
        self.entries += 1
        if kind == "photo":
            self.photo_ids.add(value)
        elif kind == "author":
            self.author_ids.add(value.lower())
        elif kind == "url":
            self.urls.add(normalize_url(value))
            page = _FLICKR_PHOTO_PAGE.search(value)
            download = _FLICKR_DOWNLOAD.search(value.split("?")[0])
            author = _FLICKR_AUTHOR_PAGE.search(value.split("?")[0].split("#")[0])
            if page:
                self.photo_ids.add(page.group(2))
            elif download:
                self.photo_ids.add(download.group(1))
            elif author:
                self.author_ids.add(urllib.parse.unquote(author.group(1)).lower())
        else:
            raise ValueError(f"unknown opt-out kind {kind!r}")

    def match(self, photo_id: str = "", author_id: str = "", page_url: str = "",
              download_url: str = "") -> str | None:
        """Which entry kind opts this photo out ("photo_id", "author_id", "page_url", "download_url"), or None."""
        if photo_id and str(photo_id) in self.photo_ids:
            return "photo_id"
        if author_id and str(author_id).lower() in self.author_ids:
            return "author_id"
        page = _FLICKR_PHOTO_PAGE.search(page_url or "")
        if page and urllib.parse.unquote(page.group(1)).lower() in self.author_ids:
            return "author_id"
        if page_url and normalize_url(page_url) in self.urls:
            return "page_url"
        if download_url and normalize_url(download_url) in self.urls:
            return "download_url"
        return None

    @classmethod
    def load(cls, path: str) -> OptOutList:
        if not os.path.isfile(path):
            raise OptOutListError(f"{path}: opt-out list not found")
        with open(path, "rb") as f:
            data = f.read()
        opt = cls(source=path, sha256=hashlib.sha256(data).hexdigest())
        lines = data.decode("utf-8-sig").splitlines()
        content = [(n, line) for n, line in enumerate(lines, start=1) if line.strip() and not line.lstrip().startswith("#")]
        if not content:
            return opt
        first = [c.strip().lower() for c in next(csv.reader([content[0][1]]))]
        if path.lower().endswith(".csv") or set(first) & (set(_CSV_COLUMNS) | {"type"}):
            opt._load_csv(path, content, first)
        else:
            for n, line in content:
                opt._add_text_entry(path, n, line.strip())
        return opt

    def _load_csv(self, path: str, content: list[tuple[int, str]], header: list[str]) -> None:
        rows = csv.reader([line for _, line in content[1:]])
        if header[:2] == ["type", "value"]:
            for (n, _), row in zip(content[1:], rows):
                kind = _CSV_COLUMNS.get(row[0].strip().lower()) if row else None
                if kind is None or len(row) < 2:
                    raise OptOutListError(f"{path}: line {n}: expected type,value with type one of "
                                          f"{sorted(_CSV_COLUMNS)}, got {row}")
                self.add(kind, row[1])
            return
        kinds = [_CSV_COLUMNS.get(name) for name in header]
        if not any(kinds):
            raise OptOutListError(f"{path}: line {content[0][0]}: header needs one of {sorted(_CSV_COLUMNS)} "
                                  f"or type,value; got {header}")
        for (n, _), row in zip(content[1:], rows):
            for kind, cell in zip(kinds, row):
                if kind:
                    self.add(kind, cell)

    def _add_text_entry(self, path: str, n: int, entry: str) -> None:
        prefix, _, rest = entry.partition(":")
        if prefix.lower() in ("photo", "author", "url") and rest and not rest.startswith("//"):
            self.add(prefix.lower(), rest)
        elif entry.lower().startswith(("http://", "https://")) or "flickr.com/" in entry.lower():
            self.add("url", entry)
        elif _NSID.match(entry):
            self.add("author", entry)
        elif entry.isascii() and entry.isdigit():
            self.add("photo", entry)
        else:
            raise OptOutListError(f"{path}: line {n}: cannot tell whether {entry!r} is a photo id, author id or "
                                  f"URL; prefix it with photo:, author: or url:")


# ---------------------------------------------------------------------------------------------- shards CLI
def _decoded(sample: dict, name: str) -> str:
    value = sample.get(name)
    return "" if value is None else str(value.decode())


def apply_to_shards(shards_in: str, shards_out: str, optout: OptOutList, key_column: str = "photo_id",
                    part_size: int = 1000, compression: str | None = None) -> dict:
    """Copy shards_in to shards_out without opted-out samples (this rank's share; rank 0 merges).
    Returns the counts of the finished output (rank 0) or of this rank."""
    from tqdm import tqdm

    from data_prep.shards import (ResumableMDSWriter, barrier, count_samples, get_rank_world, iter_ledger,
                                  iter_mds, merge_ranks, part_counts, read_columns, write_manifest)

    if os.path.realpath(shards_in) == os.path.realpath(shards_out):
        raise ValueError(f"SHARDS_OUT must be a new folder, not SHARDS_IN ({shards_in})")
    rank, world = get_rank_world()
    columns = read_columns(shards_in)
    if key_column not in columns:
        raise ValueError(f"{shards_in} has no key column {key_column!r}; columns are {sorted(columns)}")
    total = count_samples(shards_in)
    with ResumableMDSWriter(shards_out, columns, rank=rank, part_size=part_size, compression=compression,
                            key_column=key_column) as writer:
        done = writer.done_keys()
        share = iter_mds(shards_in, rank, world, key_column=key_column, raw=True)
        for key, sample in tqdm(share, total=total // world, desc=f"opt-out rank {rank}", unit="img",
                                disable=None):
            if key in done:
                continue
            why = optout.match(photo_id=key if key_column == "photo_id" else _decoded(sample, "photo_id"),
                               author_id=_decoded(sample, "author_id"), page_url=_decoded(sample, "page_url"),
                               download_url=_decoded(sample, "download_url"))
            if why:
                writer.skip(key, f"opted_out_{why}", license=_decoded(sample, "license") or None)
            else:
                writer.write(key, sample)
        rank_counts = writer.counts()
    barrier()
    if rank != 0:
        return rank_counts
    merge_ranks(shards_out)
    for name in os.listdir(shards_in):  # sidecar files (e.g. empty_caption_latents.npy) travel with the shards
        src = os.path.join(shards_in, name)
        if os.path.isfile(src) and not name.startswith(".") and name not in ("index.json", MANIFEST_FILE):
            shutil.copy2(src, os.path.join(shards_out, name))
    counts = part_counts(shards_out)
    removed = [{"key": e["key"], "reason": e["reason"]} for e in iter_ledger(shards_out) if e["status"] == "skipped"]
    write_manifest(shards_out, "optout", [shards_in],
                   {"input_samples": total, "kept": counts["written"], "removed": counts["skipped"],
                    "kept_per_license": counts["written_per_license"],
                    "removed_per_license": counts["skipped_per_license"], "removed_keys": removed},
                   {"list": optout.source, "list_sha256": optout.sha256, "list_entries": len(optout),
                    "key_column": key_column, "world_size": world})
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.optout", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards_in", metavar="SHARDS_IN", help="merged MDS folder to filter")
    p.add_argument("shards_out", metavar="SHARDS_OUT", help="new MDS folder (resumable: re-run to continue)")
    p.add_argument("--list", required=True, dest="list_file", help="opt-out list (text or CSV, see module doc)")
    p.add_argument("--key-column", default="photo_id", help="column that identifies a sample (default photo_id)")
    p.add_argument("--part-size", type=int, default=1000, help="samples per resumable part (default 1000)")
    p.add_argument("--compression", default=None, help="MDS compression for the output, e.g. zstd")
    args = p.parse_args(argv)
    try:
        optout = OptOutList.load(args.list_file)
        counts = apply_to_shards(args.shards_in, args.shards_out, optout, args.key_column, args.part_size,
                                 args.compression)
    except (OptOutListError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"kept {counts['written']}, removed {sum(counts['skipped'].values())} {counts['skipped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

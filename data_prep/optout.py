"""Opt-out list: photos or authors whose images must never be used, honoured before download
(filter_metadata --optout) and re-applied to finished shards (this module's CLI).

Grammar (one for every list format; every entry is resolved to a photo id or an author NSID, or refused):
  * Lines; blank lines ignored; a `#` at the start of a line or after whitespace starts a comment
    (`photo:1001  # email 2024-01`); trailing commas/semicolons and surrounding quotes are stripped.
  * Plain lines: `photo:<id>`, `author:<nsid>`, `url:<url>` (also photo_id:, author_id:, nsid:, user:,
    page_url:, download_url:; prefix in any case), or unprefixed: digits (photo id), an NSID
    (12345678@N00, any case) or a URL.
  * CSV/TSV with a header (first non-comment line): columns among photo_id, author_id, url, page_url,
    download_url (and spellings photoid, photo, author, nsid, uid, owner, pageurl, downloadurl, link; other
    columns such as notes are ignored; every non-empty cell is an entry of its column's kind), or `type,value`
    rows. In CSV only a cell's trailing ` # comment` is a comment: a data row starting with `#` is data.
  * Photo ids are canonical integers (02868456581, 2868456581.0 -> 2868456581); NSIDs compare
    case-insensitively; every Flickr URL form of data_prep.flickr_ids resolves to its photo id or author NSID
    (flic.kr/p/ short links decoded; page URLs with /in/..., /with/<id>; m.flickr.com; static download URLs
    with any size suffix). A non-Flickr URL is matched exactly (normalised) as the last resort.
  * Aliases (flickr.com/photos/janedoe/, author:janedoe): YFCC rows carry only NSIDs, so an alias is resolved
    only through an --alias-map file (lines `alias,nsid`; comments as above).
Refused, stopping the run with one line `FILE: line N: 'entry': why` (with --skip-unresolvable: skipped,
counted and listed in the manifest instead): an alias not in the alias map, a Flickr URL that names no
single photo or author (albums, galleries, favorites, groups, tags, search), a value in the wrong column
(an author page in the photo_id column, a photo URL in the author_id column), an id that is not an integer
(2.87E+09: a spreadsheet rounded it), several values on one plain line, or a word that is none of these.

CLI:  python -m data_prep.optout SHARDS_IN SHARDS_OUT --list FILE [--alias-map FILE] [--skip-unresolvable]
(aspect-bucketed latents keep their bucket folders and a recounted buckets.json)
writes SHARDS_OUT: SHARDS_IN minus the opted-out samples, every column copied byte-for-byte, resumable and
rank-sharded like every stage, with manifest.json listing each removed key and which entry removed it.
SHARDS_OUT is fingerprinted (data_prep.fingerprint): re-running into it with another list or input is
refused (use a new SHARDS_OUT or --overwrite).
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

from data_prep import fingerprint
from data_prep.flickr_ids import (Unresolvable, canonical_nsid, canonical_photo_id, flickr_target, split_url)
from data_prep.schema import MANIFEST_FILE

# Prefixes of the type:value forms (plain lines, and the type column of type,value CSV) -> entry kind.
_KINDS = {"photo": "photo", "photo_id": "photo", "photoid": "photo",
          "author": "author", "author_id": "author", "nsid": "author", "user": "author", "uid": "author",
          "url": "url", "page_url": "url", "download_url": "url"}
# CSV header names -> entry kind.
_CSV_COLUMNS = {**_KINDS, "photoid": "photo", "owner": "author", "user_nsid": "author", "pageurl": "url",
                "downloadurl": "url", "link": "url"}
_PREFIX_RE = re.compile(r"^([A-Za-z_]+)\s*:\s*(.*)$", re.S)
_LINE_COMMENT_RE = re.compile(r"(?:^|\s)#.*$", re.S)  # whole-line or trailing comment of a plain line
_CELL_COMMENT_RE = re.compile(r"\s+#.*$", re.S)  # trailing comment inside a CSV cell (a leading # is data)
_SCIENTIFIC_RE = re.compile(r"^\d+(\.\d+)?[eE][+-]?\d+$")
_ALIAS_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# A metadata row's own Flickr page / static download URL (cheap: run on every row the filter keeps).
_ROW_PAGE_RE = re.compile(r"(?:^|[/.])flickr\.com/photos/([^/?#]+)/(\d+)", re.I)
_ROW_STATIC_RE = re.compile(r"(?:^|[/.])(?:static\.?flickr\.com)/(?:[^?#]*/)?(\d+)_[0-9a-f]+(?:_[0-9a-z]+)*"
                            r"\.[a-z0-9]+(?:[?#].*)?$", re.I)


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


def _looks_like_url(text: str) -> bool:
    lower = text.lower()
    if "://" in lower or lower.startswith(("www.", "//")):
        return True
    parts = split_url(text) if "/" in text else None
    return bool(parts and parts.hostname and "." in parts.hostname and not text[0].isdigit())


def load_alias_map(path: str) -> tuple[dict[str, str], str]:
    """alias (lower case) -> NSID from a file of `alias,nsid` lines (comma, tab or spaces; `#` comments; an
    optional `alias,nsid` header; the alias may be given as its flickr.com/photos/<alias>/ URL), and the file's
    sha256. Raises OptOutListError naming the file and line of a bad entry."""
    if not os.path.isfile(path):
        raise OptOutListError(f"{path}: alias map not found")
    with open(path, "rb") as f:
        data = f.read()
    aliases = {}
    for n, line in enumerate(data.decode("utf-8-sig").splitlines(), start=1):
        text = _LINE_COMMENT_RE.sub("", line).strip()
        if not text:
            continue
        cells = [c.strip().strip('"') for c in re.split(r"[,\t ]+", text) if c.strip()]
        if [c.lower() for c in cells] == ["alias", "nsid"]:
            continue
        if len(cells) != 2:
            raise OptOutListError(f"{path}: line {n}: expected `alias,nsid`, got {text!r}")
        alias, nsid = cells[0], canonical_nsid(cells[1])
        if _looks_like_url(alias):
            try:
                target = flickr_target(alias)
            except Unresolvable as e:
                raise OptOutListError(f"{path}: line {n}: {alias!r}: {e}") from None
            alias = target[1] if target and target[0] == "alias" else ""
        if not alias or not _ALIAS_RE.match(alias) or canonical_nsid(alias) or nsid is None:
            raise OptOutListError(f"{path}: line {n}: expected a Flickr alias and an NSID (like 12345678@N00), "
                                  f"got {text!r}")
        aliases[alias.lower()] = nsid
    return aliases, hashlib.sha256(data).hexdigest()


class _CanonicalSet(set):
    """A set of canonical keys whose `in` and `add` canonicalise their argument first, so a caller asking with
    the row's own spelling (the string "02868456581", an int64, "12345678@n00") cannot silently miss."""

    canonical = staticmethod(lambda value: value)

    def __contains__(self, value) -> bool:
        return super().__contains__(self.canonical(value))

    def add(self, value) -> None:
        key = self.canonical(value)
        if key is None:
            raise ValueError(f"{value!r} is not a valid key for {type(self).__name__}")
        super().add(key)


class PhotoIds(_CanonicalSet):
    canonical = staticmethod(canonical_photo_id)


class AuthorIds(_CanonicalSet):
    canonical = staticmethod(canonical_nsid)


@dataclass
class OptOutList:
    photo_ids: PhotoIds = field(default_factory=PhotoIds)  # canonical integers (`in` accepts any spelling)
    author_ids: AuthorIds = field(default_factory=AuthorIds)  # NSIDs as canonical_nsid spells them (12345678@N00)
    urls: set[str] = field(default_factory=set)  # normalize_url forms of non-Flickr URLs (exact match)
    aliases: dict[str, str] = field(default_factory=dict)  # lower-case alias -> NSID (--alias-map)
    source: str = ""
    sha256: str = ""
    alias_map: str | None = None
    alias_map_sha256: str | None = None
    skip_unresolvable: bool = False
    skipped: list[dict] = field(default_factory=list)  # {"file", "line", "entry", "why"} (--skip-unresolvable)
    entries: int = 0  # entries resolved from the list

    def __len__(self) -> int:
        return self.entries

    # -- resolving one entry
    def resolve(self, kind: str | None, value) -> tuple[str, int | str]:
        """("photo", id) | ("author", NSID) | ("url", normalised URL) for an entry of `kind` ("photo", "author",
        "url", or None for an unprefixed one). Raises Unresolvable saying why it names nothing a row carries."""
        text = str(value).strip()
        if not text:
            raise Unresolvable("empty value")
        if kind in (None, "photo") and canonical_photo_id(text) is not None:
            return "photo", canonical_photo_id(text)
        if kind in (None, "author") and canonical_nsid(text):
            return "author", canonical_nsid(text)
        if _looks_like_url(text) or kind == "url":
            target = self._resolve_url(text)
            if kind in ("photo", "author") and target[0] != kind:
                what = {"photo": "a photo URL", "author": "an author URL", "url": "a non-Flickr URL"}[target[0]]
                column = {"photo": "photo_id", "author": "author_id", "url": "url"}[target[0]]
                raise Unresolvable(f"{what} given as {kind}: put it under {column} (a value in the wrong column)")
            return target
        if _SCIENTIFIC_RE.match(text):
            raise Unresolvable("a number in scientific notation (a spreadsheet rounded the id?): write every digit")
        if kind == "photo":
            raise Unresolvable("not a photo id (an integer)")
        if _ALIAS_RE.match(text) and not text.isdigit() and (kind == "author" or text.lower() in self.aliases):
            return "author", self._alias(text)
        if kind == "author":
            raise Unresolvable("not an NSID (like 12345678@N00) nor a Flickr alias")
        if "," in text or ";" in text:
            raise Unresolvable("several values on one line: one entry per line, or a CSV with a header")
        raise Unresolvable("cannot tell whether this is a photo id, author id or URL; prefix it with photo:, "
                           "author: or url:")

    def _resolve_url(self, url: str) -> tuple[str, int | str]:
        target = flickr_target(url)  # raises Unresolvable for Flickr URLs naming neither
        if target is None:
            parts = split_url(url)
            if parts is None or parts.scheme not in ("http", "https"):
                raise Unresolvable("not an http(s) URL")
            return "url", normalize_url(url)
        if target[0] == "alias":
            return "author", self._alias(target[1])
        return target

    def _alias(self, alias: str) -> str:
        nsid = self.aliases.get(alias.lower())
        if nsid is None:
            raise Unresolvable(f"'{alias}' is a Flickr alias, and YFCC rows carry only NSIDs: give the NSID, or "
                               f"map it in an --alias-map file (`{alias},<NSID>`)")
        return nsid

    def add(self, kind: str | None, value) -> tuple[str, int | str]:
        """Resolve one entry (see resolve) and add it; raises Unresolvable when it names nothing."""
        if kind is not None and kind not in ("photo", "author", "url"):
            raise ValueError(f"unknown opt-out kind {kind!r}")
        target = self.resolve(kind, value)
        {"photo": self.photo_ids, "author": self.author_ids, "url": self.urls}[target[0]].add(target[1])
        self.entries += 1
        return target

    # -- matching a row
    def match(self, photo_id="", author_id="", page_url: str = "", download_url: str = "") -> str | None:
        """Which field opts this photo out ("photo_id", "author_id", "page_url", "download_url"), or None.
        Photo ids and NSIDs are compared canonically, also as read from the row's Flickr page/download URL."""
        if photo_id not in ("", None) and photo_id in self.photo_ids:
            return "photo_id"
        if author_id and author_id in self.author_ids:
            return "author_id"
        page = _ROW_PAGE_RE.search(page_url) if page_url else None
        if page:
            if int(page.group(2)) in self.photo_ids:
                return "page_url"
            user = urllib.parse.unquote(page.group(1))
            if user in self.author_ids or self.aliases.get(user.lower()) in self.author_ids:
                return "author_id"
        static = _ROW_STATIC_RE.search(download_url) if download_url else None
        if static and int(static.group(1)) in self.photo_ids:
            return "download_url"
        if self.urls:
            if page_url and normalize_url(page_url) in self.urls:
                return "page_url"
            if download_url and normalize_url(download_url) in self.urls:
                return "download_url"
        return None

    # -- reading a list file
    @classmethod
    def load(cls, path: str, alias_map: str | None = None, skip_unresolvable: bool = False) -> OptOutList:
        """Read an opt-out list (grammar in the module doc). Raises OptOutListError `FILE: line N: ...` at the
        first entry that resolves to nothing, unless skip_unresolvable (then it is listed in .skipped)."""
        if not os.path.isfile(path):
            raise OptOutListError(f"{path}: opt-out list not found")
        with open(path, "rb") as f:
            data = f.read()
        opt = cls(source=path, sha256=hashlib.sha256(data).hexdigest(), skip_unresolvable=skip_unresolvable)
        if alias_map:
            opt.aliases, opt.alias_map_sha256 = load_alias_map(alias_map)
            opt.alias_map = alias_map
        lines = list(enumerate(data.decode("utf-8-sig").splitlines(), start=1))
        # Comment-only and blank lines before the first entry (or header) are never data.
        body = [(n, line) for n, line in lines if _LINE_COMMENT_RE.sub("", line).strip()]
        if not body:
            return opt
        n0, first = body[0]
        delimiter = "\t" if "\t" in first else ","
        header = [c.strip().lower() for c in next(csv.reader([first], delimiter=delimiter))]
        data_lines = [(n, line) for n, line in lines if n > n0]
        if header[:2] == ["type", "value"]:
            opt._load_typed_csv(data_lines, delimiter)
        elif any(name in _CSV_COLUMNS for name in header):
            opt._load_column_csv(data_lines, delimiter, [_CSV_COLUMNS.get(name) for name in header])
        else:
            for n, line in body:
                opt._load_plain_line(n, line)
        return opt

    def _entry(self, n: int, kind: str | None, value: str) -> None:
        try:
            self.add(kind, value)
        except Unresolvable as e:
            if not self.skip_unresolvable:
                raise OptOutListError(f"{self.source}: line {n}: {value!r}: {e} (--skip-unresolvable skips "
                                      f"such entries)") from None
            self.skipped.append({"file": self.source, "line": n, "entry": value, "why": str(e)})

    def _load_plain_line(self, n: int, line: str) -> None:
        text = _strip_value(_LINE_COMMENT_RE.sub("", line))
        if not text:
            return
        prefix = _PREFIX_RE.match(text)
        if prefix and prefix.group(1).lower() in _KINDS:
            self._entry(n, _KINDS[prefix.group(1).lower()], _strip_value(prefix.group(2)))
        else:
            self._entry(n, None, text)

    def _rows(self, data_lines: list[tuple[int, str]], delimiter: str):
        for n, line in data_lines:
            if not line.strip():
                continue
            cells = [_strip_value(_CELL_COMMENT_RE.sub("", c)) for c in next(csv.reader([line], delimiter=delimiter))]
            if any(cells):
                yield n, cells

    def _load_typed_csv(self, data_lines: list[tuple[int, str]], delimiter: str) -> None:
        for n, cells in self._rows(data_lines, delimiter):
            kind = _KINDS.get(cells[0].lower())
            if kind is None or len(cells) < 2:
                raise OptOutListError(f"{self.source}: line {n}: expected type,value with type one of "
                                      f"{sorted(_KINDS)}, got {cells}")
            self._entry(n, kind, cells[1])

    def _load_column_csv(self, data_lines: list[tuple[int, str]], delimiter: str, kinds: list[str | None]) -> None:
        for n, cells in self._rows(data_lines, delimiter):
            if len(cells) > len(kinds) and any(cells[len(kinds):]):
                raise OptOutListError(f"{self.source}: line {n}: {len(cells)} cells but the header names "
                                      f"{len(kinds)} columns")
            for kind, cell in zip(kinds, cells):
                if kind and cell:
                    self._entry(n, kind, cell)

    def fingerprint(self) -> dict:
        """What a stage's fingerprint records of this list (data_prep.fingerprint)."""
        return {"list": self.source, "sha256": self.sha256, "alias_map": self.alias_map,
                "alias_map_sha256": self.alias_map_sha256, "skip_unresolvable": self.skip_unresolvable}

    def summary(self) -> dict:
        """For a manifest: the list, its sha256, what it resolved to and what was skipped."""
        return {**self.fingerprint(), "entries": self.entries, "photo_ids": len(self.photo_ids),
                "author_ids": len(self.author_ids), "urls": len(self.urls),
                "unresolvable_skipped": len(self.skipped), "skipped_entries": self.skipped}


def _strip_value(text: str) -> str:
    """Whitespace, trailing commas/semicolons and one pair of surrounding quotes off an entry."""
    text = text.strip().rstrip(",;").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def add_optout_args(p: argparse.ArgumentParser, list_flag: str = "--optout", required: bool = False) -> None:
    """The opt-out flags a stage takes: the list, --alias-map and --skip-unresolvable."""
    p.add_argument(list_flag, required=required, dest="optout_list",
                   help="opt-out list (plain lines, type:value or CSV; see data_prep.optout)")
    p.add_argument("--alias-map", default=None, help="file of `alias,nsid` lines resolving Flickr aliases")
    p.add_argument("--skip-unresolvable", action="store_true",
                   help="skip (count and report) list entries that name no photo or author instead of stopping")


def optout_from_args(args: argparse.Namespace) -> OptOutList | None:
    if not args.optout_list:
        return None
    return OptOutList.load(args.optout_list, alias_map=args.alias_map, skip_unresolvable=args.skip_unresolvable)


# ---------------------------------------------------------------------------------------------- shards CLI
def _decoded(sample: dict, name: str) -> str:
    value = sample.get(name)
    return "" if value is None else str(value.decode())


def apply_to_shards(shards_in: str, shards_out: str, optout: OptOutList, key_column: str = "photo_id",
                    part_size: int = 1000, compression: str | None = None, overwrite: bool = False) -> dict:
    """Copy shards_in to shards_out without opted-out samples (this rank's share; rank 0 merges).
    Returns the counts of the finished output (rank 0) or of this rank. shards_out is fingerprinted (input,
    list, key column): continuing it with another list or input raises FingerprintMismatch unless overwrite."""
    from tqdm import tqdm

    from data_prep.shards import (ResumableMDSWriter, barrier, count_samples, get_rank_world, iter_ledger,
                                  iter_mds, merge_ranks, part_counts, read_columns, write_manifest)
    from data_prep.subset_writers import SubsetWriters, merge_subsets
    from diffusion.datasets.buckets import BUCKET_PREFIX, read_buckets_file, write_buckets_file

    if os.path.realpath(shards_in) == os.path.realpath(shards_out):
        raise ValueError(f"SHARDS_OUT must be a new folder, not SHARDS_IN ({shards_in})")
    rank, world = get_rank_world()
    columns = read_columns(shards_in)
    if key_column not in columns:
        raise ValueError(f"{shards_in} has no key column {key_column!r}; columns are {sorted(columns)}")
    total = count_samples(shards_in)
    sidecars = [n for n in os.listdir(shards_in) if os.path.isfile(os.path.join(shards_in, n))
                and not n.startswith(".") and n not in ("index.json", MANIFEST_FILE, fingerprint.RECORD_FILE)]
    # Aspect-bucketed latents (precompute_latents --aspect-buckets) keep their bucket folders: each is filtered
    # into the same folder of shards_out, and buckets.json is rewritten with the counts kept.
    bucket_info = read_buckets_file(None, shards_in)
    buckets = sorted(bucket_info["buckets"]) if bucket_info else []
    record = fingerprint.make("optout", [shards_in], {"key_column": key_column}, optout=optout)
    fingerprint.prepare_output(shards_out, record, overwrite=overwrite, rank=rank, world=world,
                               extra_patterns=tuple(sidecars) + ((BUCKET_PREFIX + "*",) if buckets else ()))
    writer_kwargs = dict(rank=rank, part_size=part_size, compression=compression, key_column=key_column)
    writer = (SubsetWriters(shards_out, columns, prefix=BUCKET_PREFIX, **writer_kwargs) if buckets
              else ResumableMDSWriter(shards_out, columns, **writer_kwargs))
    with writer:
        done = writer.done_keys()
        for subset in buckets or [None]:
            share = iter_mds(os.path.join(shards_in, subset) if subset else shards_in, rank, world,
                             key_column=key_column, raw=True)
            share_total = bucket_info["buckets"][subset]["num_samples"] if subset else total
            for key, sample in tqdm(share, total=share_total // world, desc=f"opt-out rank {rank}", unit="img",
                                    disable=None):
                if key in done:
                    continue
                why = optout.match(photo_id=key if key_column == "photo_id" else _decoded(sample, "photo_id"),
                                   author_id=_decoded(sample, "author_id"), page_url=_decoded(sample, "page_url"),
                                   download_url=_decoded(sample, "download_url"))
                if why:
                    writer.skip(key, f"opted_out_{why}", license=_decoded(sample, "license") or None)
                elif subset:
                    writer.write(key, sample, subset=subset)
                else:
                    writer.write(key, sample)
        rank_counts = writer.counts()
    barrier()
    if rank != 0:
        return rank_counts
    folders = [os.path.join(shards_out, b) for b in buckets]
    if buckets:
        kept_per_bucket = merge_subsets(shards_out, BUCKET_PREFIX)
    else:
        merge_ranks(shards_out)
    for name in sidecars:  # sidecar files (e.g. empty_caption_latents.npy) travel with the shards
        shutil.copy2(os.path.join(shards_in, name), os.path.join(shards_out, name))
    if buckets:
        write_buckets_file(shards_out, bucket_info["resolutions"], bucket_info["multiple"], kept_per_bucket)
    counts = part_counts(shards_out, *folders)
    removed = [{"key": e["key"], "reason": e["reason"]} for folder in (shards_out, *folders)
               for e in iter_ledger(folder) if e["status"] == "skipped"]
    write_manifest(shards_out, "optout", [shards_in],
                   {"input_samples": total, "kept": counts["written"], "removed": counts["skipped"],
                    "kept_per_license": counts["written_per_license"],
                    "removed_per_license": counts["skipped_per_license"], "removed_keys": removed},
                   {**optout.summary(), "list_sha256": optout.sha256, "list_entries": len(optout),
                    "key_column": key_column, "world_size": world}, fingerprint=record)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.optout", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards_in", metavar="SHARDS_IN", help="merged MDS folder to filter")
    p.add_argument("shards_out", metavar="SHARDS_OUT", help="new MDS folder (resumable: re-run to continue)")
    add_optout_args(p, "--list", required=True)
    p.add_argument("--key-column", default="photo_id", help="column that identifies a sample (default photo_id)")
    p.add_argument("--part-size", type=int, default=1000, help="samples per resumable part (default 1000)")
    p.add_argument("--compression", default=None, help="MDS compression for the output, e.g. zstd")
    p.add_argument("--overwrite", action="store_true",
                   help="start SHARDS_OUT over when it was made from another list or input")
    args = p.parse_args(argv)
    try:
        optout = optout_from_args(args)
        counts = apply_to_shards(args.shards_in, args.shards_out, optout, args.key_column, args.part_size,
                                 args.compression, overwrite=args.overwrite)
    except (OptOutListError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    skipped = f"; skipped {len(optout.skipped)} unresolvable list entries (listed in the manifest)" \
        if optout.skipped else ""
    print(f"kept {counts['written']}, removed {sum(counts['skipped'].values())} {counts['skipped']}{skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

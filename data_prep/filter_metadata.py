"""Filter YFCC100M / CommonCatalog metadata to the photos a split may use, before anything is downloaded.

    python -m data_prep.filter_metadata yfcc100m_dataset.bz2 --split C --out meta_c/

Each row is kept or dropped for exactly one reason, checked in this order:
  malformed (or --strict: stop with file and row) -> video -> license (not in the split; UNKNOWN rows are
  split by why: license_missing / _unrecognised / _conflict / _unrecognised_url (a creativecommons.org URL
  that is no known license) / _non_cc_url (a filled URL field that is no CC license URL)) -> no_download_url -> no_page_url -> too_small (only when
  the source gives a size; otherwise the fetch stage checks after download) -> opted_out -> duplicate
  (a photo id already kept).
Output: <out>/photos/*.parquet (schema.FILTERED_METADATA_COLUMNS; read with metadata.iter_filtered) and
<out>/manifest.json with counts kept/dropped per license and per reason.

Resumable: input rows are processed in chunks of --chunk-rows; each chunk is published atomically as one
parquet file carrying its own counts, so a re-run skips finished chunks. <out>/fingerprint.json (data_prep.
fingerprint: the inputs' sha256, the opt-out list's and the flags) is checked first: a re-run with another
input, list or flags is refused in one line (--overwrite starts over). A truncated or corrupt compressed input
stops with one line naming the file and the last row read (exit 2); finished chunks stay.
Opt-out entries that resolve to nothing stop the run before any row is read (see data_prep.optout).
Dedupe keeps one Python set of kept photo ids (about 60 bytes each: ~1.5 GB for YFCC100M's 25M CC-BY/BY-SA).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from data_prep.licenses import License, classify_license, split_licenses
from data_prep.metadata import (FORMATS, YFCC_SQLITE_TABLE, MalformedRow, MetadataError, PhotoRecord,
                                read_metadata)
from data_prep import fingerprint
from data_prep.optout import OptOutList, OptOutListError, add_optout_args
from data_prep.schema import FILTERED_METADATA_COLUMNS, FILTERED_METADATA_DIR

LEGACY_STATE_FILE = "filter_state.json"  # before data_prep.fingerprint
COUNTS_METADATA_KEY = b"data_prep.filter_counts"
_PART_RE = re.compile(r"^part-(\d{3})-(\d{6})\.parquet$")
MAX_MALFORMED_EXAMPLES = 20


class StrictError(ValueError):
    pass


class RowFilter:
    """The keep/drop decision for one record, with counts. Pure logic: no I/O."""

    def __init__(self, split: str, include_public_domain: bool = False, min_width: int = 0, min_height: int = 0,
                 dedupe: bool = True, optout: OptOutList | None = None, strict: bool = False):
        self.allowed = split_licenses(split, include_public_domain)
        self.min_width, self.min_height = min_width, min_height
        self.dedupe, self.optout, self.strict = dedupe, optout, strict
        self.kept_ids: set[int | str] = set()
        self.counts = new_counts()

    def check(self, item: PhotoRecord | MalformedRow) -> tuple[License | None, str | None]:
        """(license, drop reason or None). Updates counts and the kept-id set."""
        self.counts["rows_read"] += 1
        if isinstance(item, MalformedRow):
            if self.strict:
                raise StrictError(str(item))
            if len(self.counts["malformed_examples"]) < MAX_MALFORMED_EXAMPLES:
                self.counts["malformed_examples"].append(str(item))
            return self._drop(None, "malformed")
        lic, how = classify_license(item.license_url, item.license_name)
        if item.is_video:
            return self._drop(lic, "video")
        if lic not in self.allowed:
            return self._drop(lic, f"license_{how}" if lic == License.UNKNOWN else "license_not_in_split")
        if not item.download_url:
            return self._drop(lic, "no_download_url")
        if not item.page_url:
            return self._drop(lic, "no_page_url")  # attribution needs a source link
        if (item.width is not None and item.width < self.min_width) or \
                (item.height is not None and item.height < self.min_height):
            return self._drop(lic, "too_small")
        if self.optout is not None:
            why = self.optout.match(item.photo_id, item.author_id, item.page_url, item.download_url)
            if why:
                return self._drop(lic, "opted_out")
        if self.dedupe:
            compact = compact_id(item.photo_id)
            if compact in self.kept_ids:
                return self._drop(lic, "duplicate")
            self.kept_ids.add(compact)
        self.counts["kept"] += 1
        _bump(self.counts["kept_per_license"], str(lic))
        return lic, None

    def _drop(self, lic: License | None, reason: str) -> tuple[License | None, str]:
        _bump(self.counts["dropped"], reason)
        _bump(self.counts["dropped_per_license"], str(lic) if lic is not None else "unparsed")
        return lic, reason


def compact_id(photo_id: str) -> int | str:
    """A canonical decimal id as an int (smaller in a set of millions), anything else unchanged; one-to-one,
    so "0123" and "123" stay distinct."""
    if photo_id.isascii() and photo_id.isdigit() and (photo_id[0] != "0" or photo_id == "0"):
        return int(photo_id)
    return photo_id


def new_counts() -> dict:
    return {"rows_read": 0, "kept": 0, "dropped": {}, "kept_per_license": {}, "dropped_per_license": {},
            "malformed_examples": []}


def _bump(d: dict, key: str, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


def add_counts(total: dict, part: dict) -> None:
    total["rows_read"] += part["rows_read"]
    total["kept"] += part["kept"]
    for name in ("dropped", "kept_per_license", "dropped_per_license"):
        for k, v in part[name].items():
            _bump(total[name], k, v)
    room = MAX_MALFORMED_EXAMPLES - len(total["malformed_examples"])
    total["malformed_examples"].extend(part["malformed_examples"][:max(room, 0)])


# ---------------------------------------------------------------------------------------------- parts
def _arrow_schema():
    import pyarrow as pa

    types = {"str": pa.string(), "int": pa.int64()}
    return pa.schema([(name, types[kind]) for name, kind in FILTERED_METADATA_COLUMNS.items()])


def _write_part(folder: str, name: str, rows: list[dict], counts: dict) -> None:
    """One parquet file with the chunk's rows and (in its schema metadata) the chunk's counts, published
    by an atomic rename so a chunk is either fully there or absent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema().with_metadata({COUNTS_METADATA_KEY: json.dumps(counts).encode()})
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = os.path.join(folder, f".{name}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, name))


def _finished_parts(folder: str) -> dict[tuple[int, int], str]:
    found = {}
    for name in os.listdir(folder):
        m = _PART_RE.match(name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = os.path.join(folder, name)
    return found


def run_filter(inputs: list[str], out_dir: str, split: str, *, fmt: str = "auto", include_public_domain: bool = False,
               min_width: int = 0, min_height: int = 0, dedupe: bool = True, optout_path: str | None = None,
               strict: bool = False, url_decode: bool | None = None, sqlite_table: str = YFCC_SQLITE_TABLE,
               chunk_rows: int = 1_000_000, overwrite: bool = False, progress: bool = True,
               alias_map: str | None = None, skip_unresolvable: bool = False) -> dict:
    """Filter `inputs` into out_dir (resumable). Returns the total counts (also in manifest.json).
    out_dir is fingerprinted (input files' sha256, opt-out list, flags): continuing it with other inputs raises
    FingerprintMismatch unless overwrite, which starts over."""
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from data_prep.shards import write_manifest

    for path in inputs:
        if not os.path.isfile(path):
            raise MetadataError(f"{path}: no such file")
    optout = OptOutList.load(optout_path, alias_map, skip_unresolvable) if optout_path else None
    flags = {"split": split.upper(), "format": fmt, "include_public_domain": include_public_domain,
             "min_width": min_width, "min_height": min_height, "dedupe": dedupe, "strict": strict,
             "url_decode": url_decode, "sqlite_table": sqlite_table, "chunk_rows": chunk_rows}
    folder = os.path.join(out_dir, FILTERED_METADATA_DIR)
    record = fingerprint.make("filter_metadata", inputs, flags, optout=optout)
    fingerprint.prepare_output(out_dir, record, overwrite=overwrite,
                               extra_patterns=(FILTERED_METADATA_DIR, LEGACY_STATE_FILE))
    os.makedirs(folder, exist_ok=True)

    for name in os.listdir(folder):  # half-written chunk of a killed run
        if name.startswith(".") and name.endswith(".tmp"):
            os.remove(os.path.join(folder, name))
    rf = RowFilter(split, include_public_domain, min_width, min_height, dedupe, optout, strict)
    totals = new_counts()
    parts = _finished_parts(folder)
    for (input_idx, chunk), path in sorted(parts.items()):  # resume: counts and kept ids of finished chunks
        pf = pq.ParquetFile(path)
        add_counts(totals, json.loads(pf.schema_arrow.metadata[COUNTS_METADATA_KEY]))
        if dedupe:
            for pid in pf.read(columns=["photo_id"]).column(0).to_pylist():
                rf.kept_ids.add(compact_id(pid))

    bar = tqdm(desc="filter", unit="row", disable=not progress or None, initial=totals["rows_read"])
    for input_idx, path in enumerate(inputs):
        done_chunks = sorted(c for (i, c) in parts if i == input_idx)
        if done_chunks != list(range(len(done_chunks))):
            raise RuntimeError(f"{folder}: chunks of input {input_idx} are not a prefix: {done_chunks}")
        start_row = len(done_chunks) * chunk_rows
        chunk, rows = len(done_chunks), []
        rf.counts = new_counts()
        for row, item in read_metadata(path, fmt, start_row, url_decode, sqlite_table):
            lic, reason = rf.check(item)
            if reason is None:
                rows.append(item.to_row(lic))
            bar.update()
            if row == (chunk + 1) * chunk_rows:  # the chunk is complete: publish it now, not at the next row
                _write_part(folder, f"part-{input_idx:03d}-{chunk:06d}.parquet", rows, rf.counts)
                add_counts(totals, rf.counts)
                chunk, rows, rf.counts = chunk + 1, [], new_counts()
        if rf.counts["rows_read"]:
            _write_part(folder, f"part-{input_idx:03d}-{chunk:06d}.parquet", rows, rf.counts)
            add_counts(totals, rf.counts)
    bar.close()
    if optout is not None:
        totals["optout"] = optout.summary()
    write_manifest(out_dir, "filter_metadata", [os.path.abspath(p) for p in inputs], totals,
                   {**flags, "optout": optout_path}, fingerprint=record)
    return totals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.filter_metadata", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="METADATA", help="YFCC100M TSV (.bz2/.gz ok), SQLite or parquet")
    p.add_argument("--out", required=True, help="output folder (photos/*.parquet + manifest.json)")
    p.add_argument("--split", required=True, choices=["C", "NC"], type=str.upper,
                   help="C = CC-BY, CC-BY-SA; NC = C + CC-BY-NC, CC-BY-NC-SA")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="input format (default: by extension)")
    p.add_argument("--include-public-domain", action="store_true",
                   help="also keep CC0 and Public-Domain-Mark photos (not in the paper's splits)")
    p.add_argument("--min-width", type=int, default=0, help="drop photos narrower than this, when the size is known")
    p.add_argument("--min-height", type=int, default=0, help="drop photos shorter than this, when the size is known")
    p.add_argument("--no-dedupe", dest="dedupe", action="store_false", help="keep repeated photo ids")
    add_optout_args(p, "--optout")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed row instead of counting it")
    decode = p.add_mutually_exclusive_group()
    decode.add_argument("--url-decode", dest="url_decode", action="store_true", default=None,
                        help="URL-decode title/description/author (default for TSV and SQLite)")
    decode.add_argument("--no-url-decode", dest="url_decode", action="store_false",
                        help="take text fields as they are (default for parquet)")
    p.add_argument("--sqlite-table", default=YFCC_SQLITE_TABLE, help=f"table name (default {YFCC_SQLITE_TABLE})")
    p.add_argument("--chunk-rows", type=int, default=1_000_000, help="input rows per resumable output part")
    p.add_argument("--overwrite", action="store_true",
                   help="start over when --out holds a run made from other inputs, opt-out list or flags")
    args = p.parse_args(argv)
    try:
        counts = run_filter(args.inputs, args.out, args.split, fmt=args.format,
                            include_public_domain=args.include_public_domain, min_width=args.min_width,
                            min_height=args.min_height, dedupe=args.dedupe, optout_path=args.optout_list,
                            strict=args.strict, url_decode=args.url_decode, sqlite_table=args.sqlite_table,
                            chunk_rows=args.chunk_rows, overwrite=args.overwrite, alias_map=args.alias_map,
                            skip_unresolvable=args.skip_unresolvable)
    except (StrictError, MetadataError, OptOutListError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    skipped = counts.get("optout", {}).get("unresolvable_skipped")
    print(f"kept {counts['kept']} of {counts['rows_read']} rows; dropped {counts['dropped']}; "
          f"kept per license {counts['kept_per_license']}"
          + (f"; skipped {skipped} unresolvable opt-out entries (listed in the manifest)" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

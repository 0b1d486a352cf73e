"""Readers for photo metadata: YFCC100M's TSV dump, its SQLite form, and CommonCatalog-style parquet.

Every reader yields (row_number, PhotoRecord | MalformedRow) in file order, 1-based, starting after
`start_row` rows (so an interrupted filter can resume without re-parsing what it already finished).
A MalformedRow names the file and the row, so --strict can fail with one clear line.

YFCC100M TSV, no header, layout told by each row's content (not its column count alone):
  * 23 columns (the 2014 split files yfcc100m_dataset-0..9): photo id, user NSID, ... marker (YFCC_COLUMNS);
  * 25 columns (the single-file release yfcc100m_dataset[.bz2]): line number, photo id, photo hash (md5 of
    the download URL printed without zero padding: up to 32 hex digits), user NSID, ... marker.
A row is read as the 25-column layout only when its line number and photo id are digits and its third field
looks like that hash; either layout needs a numeric photo id and an NSID-shaped user id where they belong.
Anything else (e.g. a 23-column row whose title holds two stray tabs) is a MalformedRow.
Text fields are URL-encoded with '+' for spaces in the dump; title, description, the author's nickname and
the license name are decoded (url_decode=True). Files may be .bz2/.gz/.xz compressed (YFCC100M ships as
bz2); a truncated or corrupt compressed file stops the read with a MetadataError naming the last row read.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import sqlite3
import zlib
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from data_prep.schema import FILTERED_METADATA_COLUMNS, FILTERED_METADATA_DIR

YFCC_COLUMNS = (
    "photoid", "uid", "unickname", "datetaken", "dateuploaded", "capturedevice", "title", "description",
    "usertags", "machinetags", "longitude", "latitude", "accuracy", "pageurl", "downloadurl", "licensename",
    "licenseurl", "serverid", "farmid", "secret", "secretoriginal", "ext", "marker",
)
YFCC_SINGLE_FILE_COLUMNS = 25  # line number, photo id, photo hash, then YFCC_COLUMNS[1:]
# md5 printed byte by byte with %x: each byte below 0x10 loses a digit, so 16-32 hex digits (30-32 for most
# rows, but about 7% of md5s have three or more such bytes).
_HASH_RE = re.compile(r"^[0-9a-f]{16,32}$")
_NSID_RE = re.compile(r"^\d+@N\d+$")
YFCC_SQLITE_TABLE = "yfcc100m_dataset"

# Our field -> accepted source column names (YFCC names first, then CommonCatalog / Flickr API spellings).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "photo_id": ("photoid", "photo_id", "id"),
    "author_id": ("uid", "author_id", "owner", "user_nsid"),
    "author_name": ("unickname", "author_name", "ownername", "user_nickname"),
    "title": ("title",),
    "description": ("description",),
    "page_url": ("pageurl", "page_url"),
    "download_url": ("downloadurl", "download_url", "url"),
    "license_name": ("licensename", "license_name", "license"),
    "license_url": ("licenseurl", "license_url"),
    "width": ("width", "original_width"),
    "height": ("height", "original_height"),
    "marker": ("marker",),
}
REQUIRED_FIELDS = ("photo_id", "download_url", "license_name", "license_url")


class MetadataError(ValueError):
    """A whole input cannot be read (missing file, table or required column)."""


@dataclass
class PhotoRecord:
    photo_id: str
    download_url: str
    page_url: str
    author_name: str
    author_id: str
    title: str
    description: str
    license_name: str
    license_url: str
    width: int | None = None
    height: int | None = None
    is_video: bool = False

    def to_row(self, license: str) -> dict[str, Any]:
        """The output row of filter_metadata (FILTERED_METADATA_COLUMNS)."""
        row = {name: getattr(self, name, None) for name in FILTERED_METADATA_COLUMNS}
        row["license"] = str(license)
        return row


@dataclass
class MalformedRow:
    path: str
    row: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: row {self.row}: {self.reason}"


def _text(value: Any) -> str:
    if type(value) is str:  # the common case, checked first: this runs ~10 times per input row
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).strip()


def _optional_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    text = _text(value)
    if text in ("", "None", "nan", "null"):
        return None
    try:
        number = int(float(text)) if "." in text else int(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not an integer") from None
    if number < 0:
        raise ValueError(f"{name} {number} is negative")
    return number


def record_from_fields(fields: Mapping[str, Any], url_decode: bool) -> PhotoRecord:
    """Build a PhotoRecord from our field names (see COLUMN_ALIASES). Raises ValueError if malformed."""
    photo_id = _text(fields.get("photo_id"))
    if photo_id.endswith(".0") and photo_id[:-2].isascii() and photo_id[:-2].isdigit():  # an integer id read back as float
        photo_id = photo_id[:-2]
    if not photo_id or (not photo_id.isascii() or not photo_id.isdigit()) and len(photo_id.split()) != 1:
        raise ValueError(f"bad photo id {photo_id!r}")
    marker = _text(fields.get("marker"))
    if marker not in ("", "0", "1", "True", "False"):
        raise ValueError(f"marker {marker!r} is neither 0 (photo) nor 1 (video)")
    get = fields.get
    title, description, author_name = _text(get("title")), _text(get("description")), _text(get("author_name"))
    license_name = _text(get("license_name"))
    if url_decode:
        title, description, author_name = _url_decode(title), _url_decode(description), _url_decode(author_name)
        license_name = _url_decode(license_name)  # YFCC writes "Attribution+License"
    return PhotoRecord(photo_id=photo_id, download_url=_text(get("download_url")), page_url=_text(get("page_url")),
                       author_name=author_name, author_id=_text(get("author_id")), title=title,
                       description=description, license_name=license_name,
                       license_url=_text(get("license_url")), width=_optional_int(get("width"), "width"),
                       height=_optional_int(get("height"), "height"), is_video=marker in ("1", "True"))


def _url_decode(text: str) -> str:
    return urllib.parse.unquote_plus(text).strip() if "%" in text or "+" in text else text


# ---------------------------------------------------------------------------------------------- TSV
def open_text(path: str):
    """Open a text file, transparently decompressing .bz2/.gz/.xz."""
    opener = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}.get(os.path.splitext(path)[1].lower(), open)
    return opener(path, "rt", encoding="utf-8", errors="replace", newline="\n")


# Errors a compressed stream raises when it is cut short or damaged (EOFError: bz2/gz/xz ended early).
_COMPRESSED_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)


def yfcc_cells(cells: list[str]) -> list[str] | str:
    """The 23 YFCC_COLUMNS cells of one TSV row in either layout, or why the row fits neither."""
    n = len(cells)
    if n == YFCC_SINGLE_FILE_COLUMNS and cells[0].isascii() and cells[0].isdigit() and cells[1].isascii() \
            and cells[1].isdigit() and _HASH_RE.match(cells[2]) and _NSID_RE.match(cells[3]):
        return [cells[1], *cells[3:]]
    if n == len(YFCC_COLUMNS) and cells[0].isascii() and cells[0].isdigit() and _NSID_RE.match(cells[1]):
        return cells
    if n == YFCC_SINGLE_FILE_COLUMNS:
        return ("25 tab-separated columns but not the single-file layout (line number, photo id, hex photo "
                "hash, user NSID, ...): a 23-column row with stray tabs inside a field?")
    if n == len(YFCC_COLUMNS):
        return (f"23 columns but the photo id {cells[0][:30]!r} is not numeric or the user id {cells[1][:30]!r} "
                f"is not an NSID (YFCC100M order: photo id, user NSID, ...)")
    return (f"{n} tab-separated columns, expected {len(YFCC_COLUMNS)} (YFCC100M split files) or "
            f"{YFCC_SINGLE_FILE_COLUMNS} (single-file release)")


def read_yfcc_tsv(path: str, start_row: int = 0,
                  url_decode: bool = True) -> Iterator[tuple[int, PhotoRecord | MalformedRow]]:
    if not os.path.isfile(path):
        raise MetadataError(f"{path}: no such file")
    row = 0
    try:
        with open_text(path) as f:
            for row, line in enumerate(f, start=1):
                if row <= start_row:
                    continue  # resuming: skip without parsing
                cells = yfcc_cells(line.rstrip("\r\n").split("\t"))
                if isinstance(cells, str):
                    yield row, MalformedRow(path, row, cells)
                    continue
                yield row, _parse(path, row, {field: cells[i] for field, i in _YFCC_FIELD_INDEX}, url_decode)
    except _COMPRESSED_ERRORS as e:
        raise MetadataError(f"{path}: the compressed file is truncated or corrupt after row {row} "
                            f"({type(e).__name__}: {e}); finished chunks are kept, re-download the file") from e


# Our field -> its position in a YFCC row, resolved once through COLUMN_ALIASES.
_YFCC_FIELD_INDEX = [(field, YFCC_COLUMNS.index(next(a for a in aliases if a in YFCC_COLUMNS)))
                     for field, aliases in COLUMN_ALIASES.items() if any(a in YFCC_COLUMNS for a in aliases)]


def _resolve_columns(path: str, available: list[str]) -> dict[str, str]:
    """Our field -> the source column that holds it; MetadataError when a required one is missing."""
    lower = {c.lower(): c for c in available}
    chosen = {}
    for field, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in lower:
                chosen[field] = lower[alias]
                break
    missing = [f for f in REQUIRED_FIELDS if f not in chosen]
    if missing:
        raise MetadataError(f"{path}: no column for {missing} (accepted names: "
                            f"{ {f: COLUMN_ALIASES[f] for f in missing} }); columns are {available}")
    return chosen


def _parse(path: str, row: int, fields: Mapping[str, Any], url_decode: bool) -> PhotoRecord | MalformedRow:
    try:
        return record_from_fields(fields, url_decode)
    except ValueError as e:
        return MalformedRow(path, row, str(e))


# ---------------------------------------------------------------------------------------------- SQLite
def read_yfcc_sqlite(path: str, start_row: int = 0, url_decode: bool = True,
                     table: str = YFCC_SQLITE_TABLE) -> Iterator[tuple[int, PhotoRecord | MalformedRow]]:
    if not os.path.isfile(path):
        raise MetadataError(f"{path}: no such file")
    con = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro", uri=True)
    try:
        names = [r[1] for r in con.execute(f"PRAGMA table_info({_quote_ident(table)})")]
        if not names:
            raise MetadataError(f"{path}: no table {table!r}")
        chosen = _resolve_columns(path, names)
        select = ", ".join(_quote_ident(c) for c in chosen.values())
        cursor = con.execute(f"SELECT {select} FROM {_quote_ident(table)} ORDER BY rowid LIMIT -1 OFFSET ?",
                             (start_row,))
        for row, values in enumerate(cursor, start=start_row + 1):
            yield row, _parse(path, row, dict(zip(chosen, values)), url_decode)
    except sqlite3.DatabaseError as e:
        raise MetadataError(f"{path}: {e}") from e
    finally:
        con.close()


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------------------------------------- parquet
def read_parquet(path: str, start_row: int = 0, url_decode: bool = False,
                 batch_size: int = 65536) -> Iterator[tuple[int, PhotoRecord | MalformedRow]]:
    """CommonCatalog-style parquet (column names as in COLUMN_ALIASES). Text is taken as already decoded."""
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        raise MetadataError(f"{path}: no such file")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise MetadataError(f"{path}: not a parquet file ({e})") from e
    chosen = _resolve_columns(path, pf.schema_arrow.names)
    import pyarrow as pa

    row = 0
    batches = pf.iter_batches(batch_size=batch_size, columns=list(dict.fromkeys(chosen.values())))
    while True:
        try:
            batch = next(batches, None)
        except (OSError, pa.ArrowException) as e:
            raise MetadataError(f"{path}: unreadable after row {row} ({type(e).__name__}: {e})") from e
        if batch is None:
            return
        if row + batch.num_rows <= start_row:
            row += batch.num_rows
            continue
        columns = {field: batch.column(source).to_pylist() for field, source in chosen.items()}
        for i in range(batch.num_rows):
            row += 1
            if row > start_row:
                yield row, _parse(path, row, {f: v[i] for f, v in columns.items()}, url_decode)


# ---------------------------------------------------------------------------------------------- dispatch
FORMATS = ("tsv", "sqlite", "parquet")


_SQLITE_MAGIC = b"SQLite format 3\x00"


def detect_format(path: str) -> str:
    """By content for SQLite (its header; YFCC100M's is named yfcc100m_dataset.sql), else by extension."""
    try:
        with open(path, "rb") as f:
            if f.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC:
                return "sqlite"
    except OSError:
        pass  # a missing file is reported by the reader
    name = path.lower()
    for ext in (".bz2", ".gz", ".xz"):
        name = name.removesuffix(ext)
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".sqlite", ".sqlite3", ".db", ".sql")):
        return "sqlite"
    return "tsv"  # YFCC100M's dump has no extension ("yfcc100m_dataset")


def read_metadata(path: str, fmt: str = "auto", start_row: int = 0, url_decode: bool | None = None,
                  sqlite_table: str = YFCC_SQLITE_TABLE) -> Iterator[tuple[int, PhotoRecord | MalformedRow]]:
    """Dispatch on format ("auto": see detect_format). url_decode defaults to True for YFCC's
    TSV and SQLite, False for parquet."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "tsv":
        return read_yfcc_tsv(path, start_row, True if url_decode is None else url_decode)
    if fmt == "sqlite":
        return read_yfcc_sqlite(path, start_row, True if url_decode is None else url_decode, sqlite_table)
    if fmt == "parquet":
        return read_parquet(path, start_row, bool(url_decode))
    raise ValueError(f"unknown metadata format {fmt!r}: expected auto or one of {FORMATS}")


# ---------------------------------------------------------------------------------------------- output
def filtered_files(path: str) -> list[str]:
    """Parquet files of a filter_metadata output: its folder, its photos/ folder, or one file."""
    if os.path.isfile(path):
        return [path]
    folder = os.path.join(path, FILTERED_METADATA_DIR)
    folder = folder if os.path.isdir(folder) else path
    if not os.path.isdir(folder):
        raise MetadataError(f"{path}: no filtered metadata here")
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".parquet"))


def iter_filtered(path: str) -> Iterator[dict[str, Any]]:
    """Rows (dicts with FILTERED_METADATA_COLUMNS) of a filter_metadata output, in order."""
    import pyarrow.parquet as pq

    for file in filtered_files(path):
        for batch in pq.ParquetFile(file).iter_batches(batch_size=65536):
            yield from batch.to_pylist()

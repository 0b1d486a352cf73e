"""Finding and reading CommonCatalog parquet as `huggingface-cli download` leaves it on disk.

    X/<0..9>/least_dim_range=<lo>-<hi>/aspect_ratio_bucket=<a>-<b>/part-000NN-tid-...-c000.parquet

(X is one repo, e.g. common-canvas/commoncatalog-cc-by.) Parts are 3-6 GB, so nothing here reads a whole
part: files are opened for their footer only, the work unit is one row group, and rows come out in
batches of a few dozen through pyarrow's iter_batches, reading only the columns in READ_COLUMNS. The
private columns `exif`, `longitude`, `latitude` and `accuracy` are never read.

Partition values exist only in the folder names; partition_values() takes them from there.
A part's `name` (repo folder/shard/partitions/file) identifies it across runs and machines; a row group
is `<name>@rg<i>`, a row `<name>@rg<i>#<row>`.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.schema import PARTITION_COLUMNS

# The 35 columns in the order and types the dataset cards publish (jpg may also be the HF image struct).
CATALOG_SCHEMA = pa.schema([
    ("jpg", pa.binary()), ("blip2_caption", pa.string()), ("caption", pa.string()),
    ("licensename", pa.string()), ("licenseurl", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("original_width", pa.int32()), ("original_height", pa.int32()),
    ("photoid", pa.int64()), ("uid", pa.string()), ("unickname", pa.string()),
    ("datetaken", pa.timestamp("us")), ("dateuploaded", pa.int64()), ("capturedevice", pa.string()),
    ("title", pa.string()), ("usertags", pa.string()), ("machinetags", pa.string()),
    ("longitude", pa.float64()), ("latitude", pa.float64()), ("accuracy", pa.int64()),
    ("pageurl", pa.string()), ("downloadurl", pa.string()), ("serverid", pa.int64()), ("farmid", pa.int64()),
    ("secret", pa.string()), ("secretoriginal", pa.string()), ("ext", pa.string()),
    ("url", pa.string()), ("key", pa.string()), ("status", pa.string()), ("error_message", pa.string()),
    ("exif", pa.string()), ("sha256", pa.string()), ("description", pa.string()),
])
HF_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
# What the stage reads; everything else (GPS, EXIF, Flickr secrets, img2dataset status) stays on disk.
READ_COLUMNS = ("jpg", "photoid", "blip2_caption", "licensename", "licenseurl", "uid", "unickname", "title",
                "description", "pageurl", "downloadurl")
PRIVATE_COLUMNS = ("exif", "longitude", "latitude", "accuracy")
assert not set(READ_COLUMNS) & set(PRIVATE_COLUMNS)


class LayoutError(ValueError):
    """An input that is not CommonCatalog parquet; the message names the file and column."""


@dataclass(frozen=True)
class Part:
    path: str
    name: str
    partitions: dict[str, str]
    row_group_rows: tuple[int, ...]
    size: int


@dataclass(frozen=True)
class Unit:
    """One row group of one part: what a rank takes on as a whole."""

    part: Part
    row_group: int
    rows: int
    first_row: int  # index of its first row in the concatenation of every unit (all ranks agree on it)

    @property
    def name(self) -> str:
        return f"{self.part.name}@rg{self.row_group}"

    def row_key(self, row: int) -> str:
        return f"{self.name}#{row}"


def find_part_files(paths: list[str]) -> list[str]:
    """Every *.parquet under each path (a part file or any folder above one), sorted, absolute."""
    found = []
    for path in paths:
        if os.path.isfile(path):
            found.append(os.path.abspath(path))
            continue
        if not os.path.isdir(path):
            raise LayoutError(f"{path}: no such file or folder")
        before = len(found)
        for root, dirs, files in os.walk(path):
            # Hidden and _-prefixed names are bookkeeping (.cache/huggingface, Spark's _SUCCESS), as Arrow treats them.
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
            found.extend(os.path.abspath(os.path.join(root, f)) for f in sorted(files)
                         if f.endswith(".parquet") and not f.startswith((".", "_")))
        if len(found) == before:
            raise LayoutError(f"{path}: no .parquet files below it (expected a CommonCatalog snapshot folder)")
    return sorted(dict.fromkeys(found))


def part_name(path: str) -> str:
    """repo/<shard>/<k=v>/.../<file>: the file plus its partition folders, the shard digit and the repo folder."""
    parts = os.path.abspath(path).split(os.sep)
    i = len(parts) - 2
    while i > 0 and "=" in parts[i]:
        i -= 1
    if i > 0 and parts[i].isdigit():
        i -= 1
    return "/".join(parts[max(i, 1):])


def partition_values(path: str) -> dict[str, str]:
    """PARTITION_COLUMNS from the Hive folder names of `path` ("" where a folder is absent)."""
    values = dict.fromkeys(PARTITION_COLUMNS, "")
    for folder in os.path.abspath(path).split(os.sep)[:-1]:
        key, sep, value = folder.partition("=")
        if sep and key in values:
            values[key] = value
    return values


def _check_schema(path: str, schema: pa.Schema) -> None:
    missing = [c for c in READ_COLUMNS if c not in schema.names]
    if missing:
        raise LayoutError(f"{path}: missing column(s) {missing}: not a CommonCatalog part (has {schema.names})")
    jpg = schema.field("jpg").type
    if not (pa.types.is_binary(jpg) or pa.types.is_large_binary(jpg)
            or (pa.types.is_struct(jpg) and jpg.get_field_index("bytes") >= 0)):
        raise LayoutError(f"{path}: column 'jpg' is {jpg}, expected binary or the image struct {{bytes, path}}")
    if not pa.types.is_integer(schema.field("photoid").type):
        raise LayoutError(f"{path}: column 'photoid' is {schema.field('photoid').type}, expected int64")


def open_parts(paths: list[str]) -> list[Part]:
    """The parts under `paths` with their row-group sizes (footers only), schema-checked."""
    parts, names = [], {}
    for path in find_part_files(paths):
        try:
            meta = pq.ParquetFile(path).metadata
            schema = meta.schema.to_arrow_schema()
        except (OSError, pa.ArrowException) as exc:
            raise LayoutError(f"{path}: not a readable parquet file ({exc})") from exc
        _check_schema(path, schema)
        name = part_name(path)
        if name in names:
            raise LayoutError(f"{path} and {names[name]} have the same name {name!r}: pass each snapshot once")
        names[name] = path
        rows = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        parts.append(Part(path, name, partition_values(path), rows, os.path.getsize(path)))
    return parts


def units_of(parts: list[Part]) -> list[Unit]:
    units, first = [], 0
    for part in parts:
        for rg, rows in enumerate(part.row_group_rows):
            units.append(Unit(part, rg, rows, first))
            first += rows
    return units


def read_photo_ids(unit: Unit) -> np.ndarray:
    """The unit's photoid column as int64, -1 where null (a footer plus one small column chunk)."""
    column = pq.ParquetFile(unit.part.path).read_row_group(unit.row_group, columns=["photoid"]).column(0)
    return column.cast(pa.int64()).fill_null(-1).to_numpy()


def duplicate_rows(units: list[Unit]) -> set[int]:
    """Global indices (Unit.first_row + row) of every row whose photo id an EARLIER row already has.

    Every rank computes the same set from the photoid columns alone, so a photo id is kept at most once
    across all ranks without them talking, and a resumed run makes the same choice."""
    if not units:
        return set()
    ids = np.concatenate([read_photo_ids(u) for u in units])
    ordered = np.sort(ids)
    repeated = np.unique(ordered[1:][(ordered[1:] == ordered[:-1]) & (ordered[1:] >= 0)])
    del ordered
    if not len(repeated):
        return set()
    where = np.nonzero(np.isin(ids, repeated))[0]  # ascending, so the first of each id comes first
    _, first = np.unique(ids[where], return_index=True)
    return set(where.tolist()) - set(where[first].tolist())


def iter_rows(unit: Unit, batch_rows: int = 64) -> Iterator[list[dict]]:
    """The unit's rows as lists of dicts of READ_COLUMNS, `batch_rows` at a time; jpg as bytes (or None)."""
    pf = pq.ParquetFile(unit.part.path)
    for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[unit.row_group], columns=list(READ_COLUMNS),
                                 use_threads=False):
        jpg = batch.column("jpg")
        if pa.types.is_struct(jpg.type):
            jpg = jpg.field("bytes")  # the HF image struct; a null struct gives a null value here
        rows = batch.drop_columns(["jpg"]).to_pylist()
        for row, data in zip(rows, jpg.to_pylist()):
            row["jpg"] = data
        yield rows


def catalog_table(rows: list[dict], jpg_struct: bool = False) -> pa.Table:
    """A table in CATALOG_SCHEMA from partial rows (absent columns null); with jpg_struct, `jpg` is the HF
    image struct and each row's jpg may be bytes or {"bytes", "path"}. For tests and benchmarks."""
    schema = CATALOG_SCHEMA
    if jpg_struct:
        schema = schema.set(0, pa.field("jpg", HF_IMAGE_TYPE))
        rows = [{**r, "jpg": r["jpg"] if isinstance(r.get("jpg"), dict) or r.get("jpg") is None
                 else {"bytes": r["jpg"], "path": None}} for r in rows]
    return pa.Table.from_pylist([{name: r.get(name) for name in schema.names} for r in rows], schema=schema)

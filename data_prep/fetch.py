"""Fetch stage: filtered metadata -> MDS of checked RGB images with every attribution field.

    python -m data_prep.fetch METADATA OUT_DIR [--max-side 1024 --workers 16 --timeout 10 --retries 3
                                                --max-bytes 50000000 --bucket-by-resolution]

METADATA is the folder data_prep.filter_metadata writes (photos/*.parquet + manifest.json, which this
stage's manifest embeds), a parquet file, or JSON lines: one row per photo with ``photo_id``,
``download_url``, ``license`` and the attribution columns of ``schema.FETCH_COLUMNS``. Each row ends
up either as a sample (schema.FETCH_COLUMNS: the image plus its attribution, original size and the
sha256 of the downloaded bytes; the image re-encoded as JPEG at --jpeg-quality, which also strips
the source's EXIF) or as a skip with a reason (``http_404``, ``timeout``, ``too_large``,
``truncated``, ``duplicate_sha256``, ...); manifest.json counts both per license and per reason.

Layout of OUT_DIR:
    plain:                     OUT_DIR is one streaming dataset (skips are recorded beside the samples).
    --bucket-by-resolution:    OUT_DIR/short_<lo>_<hi>/ is one streaming dataset per band of the
                               original short side (e.g. train a 512px stage on short_512_* only);
                               OUT_DIR/dropped/ holds the ledger of skipped rows.

Ranks (RANK/WORLD_SIZE, or torch.distributed) each fetch their contiguous share of the rows; a re-run
skips every row any rank already finished (data_prep.shards), so a killed run is simply started again.
OUT_DIR is fingerprinted (data_prep.fingerprint: the metadata's content or its filter run's fingerprint, and
the flags that decide the images): a re-run with other metadata or flags is refused; --overwrite starts over.
Duplicate images (same sha256 of the downloaded bytes) are dropped within a rank's run and against
everything finished before it started; two ranks fetching the same bytes in one run both keep theirs.
Local files: with --allow-local, ``download_url`` may be a path (relative paths resolve against the
metadata file's folder) or a file:// URL.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass

from PIL import Image
from tqdm import tqdm

from data_prep import fingerprint, shards
from data_prep.download import DownloadConfig, Downloader, map_unordered
from data_prep.images import DEFAULT_MAX_PIXELS, ImageConfig, ImageSkip, configure_pillow, encode_jpeg, process_image
from data_prep.schema import ATTRIBUTION_COLUMNS, FETCH_COLUMNS, FILTERED_METADATA_DIR, IMAGE

log = logging.getLogger(__name__)

STAGE = "fetch"
KEY = "photo_id"
# Text columns copied from the metadata row; sizes and sha256 are measured here.
METADATA_COLUMNS = [c for c, enc in ATTRIBUTION_COLUMNS.items() if enc == "str" and c != "sha256"]
REQUIRED_COLUMNS = (KEY, "download_url", "license")
DROPPED_DIR = "dropped"
DEFAULT_BUCKET_EDGES = (256, 512, 1024)
# Downscaling filters: Lanczos is the sharpest, bicubic and bilinear cost less CPU (benchmarks/fetch_throughput).
RESAMPLE = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC,
            "bilinear": Image.Resampling.BILINEAR}


class FetchInputError(ValueError):
    """Bad input (metadata file, or an OUT_DIR written with other settings); the message names it."""


class MetadataError(FetchInputError):
    """Bad metadata file; the message names the file and the row or column."""


# ---------------------------------------------------------------------------------------------- input
def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _row_of(raw: dict) -> dict:
    return {col: _text(raw.get(col)) for col in METADATA_COLUMNS}


def read_metadata(path: str, rank: int = 0, world: int = 1) -> list[dict]:
    """This rank's share of the metadata rows (text columns of METADATA_COLUMNS), checked for the
    required columns and for unique, non-empty photo ids across the WHOLE input.

    ``path``: a filter_metadata output folder (its photos/*.parquet), a folder of parquet files, one
    .parquet file, or a .jsonl file (one JSON object per line, for hand-made or local datasets)."""
    if os.path.isdir(path):
        folder = os.path.join(path, FILTERED_METADATA_DIR)
        folder = folder if os.path.isdir(folder) else path
        files = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".parquet"))
        if not files:
            raise MetadataError(f"{path}: no .parquet files (expected a filter_metadata output folder)")
        return _read_parquet(files, rank, world)
    if not os.path.isfile(path):
        raise MetadataError(f"{path}: no such file or folder")
    if path.endswith(".parquet"):
        return _read_parquet([path], rank, world)
    if path.endswith((".jsonl", ".json", ".ndjson")):
        return _read_jsonl(path, rank, world)
    raise MetadataError(f"{path}: unknown metadata format (expected .parquet, .jsonl or a folder of parquet)")


def _check_ids(sources: list[tuple[str, list[str]]]) -> None:
    """Raise naming the file and row of the first empty or repeated photo id."""
    first: dict[str, str] = {}
    for path, ids in sources:
        for row, key in enumerate(ids):
            if not key:
                raise MetadataError(f"{path} row {row}: empty {KEY}")
            if key in first:
                raise MetadataError(f"{path} row {row}: {KEY} {key!r} repeats {first[key]}")
            first[key] = f"row {row}" if len(sources) == 1 else f"{path} row {row}"


def _read_parquet(files: list[str], rank: int, world: int) -> list[dict]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    columns, ids, sizes = [], [], []
    for path in files:
        try:
            names = pq.read_schema(path).names
            missing = [c for c in REQUIRED_COLUMNS if c not in names]
            if missing:
                raise MetadataError(f"{path}: missing columns {missing} (has {names})")
            columns.append([c for c in METADATA_COLUMNS if c in names])
            ids.append(pc.cast(pq.read_table(path, columns=[KEY]).column(KEY), pa.string()))
        except (OSError, pa.ArrowException) as exc:
            raise MetadataError(f"{path}: not a readable parquet file ({exc})") from exc
        sizes.append(len(ids[-1]))
    # The id check runs in Arrow (a few hundred MB for YFCC's 25M rows); Python only to name the culprit.
    all_ids = pa.chunked_array([c for col in ids for c in col.chunks], pa.string())
    if (all_ids.null_count or pc.any(pc.equal(all_ids, "")).as_py()
            or pc.count_distinct(all_ids).as_py() != len(all_ids)):
        _check_ids([(path, [_text(v) for v in col.to_pylist()]) for path, col in zip(files, ids)])

    share = shards.shard_for_rank(range(sum(sizes)), rank, world)
    rows, offset = [], 0
    for path, cols, size in zip(files, columns, sizes):
        lo, hi = max(share.start, offset), min(share.stop, offset + size)
        if lo < hi:
            table = pq.read_table(path, columns=cols).slice(lo - offset, hi - lo)
            rows.extend(_row_of(raw) for raw in table.to_pylist())
        offset += size
    return rows


def _read_jsonl(path: str, rank: int, world: int) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MetadataError(f"{path} line {line_no}: not JSON ({exc.msg})") from exc
            if not isinstance(raw, dict):
                raise MetadataError(f"{path} line {line_no}: expected a JSON object")
            missing = [c for c in REQUIRED_COLUMNS if c not in raw]
            if missing:
                raise MetadataError(f"{path} line {line_no}: missing columns {missing}")
            rows.append(_row_of(raw))
    _check_ids([(path, [r[KEY] for r in rows])])
    return shards.shard_for_rank(rows, rank, world)


# ---------------------------------------------------------------------------------------------- buckets
def bucket_name(short_side: int, edges: tuple[int, ...]) -> str:
    """Name of the band of ``edges`` that holds ``short_side``, e.g. short_512_1024 or short_1024_up."""
    lo = 0
    for hi in sorted(edges):
        if short_side < hi:
            return f"short_{lo}_{hi}"
        lo = hi
    return f"short_{lo}_up"


# ---------------------------------------------------------------------------------------------- work
@dataclass
class Fetched:
    row: dict
    jpeg: bytes | None = None  # the image to store, already encoded (in the worker thread, not the writer's)
    orig_width: int = 0
    orig_height: int = 0
    sha256: str = ""
    reason: str | None = None
    detail: str = ""


class FetchWorker:
    """Download, decode, resize and JPEG-encode one row; runs in the thread pool (Pillow and sockets
    release the GIL, so threads scale)."""

    def __init__(self, downloader: Downloader, image_config: ImageConfig, jpeg_quality: int,
                 local_root: str | None):
        self.downloader = downloader
        self.image_config = image_config
        self.jpeg_quality = jpeg_quality
        self.local_root = local_root

    def resolve(self, url: str) -> str:
        if self.local_root and "://" not in url and not os.path.isabs(url):
            return os.path.join(self.local_root, url)
        return url

    def __call__(self, row: dict) -> Fetched:
        if not row["download_url"]:
            return Fetched(row, reason="no_url")
        download = self.downloader.fetch(self.resolve(row["download_url"]))
        if not download.ok:
            return Fetched(row, reason=download.reason, detail=download.detail)
        try:
            image = process_image(download.data, self.image_config)
        except ImageSkip as skip:
            return Fetched(row, reason=skip.reason, detail=skip.detail)
        return Fetched(row, jpeg=encode_jpeg(image.image, self.jpeg_quality), orig_width=image.orig_width,
                       orig_height=image.orig_height, sha256=image.sha256)


def make_sample(fetched: Fetched) -> dict:
    """The FETCH_COLUMNS sample; the JPEG goes in as Encoded bytes, so the MDS writer stores them as they
    are instead of re-compressing at streaming's fixed quality 75."""
    return {IMAGE: shards.Encoded(FETCH_COLUMNS[IMAGE], fetched.jpeg), **fetched.row,
            "orig_width": fetched.orig_width, "orig_height": fetched.orig_height, "sha256": fetched.sha256}


class FetchOutput:
    """Where samples and skips go: one writer, or one per resolution bucket plus one for skips."""

    def __init__(self, out_dir: str, rank: int, bucket_edges: tuple[int, ...] | None, writer_kwargs: dict):
        self.out_dir = out_dir
        self.rank = rank
        self.bucket_edges = bucket_edges
        self.writer_kwargs = writer_kwargs
        self.writers: dict[str, shards.ResumableMDSWriter] = {}
        if bucket_edges is None:
            self._writer("")
        else:
            self._writer(DROPPED_DIR)
            for name in sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []:
                if name.startswith("short_"):  # reopen buckets of earlier runs so their keys count as done
                    self._writer(name)

    def _writer(self, sub: str) -> shards.ResumableMDSWriter:
        if sub not in self.writers:
            self.writers[sub] = shards.ResumableMDSWriter(
                os.path.join(self.out_dir, sub) if sub else self.out_dir, FETCH_COLUMNS, rank=self.rank,
                key_column=KEY, **self.writer_kwargs)
        return self.writers[sub]

    def done_keys(self) -> set[str]:
        return set().union(*(w.done_keys() for w in self.writers.values()))

    def finished_sha256(self) -> dict[str, str]:
        """sha256 -> key of every sample in finished parts, so a resumed run still drops duplicates."""
        seen = {}
        for writer in self.writers.values():
            for key, sample in shards.iter_finished(writer.out_dir, ["sha256"], key_column=KEY):
                seen.setdefault(sample["sha256"], key)
        return seen

    def write(self, key: str, sample: dict) -> str:
        sub = "" if self.bucket_edges is None else bucket_name(
            min(sample["orig_width"], sample["orig_height"]), self.bucket_edges)
        self._writer(sub).write(key, sample)
        return sub

    def skip(self, key: str, reason: str, license: str) -> None:
        self._writer("" if self.bucket_edges is None else DROPPED_DIR).skip(key, reason, license=license)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def dataset_dirs(out_dir: str, bucketed: bool) -> list[str]:
    """Folders of OUT_DIR that are (or will be, once merged) streaming datasets."""
    if not bucketed:
        return [out_dir]
    return [os.path.join(out_dir, n) for n in sorted(os.listdir(out_dir)) if n.startswith("short_")]


def add_counts(counts: list[dict]) -> dict:
    """Sum of several shards.part_counts / ResumableMDSWriter.counts dicts."""
    total: dict = {"written": 0, "skipped": {}, "written_per_license": {}, "skipped_per_license": {}}
    for c in counts:
        total["written"] += c["written"]
        for field in ("skipped", "written_per_license", "skipped_per_license"):
            for name, n in c[field].items():
                total[field][name] = total[field].get(name, 0) + n
    return total


# ---------------------------------------------------------------------------------------------- stage
@dataclass
class FetchConfig:
    max_side: int | None = 1024
    min_side: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    # 90: a usual choice for training images; ~2.5x the bytes of streaming's fixed 75 on the benchmark's photos.
    jpeg_quality: int = 90
    resample: str = "lanczos"  # a key of RESAMPLE
    workers: int = 16
    timeout: float = 10.0
    connect_timeout: float = 5.0
    retries: int = 3
    backoff: float = 0.5
    max_bytes: int = 50 * 2**20
    allow_local: bool = False
    allow_private_addresses: bool = False  # refuse loopback/private/link-local/multicast hosts unless set
    honor_robots_tag: bool = True  # skip responses whose X-Robots-Tag says noai / noimageai
    bucket_edges: tuple[int, ...] | None = None  # None: one dataset; else bands of the original short side
    part_size: int = 1000
    compression: str | None = None  # JPEG bytes do not compress; kept for other codecs
    size_limit: str = "256mb"
    limit: int | None = None  # only the first N rows of this rank's share (smoke runs)
    progress: bool = True
    overwrite: bool = False  # start OUT_DIR over when it was made from other metadata or flags


# The flags that decide what OUT_DIR holds; workers, timeouts, retries, part size, --limit only decide how fast
# or how much of it is done, so a resume may change them.
FINGERPRINT_FLAGS = ("max_side", "min_side", "max_pixels", "jpeg_quality", "resample", "max_bytes", "allow_local",
                     "bucket_edges", "honor_robots_tag")


def fingerprint_record(metadata: str, config: FetchConfig) -> dict:
    flags = {name: getattr(config, name) for name in FINGERPRINT_FLAGS}
    return fingerprint.make(STAGE, [metadata], flags)


def run_fetch(metadata: str, out_dir: str, config: FetchConfig, rank: int | None = None,
              world: int | None = None) -> dict:
    """Fetch this rank's share of ``metadata`` into ``out_dir``; on rank 0 also merge and write the
    manifest. Returns this rank's counts (written / skipped per reason / per license)."""
    if rank is None or world is None:
        rank, world = shards.get_rank_world()
    rows = read_metadata(metadata, rank, world)
    if config.limit is not None:
        rows = rows[: config.limit]

    downloader = Downloader(DownloadConfig(
        connect_timeout=config.connect_timeout, read_timeout=config.timeout, retries=config.retries,
        backoff=config.backoff, max_bytes=config.max_bytes, allow_local=config.allow_local,
        allow_private_addresses=config.allow_private_addresses, honor_robots_tag=config.honor_robots_tag))
    image_config = ImageConfig(max_side=config.max_side, min_side=config.min_side, max_pixels=config.max_pixels,
                               resample=RESAMPLE[config.resample])
    local_root = os.path.dirname(os.path.abspath(metadata)) if config.allow_local else None
    worker = FetchWorker(downloader, image_config, config.jpeg_quality, local_root)

    record = fingerprint_record(metadata, config)
    try:  # a re-run with re-filtered metadata (a photo opted out since) must not keep what it now excludes
        fingerprint.prepare_output(out_dir, record, overwrite=config.overwrite, rank=rank, world=world,
                                   extra_patterns=("short_*", DROPPED_DIR))
    except fingerprint.FingerprintMismatch as exc:
        raise FetchInputError(f"{exc} (to drop newly opted-out photos from finished shards, run "
                              f"python -m data_prep.optout instead)") from exc
    try:
        output = FetchOutput(out_dir, rank, config.bucket_edges, dict(
            part_size=config.part_size, compression=config.compression, size_limit=config.size_limit))
    except ValueError as exc:  # e.g. OUT_DIR holds parts written with other columns
        raise FetchInputError(f"{out_dir}: {exc}") from exc
    try:
        done = output.done_keys()
        todo = [row for row in rows if row[KEY] not in done]
        seen_sha256 = output.finished_sha256() if done else {}
        bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=f"fetch rank {rank}", unit="img",
                   disable=not config.progress, smoothing=0.05)
        kept = dropped = 0
        for result in map_unordered(worker, todo, config.workers):
            key, license_ = result.row[KEY], result.row["license"]
            reason = result.reason
            if reason is None and result.sha256 in seen_sha256:
                reason = "duplicate_sha256"
                result.detail = f"same bytes as {seen_sha256[result.sha256]}"
            if reason is None:
                seen_sha256[result.sha256] = key
                output.write(key, make_sample(result))
                kept += 1
            else:
                log.debug("skip %s: %s %s", key, reason, result.detail)
                output.skip(key, reason, license_)
                dropped += 1
            bar.update(1)
            if bar.n % 64 == 0:
                bar.set_postfix(kept=kept, dropped=dropped, refresh=False)
        bar.set_postfix(kept=kept, dropped=dropped)
        bar.close()
    finally:
        output.close()
    rank_counts = add_counts([w.counts() for w in output.writers.values()])

    shards.barrier()
    if rank == 0:
        finalize(metadata, out_dir, config, record)
    return rank_counts


def finalize(metadata: str, out_dir: str, config: FetchConfig, record: dict | None = None) -> str:
    """Merge every rank's parts into index.json (per bucket when bucketed) and write manifest.json."""
    bucketed = config.bucket_edges is not None
    per_dataset = {}
    for d in dataset_dirs(out_dir, bucketed):
        per_dataset[os.path.relpath(d, out_dir)] = shards.merge_ranks(d)
    counted = dataset_dirs(out_dir, bucketed) + ([os.path.join(out_dir, DROPPED_DIR)] if bucketed else [])
    counts = add_counts([shards.part_counts(d) for d in counted])
    if bucketed:
        counts["written_per_bucket"] = per_dataset
    flags = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()
             if k not in ("progress", "overwrite")}
    return shards.write_manifest(out_dir, STAGE, [metadata], counts, flags,
                                 fingerprint=record if record is not None else fingerprint.read(out_dir))


# ---------------------------------------------------------------------------------------------- CLI
def _size(text: str) -> int:
    """Bytes from '52428800', '50mb', '1.5GiB'."""
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    stripped = text.strip().lower()
    number = stripped.rstrip("kmgibB")
    unit = stripped[len(number):]
    if unit not in units:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use bytes or a kb/mb/gb/kib/mib/gib suffix")
    try:
        return int(float(number) * units[unit])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad size {text!r}") from exc


def _edges(text: str) -> tuple[int, ...]:
    try:
        edges = tuple(sorted(int(x) for x in text.split(",") if x.strip()))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad bucket edges {text!r}: want e.g. 256,512,1024") from exc
    if not edges or edges[0] <= 0:
        raise argparse.ArgumentTypeError(f"bad bucket edges {text!r}: want positive integers")
    return edges


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep.fetch", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("metadata", help="data_prep.filter_metadata output folder, a .parquet file or a .jsonl file")
    p.add_argument("out_dir", help="output folder (created; re-running continues where it stopped)")
    p.add_argument("--max-side", type=int, default=1024, help="shrink so the SHORT side is at most this; 0 keeps size")
    p.add_argument("--min-side", type=int, default=0, help="drop images whose original short side is smaller")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="decompression-bomb limit (w*h)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="quality of the stored (re-encoded) JPEGs")
    p.add_argument("--resample", choices=sorted(RESAMPLE), default="lanczos", help="downscaling filter")
    p.add_argument("--workers", type=int, default=16, help="download/decode threads")
    p.add_argument("--timeout", type=float, default=10.0, help="read timeout per request, seconds")
    p.add_argument("--connect-timeout", type=float, default=5.0, help="connect timeout, seconds")
    p.add_argument("--retries", type=int, default=3, help="retries on 5xx/timeouts/dropped connections")
    p.add_argument("--backoff", type=float, default=0.5, help="first retry delay, seconds (doubles each retry)")
    p.add_argument("--max-bytes", type=_size, default=50 * 2**20, help="largest download, e.g. 50mib")
    p.add_argument("--allow-local", action="store_true",
                   help="download_url may be a local path (relative to the metadata file) or file:// URL")
    p.add_argument("--allow-private-addresses", action="store_true",
                   help="allow hosts that resolve to loopback/private/link-local/multicast addresses (refused by "
                        "default, on every redirect hop, so a crafted URL cannot reach a node's internal services)")
    p.add_argument("--ignore-robots-tag", action="store_true",
                   help="also keep images whose X-Robots-Tag says noai / noimageai (skipped by default)")
    p.add_argument("--bucket-by-resolution", action="store_true",
                   help="one streaming dataset per band of original short side under OUT_DIR/short_<lo>_<hi>")
    p.add_argument("--bucket-edges", type=_edges, default=DEFAULT_BUCKET_EDGES,
                   help="comma-separated short-side band edges for --bucket-by-resolution")
    p.add_argument("--part-size", type=int, default=1000, help="rows per resumable part (the most a kill loses)")
    p.add_argument("--size-limit", default="256mb", help="MDS shard file size limit")
    p.add_argument("--compression", default=None, help="MDS shard compression (JPEGs gain nothing from it)")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows of each rank's share")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--overwrite", action="store_true",
                   help="start OUT_DIR over when it was made from other metadata or flags (else refused)")
    return p


def config_from_args(args: argparse.Namespace) -> FetchConfig:
    return FetchConfig(
        max_side=args.max_side or None, min_side=args.min_side, max_pixels=args.max_pixels,
        jpeg_quality=args.jpeg_quality, resample=args.resample, workers=args.workers, timeout=args.timeout,
        connect_timeout=args.connect_timeout, retries=args.retries,
        backoff=args.backoff, max_bytes=args.max_bytes, allow_local=args.allow_local,
        allow_private_addresses=args.allow_private_addresses, honor_robots_tag=not args.ignore_robots_tag,
        bucket_edges=args.bucket_edges if args.bucket_by_resolution else None, part_size=args.part_size,
        compression=args.compression, size_limit=args.size_limit, limit=args.limit, progress=not args.no_progress,
        overwrite=args.overwrite)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    if config.workers < 1 or config.part_size < 1 or config.retries < 0 or not 1 <= config.jpeg_quality <= 100:
        parser.error("--workers and --part-size must be >= 1, --retries >= 0, --jpeg-quality in 1..100")
    configure_pillow(config.max_pixels)
    try:
        counts = run_fetch(args.metadata, args.out_dir, config)
    except FetchInputError as exc:
        print(f"fetch: error: {exc}", file=sys.stderr)
        return 2
    skipped = sum(counts["skipped"].values())
    print(f"fetch: this rank's output now holds {counts['written']} images and {skipped} skipped rows "
          f"{dict(sorted(counts['skipped'].items()))}; manifest: {os.path.join(args.out_dir, 'manifest.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CommonCatalog ingest: the released parquet (JPEG bytes + BLIP-2 captions inside) -> MDS shards ready for
data_prep.precompute_latents, with no download and no caption stage.

    python -m data_prep.commoncatalog SNAPSHOT [SNAPSHOT ...] --split C|NC --out OUT
                                      [--optout FILE] [--min-side N] [--max-side N]

SNAPSHOT: a local copy of a common-canvas/commoncatalog-* dataset repo as `huggingface-cli download ...
--repo-type dataset --local-dir X` leaves it, any folder below it, or one part file (see
data_prep.commoncatalog_layout). Each row is checked again here, whatever repo it came from:

  * license from its own licenseurl/licensename (data_prep.licenses; the repo's name is not trusted),
    dropped unless in --split;  * the opt-out list (--optout, the format data_prep.filter_metadata reads);
  * duplicates: a photo id seen in an earlier row (all inputs, in order: every rank agrees) and an image
    whose sha256 the same rank already wrote (two ranks holding the same bytes both keep theirs);  * the fetch stage's image checks (data_prep.images: decode, decompression-bomb
    limit, truncated/corrupt, RGB, EXIF orientation, --min-side, optional --max-side shrink).

Output columns: schema.COMMONCATALOG_COLUMNS: the fetch stage's (image + attribution, license normalised,
title/description as the catalog stores them, orig_* = the catalog image's size upright, sha256 of the
catalog's bytes), blip2_caption, and the part's partition values. Privacy: the image is stored re-encoded
after EXIF orientation is applied, so it carries no EXIF/XMP/GPS/comment; the exif, longitude, latitude
and accuracy columns are never read.

Ranks (RANK/WORLD_SIZE or torch.distributed) each take a contiguous block of row groups; rank 0 merges
and writes manifest.json (counts kept/dropped per license and per reason, every input part). Resumable:
re-run the same command after a kill (data_prep.shards); OUT remembers its inputs and flags
(commoncatalog_state.json) and refuses a run with others.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from tqdm import tqdm

from data_prep import shards
from data_prep.commoncatalog_layout import LayoutError, Unit, duplicate_rows, iter_rows, open_parts, read_photo_ids, \
    units_of
from data_prep.fetch import RESAMPLE
from data_prep.images import DEFAULT_MAX_PIXELS, ImageConfig, ImageSkip, configure_pillow, encode_jpeg, process_image
from data_prep.json_records import changed_settings, read_settings, write_json_atomic
from data_prep.licenses import License, classify_license, split_licenses
from data_prep.optout import OptOutList, OptOutListError, add_optout_args
from data_prep.schema import BLIP2_CAPTION, COMMONCATALOG_COLUMNS, IMAGE, PARTITION_COLUMNS

log = logging.getLogger(__name__)

STAGE = "commoncatalog"
STATE_FILE = "commoncatalog_state.json"
KEY = "photo_id"


class CatalogInputError(ValueError):
    """Bad input or an OUT written from other inputs/flags; printed as one line, exit 2."""


@dataclass
class CatalogConfig:
    split: str = "C"
    optout: str | None = None
    alias_map: str | None = None  # alias,nsid lines for opt-out entries that name an author by alias
    skip_unresolvable: bool = False
    include_public_domain: bool = False
    min_side: int = 0
    max_side: int | None = None  # None keeps the catalog's size
    max_pixels: int = DEFAULT_MAX_PIXELS
    jpeg_quality: int = 90
    resample: str = "lanczos"
    workers: int = min(8, os.cpu_count() or 1)
    batch_rows: int = 64
    part_size: int = 1000
    size_limit: str = "256mb"
    progress: bool = True


def _text(value) -> str:
    return "" if value is None else str(value)


class RowChecker:
    """The keep/drop decision for one catalog row before its image is decoded; no I/O."""

    def __init__(self, config: CatalogConfig, optout: OptOutList | None):
        self.allowed = split_licenses(config.split, config.include_public_domain)
        self.optout = optout

    def check(self, row: dict, duplicate: bool) -> tuple[License | None, str | None]:
        """(license or None, drop reason or None)."""
        lic, how = classify_license(row["licenseurl"], row["licensename"])
        if duplicate:
            return lic, "duplicate_photo_id"
        if row["photoid"] is None:
            return lic, "no_photo_id"
        if lic not in self.allowed:
            return lic, f"license_{how}" if lic == License.UNKNOWN else "license_not_in_split"
        if not row["pageurl"]:
            return lic, "no_page_url"  # attribution needs a link back to the photo
        if self.optout is not None and self.optout.match(str(row["photoid"]), _text(row["uid"]),
                                                         _text(row["pageurl"]), _text(row["downloadurl"])):
            return lic, "opted_out"
        if not (row["blip2_caption"] or "").strip():
            return lic, "no_caption"
        return lic, None


class ImageWorker:
    """Checks and re-encodes one catalog image (runs in the thread pool: Pillow releases the GIL)."""

    def __init__(self, config: CatalogConfig):
        self.image_config = ImageConfig(max_side=config.max_side, min_side=config.min_side,
                                        max_pixels=config.max_pixels, resample=RESAMPLE[config.resample])
        self.quality = config.jpeg_quality

    def __call__(self, data: bytes | None) -> tuple[bytes, int, int, str] | ImageSkip:
        try:
            image = process_image(data or b"", self.image_config)
        except ImageSkip as skip:
            return skip
        # Re-encoding after exif_transpose is what strips EXIF/XMP/GPS (images.encode_jpeg).
        return encode_jpeg(image.image, self.quality), image.orig_width, image.orig_height, image.sha256


def make_sample(row: dict, lic: License, partitions: dict, image: tuple[bytes, int, int, str]) -> dict:
    jpeg, width, height, sha256 = image
    return {
        IMAGE: shards.Encoded(COMMONCATALOG_COLUMNS[IMAGE], jpeg), KEY: str(row["photoid"]),
        "title": _text(row["title"]), "description": _text(row["description"]),
        "author_name": _text(row["unickname"]), "author_id": _text(row["uid"]),
        "page_url": _text(row["pageurl"]), "download_url": _text(row["downloadurl"]),
        "license": str(lic), "license_name": _text(row["licensename"]), "license_url": _text(row["licenseurl"]),
        "orig_width": width, "orig_height": height, "sha256": sha256,
        BLIP2_CAPTION: _text(row["blip2_caption"]), **{c: partitions[c] for c in PARTITION_COLUMNS},
    }


def row_keys(unit: Unit, duplicates: set[int]) -> list[str]:
    """Ledger key of each row: its photo id, or where that is not unique (a repeat) or absent, its place."""
    return [unit.row_key(i) if pid < 0 or unit.first_row + i in duplicates else str(pid)
            for i, pid in enumerate(read_photo_ids(unit).tolist())]


class UnitIngest:
    """Writes the rows of row groups through one rank's writer, in row order, so a resumed run, which
    rebuilds `seen_sha256` from this rank's finished parts, makes exactly the choices an uninterrupted one
    does. Only this rank's own images count as seen: other ranks' parts appear at times that depend on the
    machine, and what a rank keeps must not."""

    def __init__(self, writer: shards.ResumableMDSWriter, checker: RowChecker, worker: ImageWorker,
                 pool: ThreadPoolExecutor, duplicates: set[int], batch_rows: int, bar: tqdm):
        self.writer, self.checker, self.worker, self.pool = writer, checker, worker, pool
        self.duplicates, self.batch_rows, self.bar = duplicates, batch_rows, bar
        self.done = writer.done_keys()
        self.seen_sha256 = {s["sha256"]: k for k, s in shards.iter_finished(writer.out_dir, ["sha256"],
                                                                             rank=writer.rank)}

    def __call__(self, unit: Unit) -> None:
        keys = row_keys(unit, self.duplicates)
        if all(k in self.done for k in keys):  # finished before a restart: not even the images are read
            self.bar.update(unit.rows)
            return
        start = 0
        for rows in iter_rows(unit, self.batch_rows):
            todo = []
            for i, row in enumerate(rows, start):
                if keys[i] not in self.done:
                    todo.append((keys[i], row, *self.checker.check(row, unit.first_row + i in self.duplicates)))
            images = self.pool.map(self.worker, [row["jpg"] for _, row, _, reason in todo if reason is None])
            for key, row, lic, reason in todo:  # map() keeps row order
                self._record(key, row, lic, reason, None if reason else next(images), unit)
            self.bar.update(len(rows))
            start += len(rows)

    def _record(self, key, row, lic, reason, image, unit: Unit) -> None:
        if reason is None and isinstance(image, ImageSkip):
            reason = image.reason
        if reason is None and image[3] in self.seen_sha256:
            reason = "duplicate_sha256"
        lic_name = str(lic) if lic is not None else None
        if reason is not None:
            self.writer.skip(key, reason, license=lic_name)
            return
        self.seen_sha256[image[3]] = key
        self.writer.write(key, make_sample(row, lic, unit.part.partitions, image))


def _check_state(out_dir: str, state: dict, rank: int) -> None:
    """Refuse to continue an OUT made from other input files or flags (else two datasets would mix)."""
    path = os.path.join(out_dir, STATE_FILE)
    previous = read_settings(path)
    if previous is None:
        write_json_atomic(path, state, tmp_suffix=f".tmp{rank}")
    elif changed_settings(previous, state):
        raise CatalogInputError(f"{out_dir} was written from other {' and '.join(changed_settings(previous, state))}"
                                f" ({path}); use a new --out")


def run_commoncatalog(snapshots: list[str], out_dir: str, config: CatalogConfig, rank: int | None = None,
                      world: int | None = None) -> dict:
    """Ingest this rank's row groups of `snapshots` into `out_dir`; rank 0 then merges and writes the
    manifest. Returns this rank's counts (shards.ResumableMDSWriter.counts), plus merged_samples on rank 0."""
    if rank is None or world is None:
        rank, world = shards.get_rank_world()
    try:
        parts = open_parts(snapshots)
        optout = OptOutList.load(config.optout, alias_map=config.alias_map,
                                  skip_unresolvable=config.skip_unresolvable) if config.optout else None
    except (LayoutError, OptOutListError) as exc:
        raise CatalogInputError(str(exc)) from exc
    units = units_of(parts)
    flags = {k: v for k, v in asdict(config).items() if k not in ("workers", "progress", "batch_rows")}
    flags["optout_sha256"] = optout.sha256 if optout else None
    inputs = [{"name": p.name, "bytes": p.size, "rows": sum(p.row_group_rows)} for p in parts]
    os.makedirs(out_dir, exist_ok=True)
    _check_state(out_dir, {"inputs": inputs, "flags": flags}, rank)

    duplicates = duplicate_rows(units)
    mine = shards.shard_for_rank(units, rank, world)
    bar = tqdm(total=sum(u.rows for u in mine), desc=f"commoncatalog rank {rank}", unit="row",
               disable=not config.progress, smoothing=0.05)
    with shards.ResumableMDSWriter(out_dir, COMMONCATALOG_COLUMNS, rank=rank, part_size=config.part_size,
                                   size_limit=config.size_limit, key_column=KEY) as writer, \
            ThreadPoolExecutor(config.workers) as pool:
        ingest = UnitIngest(writer, RowChecker(config, optout), ImageWorker(config), pool, duplicates,
                            config.batch_rows, bar)
        for unit in mine:
            ingest(unit)
        counts = writer.counts()
    bar.close()

    shards.barrier()
    if rank == 0:
        counts["merged_samples"] = shards.merge_ranks(out_dir)
        totals = shards.part_counts(out_dir)
        totals["rows"] = sum(u.rows for u in units)
        shards.write_manifest(out_dir, STAGE, [os.path.abspath(s) for s in snapshots], totals,
                              {**flags, "world_size": world, "input_parts": inputs})
    return counts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep.commoncatalog", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("snapshots", nargs="+", metavar="SNAPSHOT",
                   help="CommonCatalog snapshot folder (huggingface-cli download --local-dir), a folder below it "
                        "or one part file")
    p.add_argument("--split", required=True, type=str.upper, choices=["C", "NC"],
                   help="C = CC-BY, CC-BY-SA; NC = C + CC-BY-NC, CC-BY-NC-SA (checked per row)")
    p.add_argument("--out", required=True, help="output MDS folder (re-run the same command to resume)")
    add_optout_args(p)
    p.add_argument("--include-public-domain", action="store_true", help="also keep CC0 and Public Domain Mark rows")
    p.add_argument("--min-side", type=int, default=0, help="drop images whose short side is smaller")
    p.add_argument("--max-side", type=int, default=0, help="shrink so the SHORT side is at most this; 0 keeps size")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="decompression-bomb limit (w*h)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="quality of the stored (re-encoded) JPEGs")
    p.add_argument("--resample", choices=sorted(RESAMPLE), default="lanczos", help="downscaling filter")
    p.add_argument("--workers", type=int, default=CatalogConfig.workers, help="image decoding threads")
    p.add_argument("--part-size", type=int, default=1000, help="rows per resumable part (the most a kill loses)")
    p.add_argument("--size-limit", default="256mb", help="MDS shard file size limit")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1 or args.part_size < 1 or not 1 <= args.jpeg_quality <= 100 or args.min_side < 0 \
            or args.max_side < 0:
        parser.error("--workers and --part-size must be >= 1, --jpeg-quality in 1..100, sides >= 0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = CatalogConfig(
        split=args.split, optout=args.optout_list, alias_map=args.alias_map,
        skip_unresolvable=args.skip_unresolvable, include_public_domain=args.include_public_domain,
        min_side=args.min_side, max_side=args.max_side or None, max_pixels=args.max_pixels,
        jpeg_quality=args.jpeg_quality, resample=args.resample, workers=args.workers, part_size=args.part_size,
        size_limit=args.size_limit, progress=not args.no_progress)
    configure_pillow(config.max_pixels)
    try:
        counts = run_commoncatalog(args.snapshots, args.out, config)
    except CatalogInputError as exc:
        print(f"commoncatalog: error: {exc}", file=sys.stderr)
        return 2
    print(f"commoncatalog: this rank kept {counts['written']} images, dropped {sum(counts['skipped'].values())} "
          f"rows {dict(sorted(counts['skipped'].items()))}; manifest: {os.path.join(args.out, 'manifest.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

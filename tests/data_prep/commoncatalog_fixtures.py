"""A small CommonCatalog snapshot on disk: the published 35-column parquet in the Hive folder layout that
`huggingface-cli download common-canvas/commoncatalog-cc-by --repo-type dataset --local-dir X` leaves.

Two parts with several row groups each: one with `jpg` as plain binary, one with the Hugging Face image
struct {bytes, path}. Rows cover every case the ingest must handle; EXPECTED_C says what split C keeps.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from data_prep.commoncatalog_layout import catalog_table

YFCC = {  # the six name/URL pairs YFCC100M (and so CommonCatalog) carries, plus two it does not
    "by": ("Attribution License", "http://creativecommons.org/licenses/by/2.0/"),
    "by-sa": ("Attribution-ShareAlike License", "http://creativecommons.org/licenses/by-sa/2.0/"),
    "by-nc": ("Attribution-NonCommercial License", "http://creativecommons.org/licenses/by-nc/2.0/"),
    "by-nd": ("Attribution-NoDerivs License", "http://creativecommons.org/licenses/by-nd/2.0/"),
    "arr": ("All Rights Reserved", ""),
    "unverifiable": ("Attribution License", "https://example.com/licenses/by/2.0/"),
}
PART_A = "commoncatalog-cc-by/0/least_dim_range=256-512/aspect_ratio_bucket=4-3/" \
         "part-00000-tid-123-0f1e2d3c-1-1-c000.parquet"
PART_B = "commoncatalog-cc-by/3/least_dim_range=512-768/aspect_ratio_bucket=9-7/" \
         "part-00001-tid-456-4b5a6978-2-1-c000.parquet"
PRIVATE_MARKER = "EXIF-PRIVATE-MARKER"  # in the exif column and in the JPEGs' own metadata
LONGITUDE = 13.4049317
OPTED_OUT = "1009"
ROTATED = "1001"  # stored 48x32 with EXIF orientation 6: upright it is 32x48

# photoid, license, special, expected result in split C (None = kept, else the reason)
ROWS_A = [
    (1001, "by", "rotated", None),
    (1002, "by-sa", "", None),
    (1003, "by-nc", "", "license_not_in_split"),
    (1004, "by-nd", "", "license_not_in_split"),
    (1005, "arr", "", "license_not_in_split"),
    (1006, "unverifiable", "", "license_unverifiable"),  # excluded once issue 10 item 2 lands
    (1007, "by", "truncated", "truncated"),
    (1010, "by-sa", "same_bytes_as_1002", "duplicate_sha256"),  # same part, so same rank: see commoncatalog
]
ROWS_B = [
    (1001, "by", "", "duplicate_photo_id"),
    (1009, "by", "", "opted_out"),
    (1011, "by", "", None),
    (1012, "by-sa", "", None),
    (1013, "by", "not_an_image", "not_an_image"),
    (1014, "by", "", None),
    (1015, "by-sa", "", None),
    (1016, "by", "", None),
]
EXPECTED_C = {str(pid): why for pid, _, _, why in ROWS_A + ROWS_B if why != "duplicate_photo_id"}
SIZES = [(40, 30), (30, 40), (36, 36), (64, 40), (44, 33)]


def jpeg(rng: np.random.Generator, size: tuple[int, int], private: bool = False, orientation: int = 1) -> bytes:
    """Random-pixel JPEG; `private` adds EXIF with GPS, XMP and a comment, as a phone photo would carry."""
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[: size[1] // 2, : size[0] // 2] = (255, 0, 0)  # a red top-left corner shows the orientation
    image = Image.fromarray(pixels)
    extra = {}
    if private:
        exif = image.getexif()
        exif[0x0112] = orientation
        exif[0x010E] = PRIVATE_MARKER  # ImageDescription
        exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 17.0)})
        extra = {"exif": exif, "xmp": f"<x:xmpmeta>{PRIVATE_MARKER}</x:xmpmeta>".encode(),
                 "comment": PRIVATE_MARKER.encode()}
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92, **extra)
    return out.getvalue()


def _row(pid: int, lic: str, special: str, rng: np.random.Generator, images: dict[int, bytes]) -> dict:
    name, url = YFCC[lic]
    if special == "rotated":
        data = jpeg(rng, (48, 32), private=True, orientation=6)
    elif special == "same_bytes_as_1002":
        data = images[1002]
    elif special == "truncated":
        whole = jpeg(rng, (40, 30))
        data = whole[: len(whole) // 2]
    elif special == "not_an_image":
        data = b"<html>not a jpeg</html>"
    else:
        data = jpeg(rng, SIZES[pid % len(SIZES)], private=pid % 2 == 0)
    images.setdefault(pid, data)
    return {
        "jpg": data, "blip2_caption": f"a photo of thing {pid}", "caption": f"caption {pid}",
        "licensename": name, "licenseurl": url, "width": 40, "height": 30, "original_width": 800,
        "original_height": 600, "photoid": pid, "uid": f"{pid % 3}@N00", "unickname": f"user {pid % 3}",
        "datetaken": np.datetime64("2010-05-01T12:00:00", "us").item(), "dateuploaded": 1272715200,
        "capturedevice": "Canon", "title": f"title {pid}", "usertags": "a,b", "machinetags": "",
        "longitude": LONGITUDE, "latitude": 52.5200066, "accuracy": 16,
        "pageurl": f"http://www.flickr.com/photos/{pid % 3}@N00/{pid}/",
        "downloadurl": f"http://farm1.staticflickr.com/1/{pid}_abc.jpg", "serverid": 1, "farmid": 1,
        "secret": "abc", "secretoriginal": "def", "ext": "jpg", "url": "", "key": f"{pid:09d}", "status": "success",
        "error_message": None, "exif": f'{{"Image ImageDescription": "{PRIVATE_MARKER}"}}', "sha256": "0" * 64,
        "description": f"description of {pid}",
    }


def write_snapshot(root: Path, seed: int = 0, row_group_size: int = 3) -> Path:
    """Writes the snapshot under root/commoncatalog-cc-by; returns that folder. Also writes root/optout.txt."""
    rng = np.random.default_rng(seed)
    images: dict[int, bytes] = {}
    for rel, rows, struct in ((PART_A, ROWS_A, False), (PART_B, ROWS_B, True)):
        table = catalog_table([_row(pid, lic, special, rng, images) for pid, lic, special, _ in rows],
                              jpg_struct=struct)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=row_group_size)
    # what huggingface-cli and Spark leave beside the parts, none of it data
    cache = root / "commoncatalog-cc-by" / ".cache" / "huggingface" / "download"
    cache.mkdir(parents=True)
    (cache / "stale.parquet").write_bytes(b"not parquet")
    (root / "commoncatalog-cc-by" / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n")
    (root / PART_A).with_name("_SUCCESS").write_bytes(b"")
    (root / PART_A).with_name(f".{(root / PART_A).name}.crc").write_bytes(b"crc")
    (root / "optout.txt").write_text(f"# opt-out requests\nphoto:{OPTED_OUT}\n")
    return root / "commoncatalog-cc-by"

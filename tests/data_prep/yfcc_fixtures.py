"""Tiny YFCC100M-shaped metadata for the data_prep tests, written as TSV, SQLite and parquet."""

import hashlib
import sqlite3
import urllib.parse

from data_prep.metadata import YFCC_COLUMNS

CC = "http://creativecommons.org/licenses/{}/2.0/"
NAMES = {
    "by": "Attribution License", "by-sa": "Attribution-ShareAlike License", "by-nc": "Attribution-NonCommercial License",
    "by-nc-sa": "Attribution-NonCommercial-ShareAlike License", "by-nd": "Attribution-NoDerivs License",
    "by-nc-nd": "Attribution-NonCommercial-NoDerivs License",
}


def yfcc_row(photo_id, code="by", marker="0", title="A title", uid="12345678@N00", nickname="Jane Doe",
             download=True, page=True, license_name=None, license_url=None, description="Some words"):
    """One 23-column YFCC row as the dump writes it (text fields URL-encoded, '+' for spaces)."""
    row = dict.fromkeys(YFCC_COLUMNS, "")
    row.update(
        photoid=str(photo_id), uid=uid, unickname=urllib.parse.quote_plus(nickname),
        datetaken="2010-01-01 00:00:00.0", dateuploaded="1262304000", title=urllib.parse.quote_plus(title),
        description=urllib.parse.quote_plus(description),
        pageurl=f"http://www.flickr.com/photos/{uid}/{photo_id}/" if page else "",
        downloadurl=f"http://farm1.staticflickr.com/1/{photo_id}_abcdef0123.jpg" if download else "",
        licensename=urllib.parse.quote_plus(NAMES.get(code, "") if license_name is None else license_name),
        licenseurl=CC.format(code) if license_url is None else license_url,
        serverid="1", farmid="1", secret="abcdef0123", secretoriginal="0123abcdef", ext="jpg", marker=marker)
    return [row[c] for c in YFCC_COLUMNS]


def photo_hash(download_url):
    """The single-file release's photo hash: md5 of the download URL, each byte printed by %x (no zero
    padding), so 30-32 hex digits."""
    return "".join(f"{b:x}" for b in hashlib.md5(download_url.encode()).digest())


def single_file_line(line_number, row):
    """A 23-column row in the single-file release's 25-column layout: line number (0-based), photo id,
    photo hash, user NSID, ... marker."""
    return [str(line_number), row[0], photo_hash(row[YFCC_COLUMNS.index("downloadurl")]), *row[1:]]


# Lines as the real dump writes them (2014 split file, 23 fields: URL-encoded text, '+' for spaces, date
# taken with ".0", unix upload time, comma-separated tags, empty geo fields, the 2.0 license pairs).
REAL_23 = [
    "6985418911\t39089491@N00\tgnuckx\t2012-02-16 09:56:37.0\t1331840742\tCanon+PowerShot+A595+IS\t"
    "Graffiti+%26+stencils\tOn+the+wall%0Aof+the+old+factory\tgraffiti,street+art,stencil\t\t\t\t\t"
    "http://www.flickr.com/photos/39089491@N00/6985418911/\thttp://farm8.staticflickr.com/7205/6985418911_df7747990d.jpg\t"
    "Attribution-ShareAlike+License\thttp://creativecommons.org/licenses/by-sa/2.0/\t7205\t8\tdf7747990d\t"
    "692d7e0a7f\tjpg\t0",
    "2868456581\t25218355@N02\tMartin+K\t2008-09-21 14:12:05.0\t1222007541\tNIKON+D80\tHarbour+at+dusk\t\t"
    "harbour,boats\t\t-0.127758\t51.507351\t16\thttp://www.flickr.com/photos/25218355@N02/2868456581/\t"
    "http://farm4.staticflickr.com/3044/2868456581_9e1ec7a8a4.jpg\tAttribution+License\t"
    "http://creativecommons.org/licenses/by/2.0/\t3044\t4\t9e1ec7a8a4\t2bd6f8a41e\tjpg\t0",
    "3420312154\t8157911@N03\tanna\t4501-01-01 00:00:00.0\t1239021012\t\tUntitled\t\t\t\t\t\t\t"
    "http://www.flickr.com/photos/8157911@N03/3420312154/\thttp://farm4.staticflickr.com/3631/3420312154_1c7c8bd25f.jpg\t"
    "Attribution-NonCommercial-NoDerivs+License\thttp://creativecommons.org/licenses/by-nc-nd/2.0/\t3631\t4\t"
    "1c7c8bd25f\t6b8ea7e1d0\tjpg\t0",
    "5216712046\t36521959321@N01\tj.smith\t2010-11-27 16:03:41.0\t1290874022\tApple+iPhone+4\tMy+dog\t\tdog\t\t"
    "\t\t\thttp://www.flickr.com/photos/36521959321@N01/5216712046/\t"
    "http://farm6.staticflickr.com/5043/5216712046_5c8a9e2f01.jpg\tAttribution-NonCommercial+License\t"
    "http://creativecommons.org/licenses/by-nc/2.0/\t5043\t6\t5c8a9e2f01\tb0c2a9f7d3\tjpg\t0",
]


def sample_rows():
    """(rows, expected) for split C: 23-column rows incl. every drop reason once or more."""
    rows = [
        yfcc_row(1, "by", title="Sunset over the bay & hills"),
        yfcc_row(2, "by-sa", nickname="Ünïcode Person"),
        yfcc_row(3, "by-nc"),
        yfcc_row(4, "by-nc-sa"),
        yfcc_row(5, "by-nd"),
        yfcc_row(6, "by-nc-nd"),
        yfcc_row(7, "by", marker="1"),  # video
        yfcc_row(8, "by", license_name="All Rights Reserved", license_url=""),
        yfcc_row(9, "by", license_name="", license_url=""),  # license missing
        yfcc_row(10, "by", license_name="Attribution-NonCommercial License"),  # URL and name disagree
        yfcc_row(11, "by", download=False),
        yfcc_row(1, "by"),  # duplicate of photo 1
        yfcc_row(12, "by-sa", uid="99999999@N01", nickname="Opted Out Author"),
        yfcc_row(13, "by", page=False),
        yfcc_row(14, "by-sa", license_url="http://creativecommons.org/licenses/by-sa/2.0/deed.de"),
    ]
    return rows


EXPECTED_C = {
    "kept_ids": ["1", "2", "14"],  # 12 only when there is no opt-out list
    "dropped": {"license_not_in_split": 5, "video": 1, "license_missing": 1, "license_conflict": 1,
                "no_download_url": 1, "duplicate": 1, "no_page_url": 1},
}


def write_tsv(path, rows, malformed_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write("\t".join(row) + "\n")
        for line in malformed_lines:
            f.write(line + "\n")


def write_sqlite(path, rows, table="yfcc100m_dataset"):
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE {table} ({', '.join(c + ' TEXT' for c in YFCC_COLUMNS)})")
    con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(YFCC_COLUMNS))})", rows)
    con.commit()
    con.close()


def write_parquet(path, rows, sizes=None):
    """CommonCatalog-style: YFCC column names, decoded text, plus width/height."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = []
    for i, row in enumerate(rows):
        rec = dict(zip(YFCC_COLUMNS, row))
        for name in ("title", "description", "unickname", "licensename"):
            rec[name] = urllib.parse.unquote_plus(rec[name])
        rec["photoid"] = int(rec["photoid"])
        rec["marker"] = int(rec["marker"])
        w, h = (sizes[i] if sizes else (None, None))
        rec["width"], rec["height"] = w, h
        records.append(rec)
    pq.write_table(pa.Table.from_pylist(records), path)


def write_fetch_shards(out, n, compression=None):
    """A merged MDS folder shaped like the fetch stage's output (schema.FETCH_COLUMNS), tiny JPEGs."""
    import io

    import numpy as np
    from PIL import Image

    from data_prep.schema import FETCH_COLUMNS
    from data_prep.shards import ResumableMDSWriter, merge_ranks

    licenses = ["CC-BY", "CC-BY-SA"]
    rng = np.random.default_rng(0)
    with ResumableMDSWriter(str(out), FETCH_COLUMNS, part_size=4, compression=compression) as w:
        for i in range(1, n + 1):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="JPEG")
            uid = f"{1000 + i % 3}@N00"
            w.write(str(i), {
                "image": Image.open(io.BytesIO(buf.getvalue())), "title": f"Photo | {i} *bold* [x]",
                "description": "line one\nline\ttwo", "author_name": f"Author {i % 3}", "author_id": uid,
                "page_url": f"http://www.flickr.com/photos/{uid}/{i}/",
                "download_url": f"http://farm1.staticflickr.com/1/{i}_abcdef0123.jpg",
                "license": licenses[i % 2], "license_name": ["Attribution License", "Attribution-ShareAlike License"][i % 2],
                "license_url": ["http://creativecommons.org/licenses/by/2.0/",
                                "http://creativecommons.org/licenses/by-sa/2.0/"][i % 2],
                "orig_width": 8, "orig_height": 8, "sha256": "0" * 64})
    merge_ranks(str(out))

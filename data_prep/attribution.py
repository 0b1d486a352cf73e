"""Attribution list for a set of shards: who made each training image, where it came from, under what license.

    python -m data_prep.attribution SHARDS [SHARDS ...] --out DIR

writes DIR/ATTRIBUTION.tsv (one row per image: photo_id, title, author_name, author_id, page_url, license,
license_name, license_url as the metadata gave them, then notice_license and notice_license_url: the license
in words and its canonical deed URL, e.g. "CC BY-SA 2.0" https://creativecommons.org/licenses/by-sa/2.0/,
decoded by data_prep.licenses.license_notice from whichever of URL / name the row carries), DIR/ATTRIBUTION.md
(the same as "Title by Author, license" lines in the TASL form Creative Commons recommends, the license named
in words and linked to its deed, with counts per license at the top) and DIR/attribution_counts.json.
An image present in several shard folders (e.g. two latent resolutions of one dataset) is listed once.
The export step calls write_attribution(shard_dirs, out_dir).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from data_prep.licenses import license_notice

TSV_FILE = "ATTRIBUTION.tsv"
MARKDOWN_FILE = "ATTRIBUTION.md"
COUNTS_FILE = "attribution_counts.json"
TSV_COLUMNS = ("photo_id", "title", "author_name", "author_id", "page_url", "license", "license_name", "license_url",
               "notice_license", "notice_license_url")
SHARD_COLUMNS = TSV_COLUMNS[:8]
REQUIRED_COLUMNS = ("photo_id", "title", "author_name", "page_url", "license", "license_url")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")  # specials inside a line (we never start one)


def _one_line(text: str) -> str:
    """Tabs and newlines would break a TSV row or a Markdown list item."""
    return " ".join(str(text or "").split())


def _md_text(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", _one_line(text))


def _md_url(url: str) -> str:
    return _one_line(url).replace(" ", "%20").replace("(", "%28").replace(")", "%29")


def _markdown_line(row: dict) -> str:
    title = _md_text(row["title"]) or "Untitled"
    author = _md_text(row["author_name"]) or "unknown author"
    source = f"[{title}]({_md_url(row['page_url'])})" if row["page_url"] else title
    lic_label = _md_text(row["notice_license"] or row["license"])
    lic = f"[{lic_label}]({_md_url(row['notice_license_url'])})" if row["notice_license_url"] else lic_label
    return f"- {source} by {author}, {lic}"


def write_attribution(shard_dirs: list[str], out_dir: str, progress: bool = True) -> dict:
    """Write the attribution files for every sample of `shard_dirs` (merged MDS folders) into out_dir.
    Returns {"images": n, "per_license": {license: n}, "duplicates_skipped": n, "missing_author": n,
    "missing_page_url": n, "shards": [...]}."""
    from tqdm import tqdm

    from data_prep.shards import count_samples, iter_mds, read_columns

    os.makedirs(out_dir, exist_ok=True)
    columns_of = {}
    for shard_dir in shard_dirs:
        available = read_columns(shard_dir)
        missing = [c for c in REQUIRED_COLUMNS if c not in available]
        if missing:
            raise ValueError(f"{shard_dir}: shards lack attribution column(s) {missing}")
        columns_of[shard_dir] = [c for c in SHARD_COLUMNS if c in available]
    counts = {"images": 0, "per_license": {}, "duplicates_skipped": 0, "missing_author": 0, "missing_page_url": 0,
              "missing_license_link": 0, "shards": list(shard_dirs)}
    seen: set[str] = set()
    tsv_tmp, body_tmp = os.path.join(out_dir, TSV_FILE + ".tmp"), os.path.join(out_dir, MARKDOWN_FILE + ".body.tmp")
    with open(tsv_tmp, "w", encoding="utf-8") as tsv, open(body_tmp, "w", encoding="utf-8") as body:
        tsv.write("\t".join(TSV_COLUMNS) + "\n")
        for shard_dir in shard_dirs:
            rows = iter_mds(shard_dir, columns=columns_of[shard_dir])
            for key, row in tqdm(rows, total=count_samples(shard_dir), desc=f"attribution {shard_dir}", unit="img",
                                 disable=not progress or None):
                if key in seen:
                    counts["duplicates_skipped"] += 1
                    continue
                seen.add(key)
                row = {c: row.get(c, "") for c in SHARD_COLUMNS}
                row["notice_license"], row["notice_license_url"] = license_notice(
                    row["license_url"], row["license_name"], row["license"] or None)
                tsv.write("\t".join(_one_line(row[c]) for c in TSV_COLUMNS) + "\n")
                body.write(_markdown_line(row) + "\n")
                counts["images"] += 1
                counts["per_license"][row["license"]] = counts["per_license"].get(row["license"], 0) + 1
                counts["missing_author"] += not _one_line(row["author_name"])
                counts["missing_page_url"] += not _one_line(row["page_url"])
                counts["missing_license_link"] += not row["notice_license_url"]
    md_tmp = os.path.join(out_dir, MARKDOWN_FILE + ".tmp")
    with open(md_tmp, "w", encoding="utf-8") as md, open(body_tmp, encoding="utf-8") as body:
        md.write("# Image attribution\n\n")
        md.write(f"{counts['images']} images from {len(shard_dirs)} shard folder(s). Each line: title (linked to "
                 f"its source page), author, license.\n\n| License | Images |\n|---|---|\n")
        for lic, n in sorted(counts["per_license"].items()):
            md.write(f"| {_md_text(lic)} | {n} |\n")
        md.write("\n## Images\n\n")
        for line in body:
            md.write(line)
    os.remove(body_tmp)
    os.replace(tsv_tmp, os.path.join(out_dir, TSV_FILE))
    os.replace(md_tmp, os.path.join(out_dir, MARKDOWN_FILE))
    with open(os.path.join(out_dir, COUNTS_FILE), "w") as f:
        json.dump(counts, f, indent=2)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.attribution", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", nargs="+", metavar="SHARDS", help="merged MDS folders (any stage: fetch, caption, latents)")
    p.add_argument("--out", required=True, help="folder for ATTRIBUTION.tsv, ATTRIBUTION.md, attribution_counts.json")
    args = p.parse_args(argv)
    try:
        counts = write_attribution(args.shards, args.out)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{counts['images']} images; per license {counts['per_license']}; "
          f"{counts['duplicates_skipped']} duplicates skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

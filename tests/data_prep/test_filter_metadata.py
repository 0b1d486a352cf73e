import bz2
import gzip
import json
import random
import re

import pytest
from yfcc_fixtures import (EXPECTED_C, REAL_23, sample_rows, single_file_line, write_parquet, write_sqlite, write_tsv,
                           yfcc_row)

from data_prep import filter_metadata
from data_prep.filter_metadata import run_filter
from data_prep.metadata import YFCC_COLUMNS, MalformedRow, PhotoRecord, iter_filtered, read_metadata

MALFORMED = ["1\t2\t3", "\t" * 22, "\t".join(yfcc_row(50, marker="7"))]  # short row, empty id, bad marker


def _kept(out):
    return [row["photo_id"] for row in iter_filtered(str(out))]


def test_tsv_reader_decodes_and_reports_rows(tmp_path):
    path = tmp_path / "yfcc.tsv"
    write_tsv(path, sample_rows()[:2], MALFORMED)
    items = list(read_metadata(str(path)))
    assert [row for row, _ in items] == [1, 2, 3, 4, 5]
    first = items[0][1]
    assert isinstance(first, PhotoRecord)
    assert first.title == "Sunset over the bay & hills" and first.author_name == "Jane Doe"
    assert first.page_url == "http://www.flickr.com/photos/12345678@N00/1/" and first.author_id == "12345678@N00"
    assert items[1][1].author_name == "Ünïcode Person"
    bad = [item for _, item in items[2:]]
    assert all(isinstance(b, MalformedRow) for b in bad)
    assert "3 tab-separated columns" in str(bad[0]) and "row 3" in str(bad[0]) and str(path) in str(bad[0])
    assert "photo id '' is not numeric" in bad[1].reason and "marker '7'" in bad[2].reason
    assert [row for row, _ in read_metadata(str(path), start_row=3)] == [4, 5]


def test_filter_tsv_counts_every_reason(tmp_path):
    path = tmp_path / "yfcc.tsv"
    write_tsv(path, sample_rows(), MALFORMED)
    counts = run_filter([str(path)], str(tmp_path / "out"), "C", progress=False)
    assert sorted(_kept(tmp_path / "out"), key=int) == ["1", "2", "12", "14"]
    assert counts["dropped"] == {**EXPECTED_C["dropped"], "malformed": 3}
    assert counts["kept"] == 4 and counts["rows_read"] == 18
    assert counts["kept_per_license"] == {"CC-BY": 1, "CC-BY-SA": 3}
    assert counts["dropped_per_license"]["CC-BY-NC-ND"] == 1 and counts["dropped_per_license"]["unparsed"] == 3
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["stage"] == "filter_metadata" and manifest["counts"]["dropped"] == counts["dropped"]
    assert manifest["flags"]["split"] == "C"
    row = next(r for r in iter_filtered(str(tmp_path / "out")) if r["photo_id"] == "14")
    assert row == {"photo_id": "14", "download_url": "http://farm1.staticflickr.com/1/14_abcdef0123.jpg",
                   "page_url": "http://www.flickr.com/photos/12345678@N00/14/", "author_name": "Jane Doe",
                   "author_id": "12345678@N00", "title": "A title", "description": "Some words",
                   "license": "CC-BY-SA", "license_name": "Attribution-ShareAlike License",
                   "license_url": "http://creativecommons.org/licenses/by-sa/2.0/deed.de", "width": None,
                   "height": None}


def test_unverifiable_license_urls_are_dropped_with_their_own_reason(tmp_path):
    """Issue 10 defect 2 / issue 16 defect 4: the name decided when the URL field was filled but unverifiable."""
    rows = [yfcc_row(40, "by", license_url="https://www.example.com/licenses/by/2.0/"),
            yfcc_row(41, "by", license_url="see+flickr"),
            yfcc_row(42, "by", license_name="Attribution", license_url="https://creativecommons.org/licenses/nc/1.0/"),
            yfcc_row(43, "by", license_url="https://creativecommons.org/licenses/by-nd/3.0/igo/"),
            yfcc_row(44, "by", license_url=""),  # empty URL: the name decides
            yfcc_row(45, "by-sa")]
    write_tsv(tmp_path / "y.tsv", rows)
    counts = run_filter([str(tmp_path / "y.tsv")], str(tmp_path / "out"), "NC", progress=False)
    assert sorted(_kept(tmp_path / "out")) == ["44", "45"]
    assert counts["dropped"] == {"license_non_cc_url": 2, "license_unrecognised_url": 2}


def test_nc_split_and_public_domain_flag(tmp_path):
    path = tmp_path / "yfcc.tsv"
    rows = sample_rows() + [yfcc_row(20, license_name="Public Domain Dedication (CC0)",
                                     license_url="https://creativecommons.org/publicdomain/zero/1.0/")]
    write_tsv(path, rows)
    counts = run_filter([str(path)], str(tmp_path / "nc"), "NC", progress=False)
    assert sorted(_kept(tmp_path / "nc"), key=int) == ["1", "2", "3", "4", "12", "14"]
    assert counts["dropped_per_license"]["CC0"] == 1
    run_filter([str(path)], str(tmp_path / "pd"), "C", include_public_domain=True, progress=False)
    assert "20" in _kept(tmp_path / "pd")


def _write_three_layouts(tmp_path, rows):
    """The same rows as a 2014 split file (23 fields), the single-file release (.bz2, 25 fields: line
    number, photo id, photo hash, ...) and the SQLite table."""
    write_tsv(tmp_path / "yfcc100m_dataset-0", rows)
    with bz2.open(tmp_path / "yfcc100m_dataset.bz2", "wt", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            f.write("\t".join(single_file_line(i, row)) + "\n")
    write_sqlite(tmp_path / "yfcc100m_dataset.sql", rows)
    return [tmp_path / "yfcc100m_dataset-0", tmp_path / "yfcc100m_dataset.bz2", tmp_path / "yfcc100m_dataset.sql"]


def test_the_three_yfcc_layouts_give_the_same_rows(tmp_path):
    """Issue 10 defect 1: the single-file layout is line number, photo id, photo hash, ...; reading it as
    line number, hash, ... made every photo_id the hash."""
    rows = sample_rows()
    paths = _write_three_layouts(tmp_path, rows)
    outputs = []
    for i, path in enumerate(paths):
        run_filter([str(path)], str(tmp_path / f"out{i}"), "C", progress=False)  # .sql: SQLite told by its header
        outputs.append(list(iter_filtered(str(tmp_path / f"out{i}"))))
    assert [r["photo_id"] for r in outputs[0]] == ["1", "2", "12", "14"]
    assert outputs[1] == outputs[0] and outputs[2] == outputs[0]
    lengths = {len(single_file_line(i, row)[2]) for i, row in enumerate(rows)}
    assert min(lengths) < 30 and max(lengths) == 32  # unpadded md5s shorter than 30 digits occur too


def test_real_format_lines_in_every_layout(tmp_path):
    rows = [line.split("\t") for line in REAL_23]
    paths = _write_three_layouts(tmp_path, rows)
    for i, path in enumerate(paths):
        items = [item for _, item in read_metadata(str(path))]
        assert [type(item) for item in items] == [PhotoRecord] * 4, items
        assert [item.photo_id for item in items] == ["6985418911", "2868456581", "3420312154", "5216712046"]
        first = items[0]
        assert (first.author_id, first.author_name, first.title) == ("39089491@N00", "gnuckx", "Graffiti & stencils")
        assert first.description == "On the wall\nof the old factory"
        assert first.license_name == "Attribution-ShareAlike License"  # decoded from Attribution-ShareAlike+License
        assert first.download_url == "http://farm8.staticflickr.com/7205/6985418911_df7747990d.jpg"
    counts = run_filter([str(paths[1])], str(tmp_path / "nc"), "NC", progress=False)
    assert sorted(_kept(tmp_path / "nc")) == ["2868456581", "5216712046", "6985418911"]
    assert counts["dropped"] == {"license_not_in_split": 1}


def test_optout_by_photo_id_on_the_single_file_layout(tmp_path):
    rows = [line.split("\t") for line in REAL_23]
    _write_three_layouts(tmp_path, rows)
    (tmp_path / "optout.txt").write_text("photo:02868456581  # request 2024-01\n")
    counts = run_filter([str(tmp_path / "yfcc100m_dataset.bz2")], str(tmp_path / "out"), "NC",
                        optout_path=str(tmp_path / "optout.txt"), progress=False)
    assert sorted(_kept(tmp_path / "out")) == ["5216712046", "6985418911"]
    assert counts["dropped"] == {"license_not_in_split": 1, "opted_out": 1}


def test_rows_that_fit_no_layout_are_malformed(tmp_path, capsys):
    """Issue 16 defect 5: a 23-column row with two stray tabs in its title has 25 cells; read as the
    single-file layout its photo_id became the nickname and a photo-id opt-out missed it."""
    stray = yfcc_row(31)
    stray[YFCC_COLUMNS.index("title")] = "a\ttitle\twith+tabs"  # raw tabs, as a broken export writes them
    assert len("\t".join(stray).split("\t")) == 25
    not_a_hash = single_file_line(0, yfcc_row(32))
    not_a_hash[2] = "deadbeef"
    short_hash = single_file_line(1, yfcc_row(33))
    short_hash[2] = short_hash[2][:15]  # %x of 16 bytes is at least 16 digits
    good = single_file_line(2, yfcc_row(34))
    write_tsv(tmp_path / "y.tsv", [stray, not_a_hash, short_hash, good])
    items = [item for _, item in read_metadata(str(tmp_path / "y.tsv"))]
    assert [type(i) for i in items] == [MalformedRow, MalformedRow, MalformedRow, PhotoRecord]
    assert "not the single-file layout" in items[0].reason and items[3].photo_id == "34"
    counts = run_filter([str(tmp_path / "y.tsv")], str(tmp_path / "out"), "C", progress=False)
    assert counts["dropped"] == {"malformed": 3} and _kept(tmp_path / "out") == ["34"]
    rc = filter_metadata.main([str(tmp_path / "y.tsv"), "--out", str(tmp_path / "o2"), "--split", "C", "--strict"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "y.tsv: row 1: 25 tab-separated columns" in err


@pytest.mark.parametrize("suffix,opener", [(".bz2", bz2.open), (".gz", gzip.open)])
def test_truncated_compressed_input_is_one_line_and_keeps_finished_chunks(tmp_path, capsys, suffix, opener):
    """Issue 16 defect 7: a truncated .bz2 ended in a traceback (exit 1)."""
    path = tmp_path / f"yfcc100m_dataset{suffix}"
    rng = random.Random(0)
    # Random titles and bz2's smallest block (100 kB), so the file spans blocks and the cut lands mid-file.
    with opener(path, "wt", encoding="utf-8", compresslevel=1) as f:
        for i in range(1500):
            title = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(200))
            f.write("\t".join(single_file_line(i, yfcc_row(i + 1, title=title))) + "\n")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    rc = filter_metadata.main([str(path), "--out", str(tmp_path / "out"), "--split", "C", "--chunk-rows", "100"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    last_row = int(re.search(r"after row (\d+)", err).group(1))
    assert str(path) in err and "truncated or corrupt" in err and 200 <= last_row < 1500
    parts = sorted(p.name for p in (tmp_path / "out" / "photos").glob("part-*.parquet"))
    assert parts == [f"part-000-{c:06d}.parquet" for c in range(last_row // 100)]  # every finished chunk kept
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_parquet_with_sizes_and_min_size(tmp_path):
    rows = sample_rows()[:3]
    write_parquet(tmp_path / "cc.parquet", rows, sizes=[(640, 480), (100, 900), (800, 800)])
    counts = run_filter([str(tmp_path / "cc.parquet")], str(tmp_path / "out"), "NC", min_width=256, min_height=256,
                        progress=False)
    kept = list(iter_filtered(str(tmp_path / "out")))
    assert [(r["photo_id"], r["width"], r["height"]) for r in kept] == [("1", 640, 480), ("3", 800, 800)]
    assert counts["dropped"] == {"too_small": 1}
    assert kept[0]["title"] == "Sunset over the bay & hills"  # parquet text is not decoded twice


def test_optout_list_in_filter(tmp_path):
    write_tsv(tmp_path / "y.tsv", sample_rows())
    (tmp_path / "optout.txt").write_text("# requests\n99999999@N01\nhttps://www.flickr.com/photos/x/14/\n")
    counts = run_filter([str(tmp_path / "y.tsv")], str(tmp_path / "out"), "C",
                        optout_path=str(tmp_path / "optout.txt"), progress=False)
    assert sorted(_kept(tmp_path / "out"), key=int) == ["1", "2"]
    assert counts["dropped"]["opted_out"] == 2


def test_unresolvable_optout_entry_stops_the_filter_or_is_a_reported_skip(tmp_path, capsys):
    write_tsv(tmp_path / "y.tsv", sample_rows())
    (tmp_path / "optout.txt").write_text("photo:1\nauthor:janedoe  # an alias\n")
    argv = [str(tmp_path / "y.tsv"), "--out", str(tmp_path / "out"), "--split", "C", "--optout",
            str(tmp_path / "optout.txt")]
    assert filter_metadata.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optout.txt: line 2: 'janedoe'" in err, err
    assert not (tmp_path / "out").exists()  # refused before any row was read
    assert filter_metadata.main(argv + ["--skip-unresolvable"]) == 0
    assert "skipped 1 unresolvable opt-out entries" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["optout"]["skipped_entries"][0]["line"] == 2
    assert manifest["counts"]["dropped"]["opted_out"] == 2 and "1" not in _kept(tmp_path / "out")  # photo 1 twice
    (tmp_path / "aliases.txt").write_text("janedoe 12345678@N00\n")
    rc = filter_metadata.main(argv + ["--alias-map", str(tmp_path / "aliases.txt"), "--overwrite"])
    assert rc == 0 and _kept(tmp_path / "out") == ["12"]  # every photo of 12345678@N00 removed


def test_resume_after_a_crash_gives_the_same_output(tmp_path, monkeypatch):
    rows = [yfcc_row(i, "by" if i % 3 else "by-nc") for i in range(1, 40)] + [yfcc_row(5)]  # one duplicate
    write_tsv(tmp_path / "y.tsv", rows, MALFORMED[:1])
    clean = run_filter([str(tmp_path / "y.tsv")], str(tmp_path / "clean"), "C", chunk_rows=7, progress=False)

    real_write, calls = filter_metadata._write_part, []

    def crash_on_third(*args):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        real_write(*args)

    monkeypatch.setattr(filter_metadata, "_write_part", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_filter([str(tmp_path / "y.tsv")], str(tmp_path / "out"), "C", chunk_rows=7, progress=False)
    monkeypatch.setattr(filter_metadata, "_write_part", real_write)
    resumed = run_filter([str(tmp_path / "y.tsv")], str(tmp_path / "out"), "C", chunk_rows=7, progress=False)
    assert resumed == clean
    assert resumed["dropped"]["duplicate"] == 1 and resumed["dropped"]["malformed"] == 1
    assert list(iter_filtered(str(tmp_path / "out"))) == list(iter_filtered(str(tmp_path / "clean")))
    with pytest.raises(ValueError, match=r"made from other inputs \(flags split differ"):
        run_filter([str(tmp_path / "y.tsv")], str(tmp_path / "out"), "NC", chunk_rows=7, progress=False)
    again = run_filter([str(tmp_path / "y.tsv")], str(tmp_path / "out"), "NC", chunk_rows=7, overwrite=True,
                       progress=False)
    assert again["kept"] > clean["kept"]


def test_cli_strict_names_file_and_row(tmp_path, capsys):
    write_tsv(tmp_path / "y.tsv", sample_rows()[:2], MALFORMED[2:])
    rc = filter_metadata.main([str(tmp_path / "y.tsv"), "--out", str(tmp_path / "o"), "--split", "C", "--strict"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"{tmp_path / 'y.tsv'}: row 3: marker '7'" in err
    rc = filter_metadata.main([str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "o2"), "--split", "C"])
    assert rc == 2 and "missing.tsv: no such file" in capsys.readouterr().err
    rc = filter_metadata.main([str(tmp_path / "y.tsv"), "--out", str(tmp_path / "o3"), "--split", "c"])
    assert rc == 0 and "kept 2 of 3 rows" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        filter_metadata.main(["--help"])
    assert e.value.code == 0 and "--split" in capsys.readouterr().out


def test_parquet_without_required_column_is_one_clear_error(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"photoid": [1], "title": ["x"]}), tmp_path / "bad.parquet")
    rc = filter_metadata.main([str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "o"), "--split", "C"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.parquet: no column for ['download_url', 'license_name', 'license_url']" in err


def test_dedupe_ids_are_compared_exactly():
    from data_prep.filter_metadata import compact_id

    assert compact_id("123") == 123 and compact_id("0") == 0
    assert compact_id("0123") == "0123" and compact_id("²") == "²" and compact_id("abc") == "abc"
    assert len({compact_id(x) for x in ["123", "0123", "00123", "123 "[:3]]}) == 3

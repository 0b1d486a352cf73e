import json

import pytest
from yfcc_fixtures import write_fetch_shards

from data_prep import attribution
from data_prep.attribution import write_attribution


def test_attribution_tsv_markdown_and_counts(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_fetch_shards(a, 5)
    write_fetch_shards(b, 3, compression="zstd")  # photos 1-3 again: listed once
    counts = write_attribution([str(a), str(b)], str(tmp_path / "out"), progress=False)
    assert counts["images"] == 5 and counts["duplicates_skipped"] == 3
    assert counts["per_license"] == {"CC-BY-SA": 3, "CC-BY": 2}
    lines = (tmp_path / "out" / "ATTRIBUTION.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["photo_id", "title", "author_name", "author_id", "page_url", "license",
                                    "license_name", "license_url", "notice_license", "notice_license_url"]
    assert lines[1].split("\t") == ["1", "Photo | 1 *bold* [x]", "Author 1", "1001@N00",
                                    "http://www.flickr.com/photos/1001@N00/1/", "CC-BY-SA",
                                    "Attribution-ShareAlike License", "http://creativecommons.org/licenses/by-sa/2.0/",
                                    "CC BY-SA 2.0", "https://creativecommons.org/licenses/by-sa/2.0/"]
    assert len(lines) == 6 and all(len(line.split("\t")) == 10 for line in lines)
    md = (tmp_path / "out" / "ATTRIBUTION.md").read_text()
    assert "| CC-BY | 2 |" in md and "| CC-BY-SA | 3 |" in md
    assert ("- [Photo \\| 1 \\*bold\\* \\[x\\]](http://www.flickr.com/photos/1001@N00/1/) by Author 1, "
            "[CC BY-SA 2.0](https://creativecommons.org/licenses/by-sa/2.0/)") in md
    assert md.count("\n- ") == 5
    assert json.loads((tmp_path / "out" / "attribution_counts.json").read_text())["images"] == 5


def test_cli_and_missing_columns(tmp_path, capsys):
    from data_prep.shards import ResumableMDSWriter, merge_ranks

    write_fetch_shards(tmp_path / "a", 2)
    assert attribution.main([str(tmp_path / "a"), "--out", str(tmp_path / "out")]) == 0
    assert "2 images" in capsys.readouterr().out
    with ResumableMDSWriter(str(tmp_path / "bare"), {"photo_id": "str", "caption": "str"}) as w:
        w.write("1", {"caption": "x"})
    merge_ranks(str(tmp_path / "bare"))
    assert attribution.main([str(tmp_path / "bare"), "--out", str(tmp_path / "o2")]) == 2
    assert "lack attribution column(s) ['title', 'author_name'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        attribution.main(["--help"])
    assert "--out" in capsys.readouterr().out


def test_notice_names_and_links_the_license_whichever_field_the_row_carries(tmp_path):
    """Issue 16 defect 6: YFCC's URL-encoded name was printed raw ("Attribution+License") and a row admitted
    by name with an empty URL got no license link at all."""
    from data_prep.schema import FETCH_COLUMNS
    from data_prep.shards import ResumableMDSWriter, merge_ranks

    cases = {  # photo id -> (license, license_name, license_url, expected notice)
        "1": ("CC-BY", "Attribution+License", "", "[CC BY 2.0](https://creativecommons.org/licenses/by/2.0/)"),
        "2": ("CC-BY-SA", "", "http://creativecommons.org/licenses/by-sa/2.0/",
              "[CC BY-SA 2.0](https://creativecommons.org/licenses/by-sa/2.0/)"),
        "3": ("CC-BY-NC-SA", "Attribution-NonCommercial-ShareAlike+License",
              "http://creativecommons.org/licenses/by-nc-sa/2.0/deed.de",
              "[CC BY-NC-SA 2.0](https://creativecommons.org/licenses/by-nc-sa/2.0/)"),
        "4": ("CC-BY", "CC BY 4.0", "", "[CC BY 4.0](https://creativecommons.org/licenses/by/4.0/)"),
    }
    with ResumableMDSWriter(str(tmp_path / "s"), {c: e for c, e in FETCH_COLUMNS.items() if c != "image"}) as w:
        for pid, (lic, name, url, _) in cases.items():
            w.write(pid, {"title": f"T{pid}", "description": "", "author_name": "A", "author_id": "1@N00",
                          "page_url": f"http://www.flickr.com/photos/1@N00/{pid}/", "download_url": "", "license": lic,
                          "license_name": name, "license_url": url, "orig_width": 1, "orig_height": 1, "sha256": ""})
    merge_ranks(str(tmp_path / "s"))
    counts = write_attribution([str(tmp_path / "s")], str(tmp_path / "out"), progress=False)
    md = (tmp_path / "out" / "ATTRIBUTION.md").read_text()
    for pid, (_, _, _, notice) in cases.items():
        assert f"- [T{pid}](http://www.flickr.com/photos/1@N00/{pid}/) by A, {notice}\n" in md
    assert "+License" not in md and counts["missing_license_link"] == 0

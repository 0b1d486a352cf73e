import json

import pytest
from yfcc_fixtures import write_fetch_shards

from data_prep import optout
from data_prep.optout import OptOutList, OptOutListError, apply_to_shards
from data_prep.shards import count_samples, iter_mds


def test_text_list_recognises_every_entry_kind(tmp_path):
    path = tmp_path / "optout.txt"
    path.write_text("# removal requests\n\n123\n45678901@N02\nphoto:777\nauthor:some-alias\n"
                    "https://www.flickr.com/photos/someone/555/in/album-1/\n"
                    "http://farm3.staticflickr.com/2/666_0a1b2c3d4e_b.jpg\n"
                    "https://flickr.com/photos/98765432@N00/\nurl:https://example.org/img.png?x=1\n")
    opt = OptOutList.load(str(path))
    assert opt.photo_ids == {"123", "777", "555", "666"}
    assert opt.author_ids == {"45678901@n02", "some-alias", "98765432@n00"}
    assert opt.match(photo_id="123") == "photo_id"
    assert opt.match(photo_id="1", author_id="45678901@N02") == "author_id"
    assert opt.match(photo_id="1", page_url="http://www.flickr.com/photos/some-alias/1/") == "author_id"
    assert opt.match(photo_id="1", download_url="HTTPS://example.org/img.png") == "download_url"
    assert opt.match(photo_id="1", author_id="1@N00", page_url="http://flickr.com/photos/1@N00/1/") is None
    assert len(opt) == 8 and len(opt.sha256) == 64


def test_csv_lists_and_bad_lines(tmp_path):
    by_column = tmp_path / "a.csv"
    by_column.write_text("photo_id,author_id,page_url\n11,,\n,22@N00,\n,,https://www.flickr.com/photos/x/33/\n")
    opt = OptOutList.load(str(by_column))
    assert opt.photo_ids == {"11", "33"} and opt.author_ids == {"22@n00"}
    typed = tmp_path / "b.txt"
    typed.write_text("type,value\nphoto_id,44\nurl,http://www.flickr.com/photos/55@N00/\n")
    opt = OptOutList.load(str(typed))
    assert opt.photo_ids == {"44"} and opt.author_ids == {"55@n00"}
    bad = tmp_path / "c.txt"
    bad.write_text("123\nsomebody\n")
    with pytest.raises(OptOutListError, match=r"c.txt: line 2: cannot tell whether 'somebody'"):
        OptOutList.load(str(bad))
    bad_csv = tmp_path / "d.csv"
    bad_csv.write_text("type,value\nemail,a@b.c\n")
    with pytest.raises(OptOutListError, match=r"d.csv: line 2: expected type,value"):
        OptOutList.load(str(bad_csv))


def test_reapply_to_shards_copies_columns_and_records_removals(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_fetch_shards(src, 12, compression="zstd")
    (src / "empty_caption_latents.npy").write_bytes(b"sidecar")
    (tmp_path / "list.txt").write_text("3\n1001@N00\n")  # photo 3, and author of photos 1, 4, 7, 10
    rc = optout.main([str(src), str(dst), "--list", str(tmp_path / "list.txt")])
    assert rc == 0 and "kept 7, removed 5" in capsys.readouterr().out
    kept = {k: s for k, s in iter_mds(str(dst), raw=True)}
    assert sorted(kept, key=int) == ["2", "5", "6", "8", "9", "11", "12"]
    original = {k: s for k, s in iter_mds(str(src), raw=True)}
    assert all(kept[k] == original[k] for k in kept)  # every column, image bytes included, unchanged
    assert (dst / "empty_caption_latents.npy").read_bytes() == b"sidecar"
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["stage"] == "optout" and manifest["counts"]["kept"] == 7
    assert manifest["counts"]["removed"] == {"opted_out_photo_id": 1, "opted_out_author_id": 4}
    removed = {e["key"]: e["reason"] for e in manifest["counts"]["removed_keys"]}
    assert removed == {"3": "opted_out_photo_id", "1": "opted_out_author_id", "4": "opted_out_author_id",
                       "7": "opted_out_author_id", "10": "opted_out_author_id"}
    assert manifest["flags"]["list_entries"] == 2
    # Re-running is a no-op: nothing retried, nothing duplicated.
    counts = apply_to_shards(str(src), str(dst), OptOutList.load(str(tmp_path / "list.txt")))
    assert counts["written"] == 7 and count_samples(str(dst)) == 7


def test_cli_errors_are_one_line(tmp_path, capsys):
    src = tmp_path / "src"
    write_fetch_shards(src, 2)
    (tmp_path / "list.txt").write_text("1\n")
    assert optout.main([str(src), str(src), "--list", str(tmp_path / "list.txt")]) == 2
    assert "must be a new folder" in capsys.readouterr().err
    assert optout.main([str(src), str(tmp_path / "o"), "--list", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt: opt-out list not found" in capsys.readouterr().err
    assert optout.main([str(tmp_path / "nothing"), str(tmp_path / "o2"), "--list", str(tmp_path / "list.txt")]) == 2
    assert "index.json not found" in capsys.readouterr().err

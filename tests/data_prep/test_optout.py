import json

import pytest
from yfcc_fixtures import write_fetch_shards

from data_prep import optout
from data_prep.flickr_ids import base58_decode, base58_encode
from data_prep.optout import OptOutList, OptOutListError, apply_to_shards
from data_prep.shards import count_samples, iter_mds


NSID = "12345678@N00"
PID = 2868456581


def _load(tmp_path, text, name="optout.txt", **kwargs):
    path = tmp_path / name
    path.write_text(text)
    return OptOutList.load(str(path), **kwargs)


def test_plain_lines_strip_comments_and_canonicalise(tmp_path):
    """Issue 16 defect 1: these entries were stored verbatim and matched nothing."""
    opt = _load(tmp_path, "# removal requests\n\nphoto:1001 # email 2024-01\nauthor:12345678@N00 # john\n"
                          "photo:02868456581\n6985418911.0\nauthor:45678901@n02,\n  PHOTO: 77  \n\"905\"\n"
                          "Author:99999999@N01;\n")
    assert opt.photo_ids == {1001, PID, 6985418911, 77, 905}
    assert opt.author_ids == {NSID, "45678901@N02", "99999999@N01"} and len(opt) == 8 and len(opt.sha256) == 64
    assert opt.match(photo_id="2868456581") == "photo_id" and opt.match(photo_id=PID) == "photo_id"
    assert opt.match(photo_id="1", author_id="12345678@n00") == "author_id"
    assert opt.match(photo_id="1", author_id="1@N00", page_url="http://www.flickr.com/photos/45678901@N02/1/") \
        == "author_id"
    assert opt.match(photo_id="1", author_id="1@N00", page_url="http://flickr.com/photos/1@N00/1/") is None


FLICKR_URLS = [  # (entry, ("photo", id) | ("author", nsid)) -- issue 16 defect 2
    ("https://www.Flickr.com/photos/12345678@N00/", ("author", NSID)),
    ("HTTPS://WWW.FLICKR.COM/PHOTOS/12345678@n00", ("author", NSID)),
    ("flickr.com/people/12345678@N00/", ("author", NSID)),
    ("https://www.flickr.com/photos/12345678@N00/page3", ("author", NSID)),
    ("https://m.flickr.com/photos/12345678@N00/", ("author", NSID)),
    ("https://www.flickr.com/photos/12345678@N00/2868456581/", ("photo", PID)),
    ("http://WWW.Flickr.com/Photos/someone/2868456581", ("photo", PID)),  # alias irrelevant: the id is global
    ("https://www.flickr.com/photos/12345678@N00/2868456581/in/album-72157600000000000/", ("photo", PID)),
    ("https://www.flickr.com/photos/12345678@N00/2868456581/in/photostream/lightbox/", ("photo", PID)),
    ("https://www.flickr.com/photos/12345678@N00/with/2868456581/", ("photo", PID)),
    ("https://secure.flickr.com/photos/12345678@N00/2868456581/sizes/o/?x=1#c", ("photo", PID)),
    ("https://m.flickr.com/photos/12345678@N00/2868456581/", ("photo", PID)),
    ("https://m.flickr.com/#/photos/12345678@N00/2868456581/", ("photo", PID)),
    ("https://www.flickr.com/photo.gne?id=2868456581", ("photo", PID)),
    ("http://flic.kr/p/" + base58_encode(PID), ("photo", PID)),
    ("HTTPS://FLIC.KR/p/" + base58_encode(PID) + "/", ("photo", PID)),
    ("https://live.staticflickr.com/3044/2868456581_9e1ec7a8a4_o_d.jpg", ("photo", PID)),
    ("http://farm4.staticflickr.com/3044/2868456581_9E1EC7A8A4_b.jpg", ("photo", PID)),
    ("http://farm4.static.flickr.com/3044/2868456581_9e1ec7a8a4.jpg", ("photo", PID)),
    ("https://c1.staticflickr.com/4/3044/2868456581_9e1ec7a8a4_z.jpg?zz=1", ("photo", PID)),
    ("https://farm4.staticflickr.com/3044/2868456581_2bd6f8a41e_o.PNG", ("photo", PID)),
]


@pytest.mark.parametrize("url,target", FLICKR_URLS)
def test_every_flickr_url_form_resolves(tmp_path, url, target):
    opt = _load(tmp_path, url + "\n")
    assert (opt.photo_ids, opt.author_ids) == (({target[1]}, set()) if target[0] == "photo" else (set(), {target[1]}))
    assert not opt.urls  # resolved, not matched as a string
    row = {"photo_id": str(PID), "author_id": NSID, "page_url": f"http://www.flickr.com/photos/{NSID}/{PID}/",
           "download_url": f"http://farm4.staticflickr.com/3044/{PID}_9e1ec7a8a4.jpg"}
    assert opt.match(**row) is not None
    assert opt.match(photo_id="1", author_id="1@N00", page_url="http://www.flickr.com/photos/1@N00/1/",
                     download_url="http://farm4.staticflickr.com/1/1_ab.jpg") is None


def test_base58_matches_flickrs_alphabet():
    assert base58_decode("2") == 1 and base58_decode("21") == 58 and base58_decode("2a") == 67
    assert base58_decode("Z") == 57 and base58_encode(PID) != "" and base58_decode(base58_encode(PID)) == PID
    with pytest.raises(ValueError, match="base58"):
        base58_decode("0OIl")


REFUSED = [  # (list text, what the one-line error must say)
    ("author:janedoe\n", "'janedoe' is a Flickr alias"),
    ("https://www.flickr.com/photos/janedoe/\n", "'janedoe' is a Flickr alias"),
    ("https://www.flickr.com/photos/janedoe/albums/72157600000000000\n", "albums URL names a set of photos"),
    ("https://www.flickr.com/photos/12345678@N00/favorites/\n", "favorites URL names a set"),
    ("https://www.flickr.com/groups/somegroup/\n", "not a photo, photostream or profile page"),
    ("https://flic.kr/ps/abc\n", "not a photo short link"),
    ("https://live.staticflickr.com/3044/not_a_photo.jpg\n", "static URL"),
    ("somebody\n", "cannot tell whether"),
    ("123,456\n", "several values on one line"),
    ("url:not a url\n", "not an http(s) URL"),
    ("photo:\n", "empty value"),
    ("photo:12345678@N00\n", "not a photo id"),
    ("author:12345678\n", "not an NSID"),
    ("photo_id,author_id\n2.868456581E9,\n", "scientific notation"),
    ("photo_id,author_id\nhttps://www.flickr.com/photos/12345678@N00/,\n", "an author URL given as photo"),
    ("photo_id,author_id\n,https://www.flickr.com/photos/x/2868456581/\n", "a photo URL given as author"),
    ("photo_id,notes\n1,ok\n#1001,hash sign\n", "'#1001': not a photo id"),  # a data row, not a comment
    ("type,value\nphoto_id,https://www.flickr.com/photos/12345678@N00/\n", "an author URL given as photo"),
]


@pytest.mark.parametrize("text,why", REFUSED)
def test_unresolvable_entries_stop_the_run_with_one_line(tmp_path, text, why):
    path = tmp_path / "list.txt"
    path.write_text(text)
    with pytest.raises(OptOutListError) as info:
        OptOutList.load(str(path))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: line ") and why in message, message
    skipped = OptOutList.load(str(path), skip_unresolvable=True)
    assert len(skipped.skipped) >= 1 and skipped.skipped[0]["why"] and skipped.skipped[0]["line"] >= 1


def test_aliases_resolve_only_through_an_alias_map(tmp_path):
    (tmp_path / "aliases.csv").write_text("alias,nsid\njanedoe, 12345678@n00  # from her profile\n"
                                          "https://www.flickr.com/photos/bob_s/,99999999@N01\n")
    opt = _load(tmp_path, "author:JaneDoe\nhttps://flickr.com/photos/bob_s/\n", alias_map=str(tmp_path / "aliases.csv"))
    assert opt.author_ids == {NSID, "99999999@N01"} and opt.alias_map_sha256
    # A row whose page URL carries the alias (not the NSID) is matched through the map too.
    assert opt.match(photo_id="5", author_id="", page_url="http://www.flickr.com/photos/janedoe/5/") == "author_id"
    (tmp_path / "bad.csv").write_text("janedoe,not-an-nsid\n")
    with pytest.raises(OptOutListError, match=r"bad.csv: line 1: expected a Flickr alias and an NSID"):
        _load(tmp_path, "author:janedoe\n", alias_map=str(tmp_path / "bad.csv"))


def test_csv_lists(tmp_path):
    opt = _load(tmp_path, "# exported 2024-05\nphoto_id,author_id,url,notes\n2868456581.0,,,spreadsheet float\n"
                          ",12345678@n00 # john,,\n0905,,https://example.org/img.png?x=1,\n"
                          "https://www.flickr.com/photos/x/6985418911/,,,photo URL in the photo column\n",
                name="a.csv")
    assert opt.photo_ids == {PID, 905, 6985418911} and opt.author_ids == {NSID}
    assert opt.urls == {"example.org/img.png"}
    assert opt.match(photo_id="1", download_url="HTTPS://example.org/img.png") == "download_url"
    typed = _load(tmp_path, "type,value\nphoto_id,44 # note\nurl,http://www.flickr.com/photos/55@N00/\n"
                            "AUTHOR,66@n01\n", name="b.txt")
    assert typed.photo_ids == {44} and typed.author_ids == {"55@N00", "66@N01"}
    tsv = _load(tmp_path, "photo_id\tauthor_id\n7\t8@N00\n", name="c.tsv")
    assert tsv.photo_ids == {7} and tsv.author_ids == {"8@N00"}
    with pytest.raises(OptOutListError, match=r"d.csv: line 2: expected type,value"):
        _load(tmp_path, "type,value\nemail,a@b.c\n", name="d.csv")


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


def test_rerun_with_another_list_is_refused_and_overwrite_starts_over(tmp_path, capsys):
    """Issue 16 defect 3: a re-run with another list reported "removed 0" and recorded the new list's sha256
    while the shards still held photos it removes."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_fetch_shards(src, 6)
    (tmp_path / "a.txt").write_text("photo:1\n")
    (tmp_path / "b.txt").write_text("photo:2\n")
    assert optout.main([str(src), str(dst), "--list", str(tmp_path / "a.txt")]) == 0
    capsys.readouterr()
    assert optout.main([str(src), str(dst), "--list", str(tmp_path / "b.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "opt-out list differ" in err and "--overwrite" in err
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["flags"]["list"] == str(tmp_path / "a.txt")  # still names the list its shards were made with
    assert optout.main([str(src), str(dst), "--list", str(tmp_path / "b.txt"), "--overwrite"]) == 0
    assert sorted(k for k, _ in iter_mds(str(dst))) == ["1", "3", "4", "5", "6"]
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["fingerprint"]["optout"]["sha256"] == manifest["flags"]["list_sha256"]
    assert manifest["flags"]["list"] == str(tmp_path / "b.txt")
    # A changed input is refused too (its content, not its path, is fingerprinted).
    write_fetch_shards(tmp_path / "src2", 7)
    assert optout.main([str(tmp_path / "src2"), str(dst), "--list", str(tmp_path / "b.txt")]) == 2
    assert "input content differ" in capsys.readouterr().err

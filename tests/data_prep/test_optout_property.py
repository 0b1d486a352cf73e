"""Property (issue 16, "Done when"): for every photo of a metadata sample and every accepted spelling of its id,
page URL, download URL and author, in every list format, the entry removes exactly the photos it names, both in
data_prep.filter_metadata and when data_prep.optout re-applies the list to finished shards."""
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yfcc_fixtures import write_tsv, yfcc_row

from data_prep.filter_metadata import run_filter
from data_prep.flickr_ids import base58_encode
from data_prep.metadata import YFCC_COLUMNS, iter_filtered
from data_prep.optout import apply_to_shards, OptOutList
from data_prep.shards import iter_mds

AUTHORS = ["12345678@N00", "99999999@N01", "35468159852@N01"]
# photo id -> (author, server, secret): ids of assorted lengths, one author with several photos.
PHOTOS = {2868456581: (0, 3044, "9e1ec7a8a4"), 6985418911: (0, 7205, "df7747990d"), 12: (1, 1, "0a1b2c3d4e"),
          905: (1, 2, "ffee001122"), 3420312154: (2, 3631, "1c7c8bd25f"), 31415926535: (1, 65535, "abcdef0123")}


def _rows():
    rows = []
    for pid, (author, server, secret) in PHOTOS.items():
        row = yfcc_row(pid, "by", uid=AUTHORS[author])
        row[YFCC_COLUMNS.index("downloadurl")] = f"http://farm{server % 9 + 1}.staticflickr.com/{server}/{pid}_{secret}.jpg"
        row[YFCC_COLUMNS.index("secret")] = secret
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The metadata as a YFCC TSV, and the shards filter_metadata + a fetch would make of it (read-only)."""
    from data_prep.schema import FETCH_COLUMNS
    from data_prep.shards import ResumableMDSWriter, merge_ranks

    root = tmp_path_factory.mktemp("optout_property")
    write_tsv(root / "meta.tsv", _rows())
    run_filter([str(root / "meta.tsv")], str(root / "filtered"), "C", progress=False)
    rows = list(iter_filtered(str(root / "filtered")))
    assert len(rows) == len(PHOTOS)
    with ResumableMDSWriter(str(root / "shards"), {"photo_id": "str", "author_id": "str", "page_url": "str",
                                                   "download_url": "str", "license": "str"}) as writer:
        for row in rows:
            writer.write(row["photo_id"], {c: row[c] for c in ("author_id", "page_url", "download_url", "license")})
    merge_ranks(str(root / "shards"))
    assert set(FETCH_COLUMNS) >= {"photo_id", "author_id", "page_url", "download_url", "license"}
    return root


_scheme = st.sampled_from(["http://", "https://", "HTTPS://", "Http://", "", "//"])
_page_host = st.sampled_from(["www.flickr.com", "flickr.com", "WWW.Flickr.COM", "m.flickr.com", "secure.flickr.com"])
_page_tail = st.sampled_from(["", "/", "/in/album-72157600000000000/", "/in/photostream/", "/sizes/o/",
                              "/?foo=1#comments", "/lightbox/", "/in/pool-123@N20"])
_case = st.sampled_from([str, str.lower, str.upper])


@st.composite
def photo_spelling(draw, pid):
    """An entry naming photo `pid` and how the list must classify it ("photo" or "url" column)."""
    author, server, secret = PHOTOS[pid]
    nsid = AUTHORS[author]
    kind = draw(st.sampled_from(["id", "page", "with", "gne", "short", "download"]))
    if kind == "id":
        return draw(st.sampled_from([f"{pid}", f"0{pid}", f"00{pid}", f"{pid}.0", f"{pid}.00"])), "photo"
    scheme = draw(_scheme)
    if kind == "page":
        user = draw(st.sampled_from([nsid, nsid.lower(), "some-alias"]))
        return f"{scheme}{draw(_page_host)}/photos/{user}/{pid}{draw(_page_tail)}", "url"
    if kind == "with":
        return f"{scheme}{draw(_page_host)}/photos/{nsid}/with/{pid}/", "url"
    if kind == "gne":
        return f"{scheme}www.flickr.com/photo.gne?id={pid}", "url"
    if kind == "short":
        return f"{scheme}{draw(st.sampled_from(['flic.kr', 'FLIC.KR', 'www.flic.kr']))}/p/{base58_encode(pid)}", "url"
    host = draw(st.sampled_from([f"farm{server % 9 + 1}.staticflickr.com/{server}", f"live.staticflickr.com/{server}",
                                 f"farm{server % 9 + 1}.static.flickr.com/{server}", f"c1.staticflickr.com/4/{server}"]))
    suffix = draw(st.sampled_from(["", "_o", "_b", "_o_d", "_z_d", "_m", "_3k"]))
    ext = draw(st.sampled_from([".jpg", ".JPG", ".png", ".jpeg"]))
    query = draw(st.sampled_from(["", "?zz=1"]))
    return f"{scheme}{host}/{pid}_{draw(_case)(secret)}{suffix}{ext}{query}", "url"


@st.composite
def author_spelling(draw, nsid):
    kind = draw(st.sampled_from(["nsid", "page", "people"]))
    if kind == "nsid":
        return draw(_case)(nsid), "author"
    scheme, host = draw(_scheme), draw(_page_host)
    if kind == "page":
        return f"{scheme}{host}/photos/{draw(_case)(nsid)}{draw(st.sampled_from(['', '/', '/page2', '/?x=1']))}", "url"
    return f"{scheme}{host}/people/{nsid}/", "url"


@st.composite
def list_entry(draw):
    """(file name, file text, photo ids the entry names)."""
    if draw(st.booleans()):
        pid = draw(st.sampled_from(sorted(PHOTOS)))
        value, column = draw(photo_spelling(pid))
        named, kind = {pid}, "photo"
    else:
        author = draw(st.integers(0, len(AUTHORS) - 1))
        value, column = draw(author_spelling(AUTHORS[author]))
        named, kind = {p for p, (a, _, _) in PHOTOS.items() if a == author}, "author"
    layout = draw(st.sampled_from(["plain", "prefixed", "columns", "typed"]))
    comment = draw(st.sampled_from(["", "  # request 2024-01", " #x"]))
    trail = draw(st.sampled_from(["", ",", ";"])) if layout in ("plain", "prefixed") else ""
    if layout == "plain":
        return "list.txt", f"# removal requests\n\n{value}{trail}{comment}\n", named
    if layout == "prefixed":
        prefix = draw(st.sampled_from([kind, kind.upper(), f"{kind}_id", "url"] if column == "url" else
                                      [kind, kind.upper(), f"{kind}_id"]))
        return "list.txt", f"{prefix}:{value}{trail}{comment}\n", named
    if layout == "columns":
        name = draw(st.sampled_from(["url", f"{kind}_id"])) if column == "url" else f"{kind}_id"
        header = ["photo_id", "author_id", "url", "notes"]
        cells = ["" if h != name else value + comment for h in header]
        return "list.csv", ",".join(header) + "\n" + ",".join(cells[:3]) + ",by email\n", named
    typ = draw(st.sampled_from(["url", f"{kind}_id"])) if column == "url" else f"{kind}_id"
    return "list.csv", f"type,value\n{typ},{value}{comment}\n", named


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(entry=list_entry())
def test_an_entry_removes_exactly_the_photos_it_names(sample, entry):
    name, text, named = entry
    expected = sorted(str(p) for p in PHOTOS if p not in named)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text)
        opt = OptOutList.load(str(path))
        assert len(opt) == 1 and not opt.urls, (text, opt)
        run_filter([str(sample / "meta.tsv")], str(Path(tmp) / "filtered"), "C", optout_path=str(path),
                   progress=False)
        assert sorted(r["photo_id"] for r in iter_filtered(str(Path(tmp) / "filtered"))) == expected, text
        apply_to_shards(str(sample / "shards"), str(Path(tmp) / "shards"), opt)
        assert sorted(k for k, _ in iter_mds(str(Path(tmp) / "shards"))) == expected, text

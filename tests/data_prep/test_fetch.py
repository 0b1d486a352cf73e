import hashlib
import io
import json
import struct
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from streaming import StreamingDataset

from data_prep import shards
from data_prep.fetch import FetchConfig, bucket_name, main, read_metadata, run_fetch
from data_prep.images import ImageConfig, encode_jpeg, process_image
from data_prep.schema import FETCH_COLUMNS, FILTERED_METADATA_DIR, MANIFEST_FILE

ATTRIBUTION_TEXT = ["photo_id", "title", "description", "author_name", "author_id", "page_url", "download_url",
                    "license", "license_name", "license_url"]


def jpeg(width: int, height: int, seed: int) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((width, height), 20 + seed).convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


def bomb_png() -> bytes:
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # 10 gigapixels declared, ~100 bytes sent
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def row(photo_id: str, url: str, license_: str = "CC-BY") -> dict:
    return {"photo_id": photo_id, "download_url": url, "page_url": f"https://www.flickr.com/photos/x/{photo_id}",
            "author_name": f"Author {photo_id} ünïcode", "author_id": f"{photo_id}@N01", "title": f"title {photo_id}",
            "description": f"a photo, id {photo_id}", "license": license_,
            "license_name": {"CC-BY": "Attribution License", "CC0": "Public Domain Dedication"}[license_],
            "license_url": {"CC-BY": "https://creativecommons.org/licenses/by/2.0/",
                            "CC0": "https://creativecommons.org/publicdomain/zero/1.0/"}[license_]}


FAST = dict(workers=4, timeout=0.3, retries=1, backoff=0.01, max_bytes=2**20, max_side=256, part_size=4,
            progress=False, allow_private_addresses=True)  # the test server is on 127.0.0.1


@pytest.fixture
def site(http_server):
    """Serve one of every kind of answer; return (server, metadata rows, bytes of each good image)."""
    s = http_server
    good = {"large": jpeg(900, 600, 1), "small": jpeg(200, 150, 2), "tall": jpeg(300, 700, 3),
            "flaky": jpeg(320, 320, 4), "moved": jpeg(640, 480, 5)}
    for name in ("large", "small", "tall"):
        s.routes[f"/{name}.jpg"] = s.reply(200, good[name], {"Content-Type": "image/jpeg"})
    s.routes["/copy-of-large.jpg"] = s.reply(200, good["large"])
    s.routes["/flaky.jpg"] = s.failing_first(1, 500, s.reply(200, good["flaky"]))
    s.routes["/target.jpg"] = s.reply(200, good["moved"])
    s.routes["/moved.jpg"] = s.redirect("/target.jpg")
    s.routes["/to-file.jpg"] = s.redirect("file:///etc/passwd")
    s.routes["/to-ftp.jpg"] = s.redirect("ftp://127.0.0.1/x.jpg")
    s.routes["/slow.jpg"] = s.delayed(1.0, s.reply(200, good["small"]))
    s.routes["/huge.jpg"] = s.endless_body()
    s.routes["/truncated.jpg"] = s.reply(200, jpeg(400, 300, 6)[:2500])
    s.routes["/page.html"] = s.reply(200, b"<!doctype html><p>moved</p>", {"Content-Type": "text/html"})
    s.routes["/empty.jpg"] = s.reply(200, b"")
    s.routes["/bomb.png"] = s.reply(200, bomb_png())
    rows = [
        row("large", s.url("/large.jpg")), row("small", s.url("/small.jpg"), "CC0"), row("tall", s.url("/tall.jpg")),
        row("flaky", s.url("/flaky.jpg"), "CC0"), row("moved", s.url("/moved.jpg")),
        row("to-file", s.url("/to-file.jpg")),
        row("to-ftp", s.url("/to-ftp.jpg"), "CC0"), row("slow", s.url("/slow.jpg")),
        row("missing", s.url("/missing.jpg"), "CC0"), row("huge", s.url("/huge.jpg")),
        row("truncated", s.url("/truncated.jpg")), row("html", s.url("/page.html")),
        row("empty", s.url("/empty.jpg")), row("bomb", s.url("/bomb.png")), row("no-url", "", "CC0"),
        row("copy", s.url("/copy-of-large.jpg")),  # same bytes as "large", in a later run than it
    ]
    return s, rows, good


EXPECTED_SKIPS = {"duplicate_sha256": 1, "bad_scheme": 2, "timeout": 1, "http_404": 1, "too_large": 1,
                  "truncated": 1, "not_an_image": 1, "empty": 1, "decompression_bomb": 1, "no_url": 1}
EXPECTED_KEPT = {"large", "small", "tall", "flaky", "moved"}


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def read_back(local) -> dict:
    dataset = StreamingDataset(local=str(local), shuffle=False, batch_size=1)
    return {dataset[i]["photo_id"]: dataset[i] for i in range(len(dataset))}


def test_every_reason_is_counted_and_good_images_keep_their_attribution(site, tmp_path):
    server, rows, good = site
    metadata = write_jsonl(tmp_path / "meta.jsonl", rows)
    out = tmp_path / "out"
    # First a partial run (as if stopped), then the full run must finish the rest without refetching.
    run_fetch(metadata, str(out), FetchConfig(**FAST, limit=7), rank=0, world=1)
    assert server.hits["/large.jpg"] == 1 and server.hits["/copy-of-large.jpg"] == 0
    counts = run_fetch(metadata, str(out), FetchConfig(**FAST), rank=0, world=1)

    assert counts["skipped"] == EXPECTED_SKIPS
    assert counts["written"] == len(EXPECTED_KEPT)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["stage"] == "fetch"
    assert manifest["counts"]["skipped"] == EXPECTED_SKIPS
    assert manifest["counts"]["written_per_license"] == {"CC-BY": 3, "CC0": 2}
    assert manifest["counts"]["skipped_per_license"] == {"CC-BY": 8, "CC0": 3}
    assert manifest["flags"]["max_side"] == 256

    # Every URL was asked for once (the flaky one twice, the slow one once per attempt), none again on resume.
    assert server.hits["/large.jpg"] == server.hits["/copy-of-large.jpg"] == 1
    assert server.hits["/flaky.jpg"] == 2 and server.hits["/slow.jpg"] == 2
    assert server.hits["/missing.jpg"] == 1

    samples = read_back(out)
    assert set(samples) == EXPECTED_KEPT
    by_id = {r["photo_id"]: r for r in rows}
    for photo_id, sample in samples.items():
        assert set(sample) == set(FETCH_COLUMNS)
        for column in ATTRIBUTION_TEXT:
            assert sample[column] == by_id[photo_id][column], (photo_id, column)
        assert sample["sha256"] == hashlib.sha256(good[photo_id]).hexdigest()
        original = Image.open(io.BytesIO(good[photo_id]))
        assert (sample["orig_width"], sample["orig_height"]) == original.size
        image = sample["image"]
        assert image.mode == "RGB" and min(image.size) == min(256, min(original.size))
    assert samples["large"]["image"].size == (384, 256)  # 900x600 shrunk on its short side
    assert samples["small"]["image"].size == (200, 150)  # never upscaled
    # The stored bytes are the worker's own encode at the configured quality, not a second re-compression.
    stored = {key: s["image"].data for key, s in shards.iter_mds(str(out), columns=["image"], raw=True)}
    assert stored["large"] == encode_jpeg(process_image(good["large"], ImageConfig(max_side=256)).image, 90)

    # A third run has nothing left to do and fetches nothing.
    before = sum(server.hits.values())
    again = run_fetch(metadata, str(out), FetchConfig(**FAST), rank=0, world=1)
    assert sum(server.hits.values()) == before and again == counts


def write_filter_output(folder, rows, files=2):
    """What data_prep.filter_metadata leaves: photos/*.parquet (schema.FILTERED_METADATA_COLUMNS) + manifest."""
    (folder / FILTERED_METADATA_DIR).mkdir(parents=True)
    full = [{**r, "width": 0, "height": 0} for r in rows]
    for i in range(files):
        chunk = full[i * len(full) // files:(i + 1) * len(full) // files]
        pq.write_table(pa.Table.from_pylist(chunk), folder / FILTERED_METADATA_DIR / f"part-000-{i:06d}.parquet")
    (folder / MANIFEST_FILE).write_text(json.dumps({"stage": "filter_metadata", "counts": {"kept": len(rows)}}))
    return str(folder)


def test_buckets_by_resolution_from_filter_metadata_output(site, tmp_path):
    server, rows, _ = site
    metadata = write_filter_output(tmp_path / "filtered", rows)
    out = tmp_path / "out"
    run_fetch(metadata, str(out), FetchConfig(**{**FAST, "bucket_edges": (256, 512)}), rank=0, world=1)

    manifest = json.loads((out / MANIFEST_FILE).read_text())
    # Original short sides: large 600, small 150, tall 300, flaky 320, moved 480.
    assert manifest["counts"]["written_per_bucket"] == {"short_0_256": 1, "short_256_512": 3, "short_512_up": 1}
    assert manifest["counts"]["skipped"] == EXPECTED_SKIPS
    assert set(read_back(out / "short_256_512")) == {"tall", "flaky", "moved"}
    assert set(read_back(out / "short_512_up")) == {"large"}
    assert set(read_back(out / "short_0_256")) == {"small"}
    assert manifest["input_manifests"][metadata]["stage"] == "filter_metadata"  # provenance chains on
    assert bucket_name(255, (256, 512)) == "short_0_256" and bucket_name(512, (256, 512)) == "short_512_up"


def test_ranks_each_fetch_their_share_and_merge_into_one_dataset(site, tmp_path):
    server, rows, _ = site
    kept_rows = [r for r in rows if r["photo_id"] in EXPECTED_KEPT]
    metadata = write_jsonl(tmp_path / "meta.jsonl", kept_rows)
    out = tmp_path / "out"
    shares = {}
    for rank in (1, 0):  # rank 0 last: it merges and writes the manifest after the (no-op) barrier
        shares[rank] = run_fetch(metadata, str(out), FetchConfig(**FAST), rank=rank, world=2)["written"]
    assert shares == {0: 2, 1: 3}
    assert sorted(p.name[:5] for p in out.glob("r*_p*")) == ["r0000", "r0001"]
    assert shards.count_samples(str(out)) == 5
    assert set(read_back(out)) == EXPECTED_KEPT
    assert all(server.hits[f"/{name}.jpg"] == 1 for name in ("large", "small", "tall"))


def test_read_metadata_rejects_bad_input_naming_the_row(tmp_path):
    ok = row("a", "http://127.0.0.1/a.jpg")
    dup = write_jsonl(tmp_path / "dup.jsonl", [ok, row("b", "x"), ok])
    with pytest.raises(ValueError, match=r"dup.jsonl row 2: photo_id 'a' repeats row 0"):
        read_metadata(dup)
    missing = write_jsonl(tmp_path / "missing.jsonl", [ok, {"photo_id": "c"}])
    with pytest.raises(ValueError, match=r"missing.jsonl line 2: missing columns \['download_url', 'license'\]"):
        read_metadata(missing)
    assert [r["photo_id"] for r in read_metadata(write_jsonl(tmp_path / "m.jsonl", [ok, row("b", "x")]), 1, 2)] == ["b"]
    # Across the parquet files of a filter output: the error names the file and its row.
    folder = write_filter_output(tmp_path / "filtered", [row("a", "u"), row("b", "u"), row("c", "u"), row("b", "u")])
    with pytest.raises(ValueError, match=r"part-000-000001.parquet row 1: photo_id 'b' repeats .*000000.parquet row 1"):
        read_metadata(folder)
    fine = write_filter_output(tmp_path / "fine", [row(str(i), "u") for i in range(7)], files=3)
    shares = [[r["photo_id"] for r in read_metadata(fine, rank, 3)] for rank in range(3)]
    assert shares == [["0", "1"], ["2", "3"], ["4", "5", "6"]]


def test_cli_exits_with_one_line_on_bad_input(tmp_path, capsys):
    assert main([str(tmp_path / "nope.jsonl"), str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.jsonl: no such file" in err
    # An OUT_DIR written by something else (other columns) is refused in one line, not overwritten.
    other = tmp_path / "other"
    with shards.ResumableMDSWriter(str(other), {"photo_id": "str", "x": "int"}) as writer:
        writer.write("a", {"x": 1})
    metadata = write_jsonl(tmp_path / "m.jsonl", [row("a", "http://127.0.0.1:9/a.jpg")])
    assert main([metadata, str(other), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds earlier work" in err and "no fingerprint.json" in err
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "--bucket-by-resolution" in capsys.readouterr().out


def test_refiltered_metadata_is_refused_and_overwrite_drops_the_opted_out_photo(site, tmp_path, capsys):
    """Issue 16 defect 3: fetch re-run with re-filtered metadata (one photo opted out since) kept that photo,
    and its manifest named only the new input."""
    from yfcc_fixtures import write_tsv, yfcc_row

    from data_prep.filter_metadata import run_filter
    from data_prep.metadata import YFCC_COLUMNS

    server, _, _ = site
    rows = []
    for pid, name in ((1, "large"), (2, "small"), (3, "tall")):
        rows.append(yfcc_row(pid))
        rows[-1][YFCC_COLUMNS.index("downloadurl")] = server.url(f"/{name}.jpg")
    write_tsv(tmp_path / "y.tsv", rows)
    meta, out = str(tmp_path / "meta"), str(tmp_path / "out")
    run_filter([str(tmp_path / "y.tsv")], meta, "C", progress=False)
    argv = [meta, out, "--workers", "2", "--timeout", "2", "--retries", "0", "--max-side", "64", "--no-progress",
            "--allow-private-addresses"]
    assert main(argv) == 0
    assert main(argv) == 0 and server.hits["/large.jpg"] == 1  # same input: resumes, fetches nothing again
    (tmp_path / "optout.txt").write_text("photo:2\n")
    run_filter([str(tmp_path / "y.tsv")], meta, "C", optout_path=str(tmp_path / "optout.txt"), overwrite=True,
               progress=False)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "input content differ" in err and "data_prep.optout" in err
    assert set(read_back(out)) == {"1", "2", "3"}  # untouched by the refused run
    assert main(argv + ["--overwrite"]) == 0
    assert set(read_back(out)) == {"1", "3"}
    manifest = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    upstream = json.loads((tmp_path / "meta" / MANIFEST_FILE).read_text())["fingerprint"]
    assert manifest["fingerprint"]["inputs"][0]["upstream_fingerprint"] == upstream["digest"]
    assert upstream["optout"]["sha256"] == hashlib.sha256(b"photo:2\n").hexdigest()
    assert main(argv + ["--max-side", "32"]) == 2 and "flags max_side differ" in capsys.readouterr().err

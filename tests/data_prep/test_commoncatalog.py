"""data_prep.commoncatalog on a small CommonCatalog snapshot in the published layout (commoncatalog_fixtures)."""
import io
import json
import os
import socket
import struct
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from commoncatalog_fixtures import (EXPECTED_C, LONGITUDE, PART_A, PRIVATE_MARKER, ROTATED, ROWS_A, ROWS_B, SIZES,
                                    jpeg, write_snapshot)
from mds_inputs import REPO, run_killed
from PIL import Image
from streaming import StreamingDataset

from data_prep import schema
from data_prep.commoncatalog import STATE_FILE, main
from data_prep.commoncatalog_layout import PRIVATE_COLUMNS
from data_prep.shards import iter_ledger, iter_mds, part_counts, read_columns

UNVERIFIABLE = "1006"
KEPT_C = {k for k, why in EXPECTED_C.items() if why is None}
SKIPPED_C = {k: why for k, why in EXPECTED_C.items() if why is not None and k != UNVERIFIABLE}


def _argv(snap, out, *extra):
    return [str(snap), "--split", "C", "--out", str(out), "--optout", str(snap.parent / "optout.txt"),
            "--part-size", "3", "--workers", "2", "--no-progress", *extra]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    snap = write_snapshot(root)
    assert main(_argv(snap, root / "out")) == 0
    return snap, root / "out"


def _ledger(out) -> dict:
    return {e["key"]: e.get("reason", "written") for e in iter_ledger(str(out))}


def test_keeps_exactly_the_allowed_rows_and_counts_the_rest(ingested):
    snap, out = ingested
    samples = dict(iter_mds(str(out)))
    assert set(samples) - {UNVERIFIABLE} == KEPT_C
    ledger = _ledger(out)
    for key, why in SKIPPED_C.items():
        assert ledger[key] == why, key
    dup = [k for k, why in ledger.items() if why == "duplicate_photo_id"]
    assert len(dup) == 1 and dup[0].endswith("@rg0#0") and "aspect_ratio_bucket=9-7" in dup[0]
    assert len(ledger) == len(ROWS_A) + len(ROWS_B)  # every row once: kept or skipped with a reason

    manifest = json.loads((out / schema.MANIFEST_FILE).read_text())
    counts = manifest["counts"]
    assert manifest["stage"] == "commoncatalog" and counts["rows"] == len(ledger)
    assert counts["written"] == len(samples)
    unverifiable_dropped = UNVERIFIABLE not in samples
    expected_skips = {}
    for why in list(SKIPPED_C.values()) + ["duplicate_photo_id"]:
        expected_skips[why] = expected_skips.get(why, 0) + 1
    assert sum(counts["skipped"].values()) == sum(expected_skips.values()) + unverifiable_dropped
    assert {k: v for k, v in counts["skipped"].items() if k in expected_skips} == expected_skips
    assert counts["written_per_license"] == {"CC-BY": 4 + (not unverifiable_dropped), "CC-BY-SA": 3}
    assert counts["skipped_per_license"]["CC-BY-ND"] == 1 and counts["skipped_per_license"]["ALL-RIGHTS-RESERVED"] == 1
    assert [p["name"] for p in manifest["flags"]["input_parts"]][0] == PART_A
    assert manifest["flags"]["split"] == "C" and manifest["flags"]["optout_sha256"]


def test_streaming_reads_every_column_with_attribution_and_partitions(ingested):
    _, out = ingested
    assert read_columns(str(out)) == schema.COMMONCATALOG_COLUMNS
    assert not set(PRIVATE_COLUMNS) & set(read_columns(str(out)))
    ds = StreamingDataset(local=str(out), shuffle=False, batch_size=1)
    seen = {}
    for i in range(len(ds)):
        s = ds[i]
        seen[s["photo_id"]] = s
        pid = int(s["photo_id"])
        assert s[schema.BLIP2_CAPTION] == f"a photo of thing {pid}" and s["title"] == f"title {pid}"
        assert s["description"] == f"description of {pid}" and s["author_name"] == f"user {pid % 3}"
        assert s["page_url"] == f"http://www.flickr.com/photos/{pid % 3}@N00/{pid}/"
        assert s["license_url"].startswith("http") and s["license"] in ("CC-BY", "CC-BY-SA")
        assert isinstance(s[schema.IMAGE], Image.Image) and s[schema.IMAGE].mode == "RGB"
        assert (s["orig_width"], s["orig_height"]) == s[schema.IMAGE].size  # no --max-side: stored as is
    assert set(seen) - {UNVERIFIABLE} == KEPT_C
    # the plain-binary part and the image-struct part, each with its own partition values
    assert (seen["1002"]["least_dim_range"], seen["1002"]["aspect_ratio_bucket"]) == ("256-512", "4-3")
    assert (seen["1011"]["least_dim_range"], seen["1011"]["aspect_ratio_bucket"]) == ("512-768", "9-7")
    assert seen["1011"][schema.IMAGE].size == SIZES[1011 % len(SIZES)]


def _jpeg_markers(data: bytes) -> list[int]:
    """Marker bytes of a JPEG's segments up to the scan (APP1 = 0xE1 holds EXIF/XMP, COM = 0xFE)."""
    markers, pos = [], 2
    while pos < len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        markers.append(marker)
        if marker == 0xDA:
            break
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return markers


def test_stored_images_are_upright_and_carry_no_metadata(ingested):
    _, out = ingested
    stored = {k: s[schema.IMAGE].data for k, s in iter_mds(str(out), raw=True)}
    for key, data in stored.items():
        markers = _jpeg_markers(data)
        assert 0xDA in markers and not {0xE1, 0xE2, 0xED, 0xFE} & set(markers), (key, markers)
        assert PRIVATE_MARKER.encode() not in data and b"Exif" not in data
        assert not Image.open(io.BytesIO(data)).getexif()
    rotated = Image.open(io.BytesIO(stored[ROTATED]))
    assert rotated.size == (32, 48)  # stored 48x32 with orientation 6
    r, g, b = rotated.getpixel((28, 4))  # the source's red top-left corner is now top-right
    assert r > 200 and g < 60 and b < 60
    sample = dict(iter_mds(str(out)))[ROTATED]
    assert (sample["orig_width"], sample["orig_height"]) == (32, 48)
    # nothing private anywhere in the output folder: not the exif column, not a coordinate
    for folder, _, files in os.walk(out):
        for name in files:
            blob = open(os.path.join(folder, name), "rb").read()
            assert PRIVATE_MARKER.encode() not in blob and struct.pack("<d", LONGITUDE) not in blob, name
            assert str(LONGITUDE).encode() not in blob, name


def test_fetch_stage_strips_the_same_metadata(tmp_path):
    from data_prep.download import Downloader, DownloadConfig
    from data_prep.fetch import FetchWorker
    from data_prep.images import ImageConfig

    path = tmp_path / "phone.jpg"
    path.write_bytes(jpeg(np.random.default_rng(1), (48, 32), private=True, orientation=6))
    worker = FetchWorker(Downloader(DownloadConfig(allow_local=True)), ImageConfig(max_side=None), 90, None)
    fetched = worker({"download_url": str(path)})
    assert fetched.reason is None and PRIVATE_MARKER.encode() not in fetched.jpeg
    assert not {0xE1, 0xFE} & set(_jpeg_markers(fetched.jpeg))
    assert Image.open(io.BytesIO(fetched.jpeg)).size == (32, 48)


def test_unverifiable_license_url_is_excluded(ingested):
    _, out = ingested
    assert _ledger(out)[UNVERIFIABLE] not in ("written", "license_not_in_split")
    assert _ledger(out)[UNVERIFIABLE].startswith("license_")


def test_nc_split_min_and_max_side(tmp_path, ingested):
    snap, _ = ingested
    out = tmp_path / "nc"
    argv = _argv(snap, out, "--min-side", "31", "--max-side", "20")
    argv[argv.index("C")] = "NC"
    assert main(argv) == 0
    samples = dict(iter_mds(str(out)))
    ledger = _ledger(out)
    assert ledger["1004"] == ledger["1005"] == "license_not_in_split" and ledger[ROTATED] == "written"  # 32 >= 31
    for pid in (1002, 1003, 1011, 1012, 1014, 1015, 1016):  # plain rows with a license NC allows (1003: CC-BY-NC)
        small = min(SIZES[pid % len(SIZES)]) < 31
        assert ledger[str(pid)] == ("too_small" if small else "written"), pid
    assert "1003" in samples and samples["1003"]["license"] == "CC-BY-NC"
    for sample in samples.values():
        assert min(sample[schema.IMAGE].size) == 20  # shrunk, aspect kept
        assert min(sample["orig_width"], sample["orig_height"]) >= 31


def test_bad_inputs_fail_with_one_clear_line(tmp_path, ingested, capsys):
    snap, out = ingested
    assert main([str(tmp_path / "nowhere"), "--split", "C", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().endswith("nowhere: no such file or folder")
    bad = tmp_path / "bad.parquet"
    pq.write_table(pq.read_table(snap.parent / PART_A).drop_columns(["jpg"]), bad)
    assert main([str(bad), "--split", "C", "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bad.parquet" in err and "'jpg'" in err
    # an output made with other flags is not continued
    argv = _argv(snap, out)
    argv[argv.index("C")] = "NC"
    assert main(argv) == 2
    assert "use a new --out" in capsys.readouterr().err and (out / STATE_FILE).exists()


def test_kill_and_resume_loses_and_repeats_nothing(tmp_path, ingested):
    snap, reference = ingested
    out = tmp_path / "out"
    run_killed("data_prep.commoncatalog", 5, _argv(snap, out))
    before = _ledger(out)
    assert 0 < len(before) < len(ROWS_A) + len(ROWS_B)  # some parts published, the rest lost with the kill
    published = {p.name for p in out.iterdir() if p.name.startswith("r0")}
    assert main(_argv(snap, out)) == 0
    assert published < {p.name for p in out.iterdir() if p.name.startswith("r0")}  # kept, then added to
    assert _ledger(out) == _ledger(reference)
    resumed = {k: s[schema.IMAGE].data for k, s in iter_mds(str(out), raw=True)}
    expected = {k: s[schema.IMAGE].data for k, s in iter_mds(str(reference), raw=True)}
    assert resumed == expected
    assert part_counts(str(out)) == part_counts(str(reference))
    assert json.loads((out / schema.MANIFEST_FILE).read_text())["counts"]["written"] == len(expected)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_merge_to_every_row_once(tmp_path, ingested):
    """Two real ranks, as composer/torchrun start them (RANK, WORLD_SIZE, a gloo barrier before rank 0 merges)."""
    snap, reference = ingested
    out = tmp_path / "out"
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    procs = [subprocess.Popen([sys.executable, "-m", "data_prep.commoncatalog", *_argv(snap, out)],
                              env={**env, "PYTHONPATH": str(REPO), "RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert {n[:5] for n in os.listdir(out) if n.startswith("r0")} == {"r0000", "r0001"}  # both ranks wrote
    ds = StreamingDataset(local=str(out), shuffle=False, batch_size=1)
    keys = [ds[i]["photo_id"] for i in range(len(ds))]
    assert len(keys) == len(set(keys))  # every sample once
    assert set(keys) == set(dict(iter_mds(str(reference), columns=["photo_id"])))
    assert _ledger(out) == _ledger(reference)
    assert json.loads((out / schema.MANIFEST_FILE).read_text())["flags"]["world_size"] == 2


def test_latents_and_a_few_training_steps(tmp_path, ingested, models_dir):
    from data_prep import precompute_latents
    from diffusion.datasets.text_image import TextImageDataset
    from diffusion.models.builder import build_stable_diffusion

    _, out = ingested
    latents = tmp_path / "latents"
    m = str(models_dir)
    stats = precompute_latents.main([str(out), str(latents), "--vae", m, "--text-encoder", m, "--tokenizer", m,
                                     "--resolutions", "32", "--batch-size", "4", "--workers", "1", "--no-progress"])
    n = len(dict(iter_mds(str(out), columns=["photo_id"])))
    assert stats["merged_samples"] == n
    columns = read_columns(str(latents))
    assert {"latents_32", schema.CAPTION_LATENTS, schema.BLIP2_CAPTION, "least_dim_range"} <= set(columns)

    torch.manual_seed(0)
    model = build_stable_diffusion(unet="tiny", vae=m, text_encoder=m, tokenizer=m,
                                   empty_caption_latents=str(latents / schema.EMPTY_CAPTION_LATENTS_FILE))
    ds = TextImageDataset(local=str(latents), precomputed_latents=True, resolution=32, batch_size=2, shuffle=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, drop_last=True)
    opt = torch.optim.AdamW(model.unet.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.unet.parameters()]
    steps = 0
    for batch in loader:
        loss = model.loss(model(batch), batch)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if steps == 3:
            break
    assert steps == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.unet.parameters()))


def test_repeated_and_missing_photo_ids_are_keyed_by_their_place(tmp_path):
    from data_prep.commoncatalog import row_keys
    from data_prep.commoncatalog_layout import catalog_table, duplicate_rows, open_parts, units_of

    path = tmp_path / "snap" / "7" / "least_dim_range=256-512" / "aspect_ratio_bucket=1-1" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(catalog_table([{"photoid": pid} for pid in (5, None, 5, 7, 5)]), path, row_group_size=2)
    units = units_of(open_parts([str(tmp_path / "snap")]))
    assert [(u.row_group, u.rows, u.first_row) for u in units] == [(0, 2, 0), (1, 2, 2), (2, 1, 4)]
    assert duplicate_rows(units) == {2, 4}  # the first 5 is kept, wherever its repeats are
    name = "snap/7/least_dim_range=256-512/aspect_ratio_bucket=1-1/part-0.parquet"
    assert units[0].part.name == name and units[0].part.partitions == {"least_dim_range": "256-512",
                                                                       "aspect_ratio_bucket": "1-1"}
    keys = [k for u in units for k in row_keys(u, {2, 4})]
    assert keys == ["5", f"{name}@rg0#1", f"{name}@rg1#0", "7", f"{name}@rg2#0"]

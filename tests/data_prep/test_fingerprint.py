import json
import shutil

import pytest

from data_prep import fingerprint
from data_prep.fingerprint import FingerprintMismatch, make, prepare_output


def test_inputs_are_fingerprinted_by_content_not_path(tmp_path):
    (tmp_path / "a.tsv").write_text("1\t2\n")
    shutil.copy(tmp_path / "a.tsv", tmp_path / "moved.tsv")
    first = make("s", [str(tmp_path / "a.tsv")], {"split": "C"})
    assert make("s", [str(tmp_path / "moved.tsv")], {"split": "C"})["digest"] == first["digest"]
    assert first["inputs"][0]["path"] == str(tmp_path / "a.tsv") and len(first["inputs"][0]["sha256"]) == 64
    (tmp_path / "moved.tsv").write_text("1\t3\n")
    assert make("s", [str(tmp_path / "moved.tsv")], {"split": "C"})["digest"] != first["digest"]
    assert make("s", [str(tmp_path / "a.tsv")], {"split": "NC"})["digest"] != first["digest"]
    assert make("s", [str(tmp_path / "a.tsv")], {"split": "C"}, optout={"sha256": "x"})["digest"] != first["digest"]


def test_a_folder_input_chains_on_its_upstream_fingerprint(tmp_path):
    up = tmp_path / "up"
    up.mkdir()
    (up / "part.parquet").write_bytes(b"rows")
    plain = fingerprint.input_record(str(up))
    assert "sha256" in plain  # no manifest: every file hashed
    (up / "part.parquet").write_bytes(b"other rows")
    assert fingerprint.input_record(str(up))["sha256"] != plain["sha256"]
    (up / "manifest.json").write_text(json.dumps({"fingerprint": {"stage": "filter_metadata", "digest": "d1"}}))
    (up / "index.json").write_text("{}")
    chained = fingerprint.input_record(str(up))
    assert chained["upstream_fingerprint"] == "d1" and chained["upstream_stage"] == "filter_metadata"
    (up / "index.json").write_text('{"shards": []}')  # same upstream run, other samples: a different input
    assert fingerprint.input_record(str(up))["index_sha256"] != chained["index_sha256"]


def test_prepare_output_resumes_refuses_and_overwrites(tmp_path):
    out = tmp_path / "out"
    a = make("s", [], {"x": 1})
    b = make("s", [], {"x": 2})
    prepare_output(str(out), a)
    prepare_output(str(out), b)  # no work yet (e.g. the first run died on a bad flag): the record is replaced
    assert fingerprint.read(str(out))["digest"] == b["digest"]
    (out / "r0000_p00000").mkdir()
    (out / "notes.txt").write_text("mine")
    prepare_output(str(out), b)  # same fingerprint: resume
    with pytest.raises(FingerprintMismatch) as info:
        prepare_output(str(out), a)
    assert "\n" not in str(info.value) and "flags x differ" in str(info.value) and "--overwrite" in str(info.value)
    prepare_output(str(out), a, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["fingerprint.json", "notes.txt"]  # unknown files kept
    assert fingerprint.read(str(out))["digest"] == a["digest"]


def test_work_without_a_fingerprint_is_refused(tmp_path):
    out = tmp_path / "out"
    (out / "r0001_p00000").mkdir(parents=True)
    with pytest.raises(FingerprintMismatch, match="holds earlier work .*no fingerprint.json"):
        prepare_output(str(out), make("s", [], {}))
    # Ranks check one after the other (rank 1 first): both accept the record either wrote.
    other = tmp_path / "other"
    for rank in (1, 0):
        prepare_output(str(other), make("s", [], {}), rank=rank)


def test_a_resolution_bucket_chains_on_the_fetch_manifest(tmp_path):
    fetch_out = tmp_path / "images"
    (fetch_out / "short_512_up").mkdir(parents=True)
    (fetch_out / "short_512_up" / "index.json").write_text('{"shards": []}')
    (fetch_out / "manifest.json").write_text(json.dumps({"fingerprint": {"stage": "fetch", "digest": "f1"},
                                                         "counts": {"written_per_bucket": {"short_512_up": 3}}}))
    record = fingerprint.input_record(str(fetch_out / "short_512_up"))
    assert record["upstream_fingerprint"] == "f1" and record["index_sha256"]

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streaming import StreamingDataset

from data_prep.shards import (ResumableMDSWriter, count_samples, get_rank_world, iter_mds, merge_ranks, part_counts,
                              read_columns, shard_for_rank, write_manifest)

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("shard_worker.py")
COLUMNS = {"photo_id": "str", "value": "int", "license": "str"}


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def _worker(out: Path, n: int, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(out), "--n", str(n), *args], env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _expected_written(n: int) -> list[str]:
    return sorted(f"k{i}" for i in range(n) if i % 7)


def _streaming_keys(out: Path) -> list[str]:
    ds = StreamingDataset(local=str(out), shuffle=False, batch_size=1)
    return sorted(ds[i]["photo_id"] for i in range(len(ds)))


def test_shard_for_rank_covers_every_item_once():
    items = list(range(103))
    for world in (1, 2, 3, 8, 200):
        shares = [shard_for_rank(items, r, world) for r in range(world)]
        assert sum(shares, []) == items
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError):
        shard_for_rank(items, 2, 2)


def test_get_rank_world_reads_env(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert get_rank_world() == (0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert get_rank_world() == (3, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4"):
        get_rank_world()


def test_writer_round_trip_counts_and_rank_shares(tmp_path):
    for compression in (None, "zstd"):
        out = tmp_path / str(compression)
        with ResumableMDSWriter(str(out), COLUMNS, part_size=4, compression=compression, size_limit=200) as w:
            for i in range(23):
                if i % 5 == 0:
                    w.skip(i, "too_small", license="CC-BY-NC")
                else:
                    w.write(i, {"value": i, "license": "CC-BY"})
            assert w.counts()["written"] == 18
        assert merge_ranks(str(out)) == 18 == count_samples(str(out))
        assert read_columns(str(out)) == COLUMNS
        got = {k: s["value"] for k, s in iter_mds(str(out))}
        assert got == {str(i): i for i in range(23) if i % 5}
        shares = [[k for k, _ in iter_mds(str(out), r, 3)] for r in range(3)]
        assert sum(shares, []) == list(got) and all(len(s) == 6 for s in shares)
        assert _streaming_keys(out) == sorted(got)
        assert part_counts(str(out)) == {"written": 18, "skipped": {"too_small": 5},
                                         "written_per_license": {"CC-BY": 18},
                                         "skipped_per_license": {"CC-BY-NC": 5}}


def test_writer_rejects_duplicates_and_bad_samples(tmp_path):
    with ResumableMDSWriter(str(tmp_path), COLUMNS, part_size=2) as w:
        w.write("a", {"value": 1, "license": "CC-BY"})
        w.write("b", {"value": 2, "license": "CC-BY"})  # finishes part 0
        w.skip("c", "broken")
        with pytest.raises(ValueError, match="already written"):
            w.write("a", {"value": 1, "license": "CC-BY"})
        with pytest.raises(ValueError, match="already written"):
            w.skip("c", "broken")
        with pytest.raises(ValueError, match="missing columns"):
            w.write("d", {"value": 1})
        with pytest.raises(ValueError, match="unknown columns"):
            w.write("d", {"value": 1, "license": "CC-BY", "extra": 2})
        with pytest.raises(ValueError, match="differs from key"):
            w.write("d", {"photo_id": "e", "value": 1, "license": "CC-BY"})
    with pytest.raises(ValueError, match="use a new out_dir"):
        ResumableMDSWriter(str(tmp_path), {**COLUMNS, "caption": "str"})
    with pytest.raises(ValueError, match="key column"):
        ResumableMDSWriter(str(tmp_path / "x"), {"value": "int"})
    assert ResumableMDSWriter(str(tmp_path), COLUMNS).done_keys() == {"a", "b", "c"}


def test_rerun_discards_interrupted_part_and_keeps_finished(tmp_path):
    out = tmp_path / "out"
    w = ResumableMDSWriter(str(out), COLUMNS, part_size=3)
    for i in range(5):  # part 0 finished (3 keys), part 1 in progress (2 keys)
        w.write(i, {"value": i, "license": "CC-BY"})
    # Simulate a kill: the writer is abandoned without close(); its temp part stays on disk, and the
    # kernel releases its lock as the process dies.
    assert any(n.startswith("_tmp_") for n in os.listdir(out))
    with pytest.raises(RuntimeError, match="another process is writing rank 0"):
        ResumableMDSWriter(str(out), COLUMNS, part_size=3)
    w._lock.close()
    w2 = ResumableMDSWriter(str(out), COLUMNS, part_size=3)
    assert not any(n.startswith("_tmp_") for n in os.listdir(out))
    assert w2.done_keys() == {"0", "1", "2"}
    with w2:
        for i in range(3, 6):
            w2.write(i, {"value": i, "license": "CC-BY"})
    assert merge_ranks(str(out)) == 6
    assert sorted(k for k, _ in iter_mds(str(out))) == [str(i) for i in range(6)]
    with pytest.raises(RuntimeError, match="closed"):
        w2.write(9, {"value": 9, "license": "CC-BY"})


def test_sigkill_at_random_points_then_rerun_loses_and_duplicates_nothing(tmp_path):
    out, n = tmp_path / "out", 400
    rng = random.Random(0)
    for _ in range(2):
        proc = _worker(out, n, "--part-size", "15", "--sleep", "0.003")
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:  # wait until it is writing, then kill mid-way
            if out.exists() and any(name.startswith("_tmp_") for name in os.listdir(out)) and \
                    any(name.startswith("r0000_p") for name in os.listdir(out)):
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished_before = part_counts(str(out))["written"] + sum(part_counts(str(out))["skipped"].values())
    assert 0 < finished_before < n, "the kills should land mid-stage"
    proc = _worker(out, n, "--merge")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "merged 342" in stdout
    keys = [k for k, _ in iter_mds(str(out))]
    assert len(keys) == len(set(keys)) == 342
    assert sorted(keys) == _expected_written(n)
    assert _streaming_keys(out) == _expected_written(n)
    assert part_counts(str(out))["skipped"] == {"multiple_of_7": 58}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_with_gloo_barrier_merge_to_every_sample_once(tmp_path):
    out, n = tmp_path / "out", 120
    port = str(_free_port())
    procs = [_worker(out, n, "--part-size", "7", "--merge", RANK=str(r), WORLD_SIZE="2",
                     MASTER_ADDR="127.0.0.1", MASTER_PORT=port) for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    ranks = {name[:5] for name in os.listdir(out) if name.startswith("r")}
    assert ranks == {"r0000", "r0001"}
    assert _streaming_keys(out) == _expected_written(n)
    index = json.loads((out / "index.json").read_text())
    assert sum(s["samples"] for s in index["shards"]) == len(_expected_written(n))


def _toy_stage(out: Path, n: int, rank: int, world: int) -> None:
    """In-process twin of shard_worker.py (same keys, same skips)."""
    with ResumableMDSWriter(str(out), COLUMNS, rank=rank, part_size=4) as writer:
        done = writer.done_keys()
        for key in shard_for_rank([f"k{i}" for i in range(n)], rank, world):
            if key not in done:
                i = int(key[1:])
                if i % 7 == 0:
                    writer.skip(key, "multiple_of_7")
                else:
                    writer.write(key, {"value": i, "license": "CC-BY"})


def test_rerun_with_another_world_size_skips_other_ranks_work(tmp_path):
    out, n = tmp_path / "out", 60
    _toy_stage(out, n, rank=1, world=3)  # only rank 1 of a 3-rank run finished
    _toy_stage(out, n, rank=0, world=1)  # then everything again on one process
    assert merge_ranks(str(out)) == len(_expected_written(n))
    assert sorted(k for k, _ in iter_mds(str(out))) == _expected_written(n)
    assert sum(part_counts(str(out))["skipped"].values()) == 9


def test_manifest_records_counts_versions_and_input_manifests(tmp_path):
    src = tmp_path / "src"
    write_manifest(str(src), "filter", ["meta.tsv"], {"kept": 3}, {"split": "C"})
    path = write_manifest(str(tmp_path / "dst"), "fetch", [str(src)], {"written": 2}, {"workers": 4})
    manifest = json.loads(Path(path).read_text())
    assert manifest["stage"] == "fetch" and manifest["counts"] == {"written": 2}
    assert manifest["flags"] == {"workers": 4}
    assert manifest["package_versions"]["mosaicml-streaming"] == "0.13.0"
    assert manifest["input_manifests"][str(src)]["flags"] == {"split": "C"}


def test_raw_copy_keeps_jpeg_bytes_and_column_subset_skips_decoding(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from data_prep.shards import Encoded

    columns = {"photo_id": "str", "image": "jpeg", "license": "str", "latents": "ndarray"}
    src, dst = tmp_path / "src", tmp_path / "dst"
    rng = np.random.default_rng(0)
    with ResumableMDSWriter(str(src), columns, compression="zstd") as w:
        for i in range(5):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=95)
            w.write(f"p{i}", {"image": Image.open(io.BytesIO(buf.getvalue())), "license": "CC-BY",
                              "latents": rng.standard_normal((2, 3)).astype(np.float16)})
    merge_ranks(str(src))
    with ResumableMDSWriter(str(dst), read_columns(str(src))) as w:
        for key, sample in iter_mds(str(src), raw=True):
            assert all(isinstance(v, Encoded) for v in sample.values())
            w.write(key, sample)
    merge_ranks(str(dst))
    a = {k: s for k, s in iter_mds(str(src), raw=True)}
    b = {k: s for k, s in iter_mds(str(dst), raw=True)}
    assert a == b  # every column byte-identical: no JPEG re-compression
    decoded = dict(iter_mds(str(dst)))
    assert decoded["p3"]["latents"].dtype == np.float16 and decoded["p3"]["image"].size == (16, 16)
    subset = dict(iter_mds(str(dst), columns=["license"]))
    assert subset["p0"] == {"license": "CC-BY", "photo_id": "p0"}
    with pytest.raises(KeyError, match="no column"):
        next(iter_mds(str(dst), columns=["caption"]))
    with ResumableMDSWriter(str(tmp_path / "bad"), columns) as w, pytest.raises(ValueError, match="is 'jpeg'"):
        w.write("x", {**a["p0"], "photo_id": "x", "image": Encoded("png", b"123")})

"""data_prep.stage_loop with a model-free flush: batching, resume, byte-exact copies, stats and manifest."""
import io
import json

from mds_inputs import write_inputs
from PIL import Image

from data_prep import schema
from data_prep.shards import Encoded, iter_mds, part_counts, read_columns
from data_prep.stage_loop import run_batched_stage

N, CORRUPT = 7, {2}


def _stage(in_dir, out_dir, batch_size=3, part_size=2, reencode=False):
    """Adds the image width to every sample; undecodable images are skipped. Returns (stats, batches seen)."""
    columns = {**read_columns(str(in_dir)), "width": "int"}
    batches, merged_seen = [], []

    def flush(batch, out, pool):
        batches.append([key for key, _ in batch])
        assert all(isinstance(v, Encoded) for _, sample in batch for v in sample.values())
        for (key, sample), image in zip(batch, pool.map(lambda item: _load(item[1]), batch)):
            if image is None:
                out.skip(key, "undecodable_image", sample)
            elif reencode:  # what a stage must not do: hand streaming a decoded image
                out.write(key, {**sample, schema.IMAGE: image, "width": image.width})
            else:
                out.write(key, {**sample, "width": image.width})

    def manifest_flags(merged):
        merged_seen.append(merged)
        return {"batch_size": batch_size}

    stats = run_batched_stage("toy", str(in_dir), str(out_dir), columns, flush, rank=0, world=1,
                              batch_size=batch_size, part_size=part_size, workers=2, progress_desc="toy",
                              show_progress=False, manifest_flags=manifest_flags)
    return stats, batches, merged_seen


def _load(sample):
    try:
        image = sample[schema.IMAGE].decode()
        image.load()
        return image
    except OSError:
        return None


def test_batches_copy_jpeg_bytes_skip_with_licence_and_write_manifest(tmp_path):
    inputs = write_inputs(tmp_path / "in", N, corrupt=CORRUPT)
    stats, batches, merged_seen = _stage(tmp_path / "in", tmp_path / "out")
    keys = sorted(inputs)
    assert batches == [keys[0:3], keys[3:6], keys[6:7]]  # full batches in input order, then the rest
    written = N - len(CORRUPT)
    assert stats == {"written_this_run": written, "skipped_this_run": 1, "jpeg_copied": written,
                     "jpeg_reencoded": 0, "merged_samples": written}
    out = dict(iter_mds(str(tmp_path / "out"), raw=True))
    assert sorted(out) == [k for i, k in enumerate(keys) if i not in CORRUPT]
    for key, sample in out.items():
        assert sample[schema.IMAGE].data == inputs[key][schema.IMAGE], f"{key}: JPEG re-encoded"
        assert sample["width"].decode() == Image.open(io.BytesIO(inputs[key][schema.IMAGE])).width
        assert sample["license"].decode() == inputs[key]["license"]
    counts = part_counts(str(tmp_path / "out"))
    assert counts["skipped"] == {"undecodable_image": 1}
    assert counts["skipped_per_license"] == {inputs[keys[2]]["license"]: 1}  # decoded, not an Encoded
    assert merged_seen == [written]
    manifest = json.loads((tmp_path / "out" / schema.MANIFEST_FILE).read_text())
    assert manifest["stage"] == "toy" and manifest["flags"] == {"batch_size": 3}
    assert manifest["counts"]["written"] == written and manifest["inputs"] == [str(tmp_path / "in")]


def test_rerun_flushes_only_keys_not_done(tmp_path):
    write_inputs(tmp_path / "in", N, corrupt=CORRUPT)
    _stage(tmp_path / "in", tmp_path / "out")
    stats, batches, _ = _stage(tmp_path / "in", tmp_path / "out")
    assert batches == [] and stats["written_this_run"] == stats["skipped_this_run"] == 0
    assert stats["merged_samples"] == N - len(CORRUPT)


def test_a_decoded_image_written_back_counts_as_reencoded(tmp_path):
    inputs = write_inputs(tmp_path / "in", 3)
    stats, _, _ = _stage(tmp_path / "in", tmp_path / "out", reencode=True)
    assert stats["jpeg_copied"] == 0 and stats["jpeg_reencoded"] == 3
    out = dict(iter_mds(str(tmp_path / "out"), raw=True))
    assert any(out[k][schema.IMAGE].data != inputs[k][schema.IMAGE] for k in out)

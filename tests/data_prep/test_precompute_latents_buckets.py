"""data_prep.precompute_latents --aspect-buckets: each image encoded at its bucket, one sub-dataset per bucket."""
import json

import numpy as np
import pytest
from mds_inputs import SIZES, run_killed, write_inputs
from PIL import Image

from data_prep import schema
from data_prep.precompute_latents import main
from data_prep.shards import count_samples, iter_mds
from data_prep.subset_writers import subset_part_counts
from diffusion.datasets.buckets import BUCKETS_FILE, BucketCrop, bucket_sizes, choose_bucket
from diffusion.models.components import load_vae

N, CORRUPT = 13, {4}
RESOLUTIONS = (16, 32)
MULTIPLE = 8  # the tiny VAE downsamples 4x and the tiny UNet 2x: latents of 8-px multiples divide through


def _argv(in_dir, out_dir, models, *extra):
    return [str(in_dir), str(out_dir), "--vae", str(models), "--text-encoder", str(models), "--tokenizer",
            str(models), "--resolutions", *map(str, RESOLUTIONS), "--batch-size", "4", "--part-size", "3",
            "--workers", "2", "--no-progress", "--aspect-buckets", "--bucket-multiple", str(MULTIPLE), *extra]


@pytest.fixture(scope="module")
def stage(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("bucketed")
    inputs = write_inputs(root / "in", N, caption_column=schema.BLIP2_CAPTION, corrupt=CORRUPT)
    stats = main(_argv(root / "in", root / "out", models_dir))
    return root, inputs, stats


def test_each_image_is_stored_at_its_own_bucket_in_that_buckets_folder(stage, models_dir):
    root, inputs, stats = stage
    info = json.loads((root / "out" / BUCKETS_FILE).read_text())
    assert info["resolutions"] == list(RESOLUTIONS) and info["multiple"] == MULTIPLE
    assert sum(b["num_samples"] for b in info["buckets"].values()) == N - len(CORRUPT) == stats["merged_samples"]
    assert len(info["buckets"]) > 2  # wide, tall and square inputs land in different buckets
    vae = load_vae(str(models_dir), "vae")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    seen = set()
    for name, bucket in info["buckets"].items():
        samples = dict(iter_mds(str(root / "out" / name)))
        assert len(samples) == bucket["num_samples"] == count_samples(str(root / "out" / name))
        for key, sample in samples.items():
            seen.add(key)
            width, height = SIZES[int(key[1:]) % len(SIZES)]
            assert tuple(sample[schema.ORIGINAL_SIZE]) == (height, width)
            for res in RESOLUTIONS:
                h, w = choose_bucket(height, width, bucket_sizes(res, MULTIPLE))
                assert bucket["sizes"][str(res)] == [h, w]
                assert sample[schema.image_latents_key(res)].shape == (4, h // factor, w // factor)
    assert seen == {k for i, k in enumerate(inputs) if i not in CORRUPT}
    # the top-level index covers every bucket, for tools that read the whole set
    assert sorted(dict(iter_mds(str(root / "out")))) == sorted(seen)
    assert subset_part_counts(str(root / "out"), "bucket_")["skipped"] == {"undecodable_image": len(CORRUPT)}


def test_stored_latents_are_the_vae_of_the_bucket_crop_with_the_crop_recorded(stage, models_dir):
    import io

    import torch

    root, inputs, _ = stage
    vae = load_vae(str(models_dir), "vae").eval()
    out = dict(iter_mds(str(root / "out")))
    key = next(k for k in out if SIZES[int(k[1:]) % len(SIZES)] == (64, 20))  # 16:5, much wider than any bucket
    image = Image.open(io.BytesIO(inputs[key][schema.IMAGE])).convert("RGB")
    pixels, (top, left) = BucketCrop(32, MULTIPLE)(image)
    assert top == 0 and left > 0  # cropped at the sides, centred
    assert tuple(out[key][schema.crop_top_left_key(32)]) == (top, left)
    with torch.no_grad():
        expected = (vae.encode(pixels[None]).latent_dist.mean * vae.config.scaling_factor)[0].numpy()
    np.testing.assert_allclose(out[key]["latents_32"].astype(np.float32), expected, rtol=2e-3, atol=2e-3)


def test_killed_bucketed_run_resumes_to_the_same_samples(tmp_path, models_dir, stage):
    root, _, _ = stage
    run_killed("data_prep.precompute_latents", 5, _argv(root / "in", tmp_path / "out", models_dir))
    main(_argv(root / "in", tmp_path / "out", models_dir))
    full, resumed = (json.loads((d / BUCKETS_FILE).read_text()) for d in (root / "out", tmp_path / "out"))
    assert resumed == full
    for name in full["buckets"]:
        a, b = dict(iter_mds(str(root / "out" / name))), dict(iter_mds(str(tmp_path / "out" / name)))
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key]["latents_16"], b[key]["latents_16"])


def test_optout_on_bucketed_latents_keeps_the_buckets(stage, tmp_path):
    from data_prep import optout

    root, inputs, _ = stage
    full = json.loads((root / "out" / BUCKETS_FILE).read_text())
    (tmp_path / "list.txt").write_text("".join(f"url:https://example.org/photo/{i}\n" for i in (0, 1, 4, 7, 10)))
    assert optout.main([str(root / "out"), str(tmp_path / "kept"), "--list", str(tmp_path / "list.txt")]) == 0
    removed = {"p000", "p001", "p007", "p010"}  # p004 is not in the latents: its image was corrupt
    kept = json.loads((tmp_path / "kept" / BUCKETS_FILE).read_text())
    assert kept["resolutions"] == full["resolutions"]
    for name, bucket in full["buckets"].items():
        before = dict(iter_mds(str(root / "out" / name)))
        after = dict(iter_mds(str(tmp_path / "kept" / name)))
        assert sorted(after) == sorted(set(before) - removed)
        assert kept["buckets"].get(name, {"num_samples": 0})["num_samples"] == len(after)
        for key in after:
            np.testing.assert_array_equal(after[key]["latents_32"], before[key]["latents_32"])
    assert sorted(dict(iter_mds(str(tmp_path / "kept")))) == sorted(k for k in dict(iter_mds(str(root / "out")))
                                                                   if k not in removed)
    manifest = json.loads((tmp_path / "kept" / schema.MANIFEST_FILE).read_text())
    assert sorted(e["key"] for e in manifest["counts"]["removed_keys"]) == sorted(removed)


def test_attribution_lists_every_image_of_every_bucket(stage, tmp_path):
    from data_prep.attribution import write_attribution

    root, inputs, _ = stage
    counts = write_attribution([str(root / "out")], str(tmp_path / "attribution"), progress=False)
    assert counts["images"] == N - len(CORRUPT)
    rows = (tmp_path / "attribution" / "ATTRIBUTION.tsv").read_text().splitlines()[1:]
    assert sorted(r.split("\t")[0] for r in rows) == sorted(k for i, k in enumerate(inputs) if i not in CORRUPT)

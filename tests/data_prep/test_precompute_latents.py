"""data_prep.precompute_latents on tiny saved models: stored latents equal what the training model computes."""
import json

import numpy as np
import pytest
import torch
from mds_inputs import run_killed, write_inputs
from streaming import StreamingDataset

from data_prep import schema
from data_prep.precompute_latents import SETTINGS_FILE, main
from data_prep.shards import iter_mds, part_counts, read_columns
from diffusion.datasets.text_image import TextImageDataset
from diffusion.models.builder import build_stable_diffusion
from diffusion.models.stable_diffusion import CAPTION_LATENTS, IMAGE, IMAGE_LATENTS

N, CORRUPT = 11, {4}
RESOLUTIONS = (16, 32)


def _latent_side(vae, res: int) -> int:
    return res // 2 ** (len(vae.config.block_out_channels) - 1)  # the tiny VAE's layout may change


def _argv(in_dir, out_dir, models, *extra):
    return [str(in_dir), str(out_dir), "--vae", str(models), "--text-encoder", str(models), "--tokenizer",
            str(models), "--resolutions", *map(str, RESOLUTIONS), "--batch-size", "3", "--part-size", "4",
            "--workers", "2", "--no-progress", *extra]


@pytest.fixture(scope="module")
def stage(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("latents")
    inputs = write_inputs(root / "in", N, caption_column=schema.BLIP2_CAPTION, corrupt=CORRUPT)
    stats = main(_argv(root / "in", root / "out", models_dir))
    return root, inputs, stats


@pytest.fixture(scope="module")
def sd(models_dir, stage):
    root, _, _ = stage
    m = str(models_dir)
    model = build_stable_diffusion(unet="tiny", vae=m, text_encoder=m, tokenizer=m,
                                   empty_caption_latents=str(root / "out" / schema.EMPTY_CAPTION_LATENTS_FILE))
    return model.eval()


def test_stored_latents_equal_the_training_models_computation(stage, sd):
    root, inputs, stats = stage
    out = dict(iter_mds(str(root / "out")))
    assert sorted(out) == sorted(k for i, k in enumerate(inputs) if i not in CORRUPT)
    assert stats["written_this_run"] == N - len(CORRUPT) and stats["merged_samples"] == N - len(CORRUPT)

    for res in RESOLUTIONS:
        # Pixels exactly as the training dataset makes them on the fly (same transform, same sample).
        ds = TextImageDataset(local=str(root / "in"), tokenizer=sd.tokenizer, resolution=res, batch_size=1,
                              shuffle=False)
        for i in range(ds.num_samples):
            key = StreamingDataset.__getitem__(ds, i)["photo_id"]
            if key not in out:
                continue
            stored = out[key][schema.image_latents_key(res)]
            side = _latent_side(sd.vae, res)
            assert stored.dtype == np.float16 and stored.shape == (4, side, side)
            pixels = ds[i][IMAGE][None]
            posterior = sd.vae.encode(pixels).latent_dist
            expected = (posterior.mean * sd.latent_scale)[0].numpy()
            np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=2e-3, atol=2e-3)
            # scaled exactly once: neither unscaled nor scaled twice
            assert not np.allclose(stored, posterior.mean[0].numpy(), rtol=2e-2, atol=2e-2)
            assert not np.allclose(stored, expected * sd.latent_scale, rtol=2e-2, atol=2e-2)

    for key, sample in out.items():
        caption = inputs[key][schema.BLIP2_CAPTION]
        assert sample[schema.BLIP2_CAPTION] == caption
        expected = sd.encode_prompts([caption])[0].numpy()
        assert sample[schema.CAPTION_LATENTS].dtype == np.float16
        np.testing.assert_allclose(sample[schema.CAPTION_LATENTS].astype(np.float32), expected, rtol=2e-3, atol=2e-3)

    empty = np.load(root / "out" / schema.EMPTY_CAPTION_LATENTS_FILE)
    assert empty.dtype == np.float16 and empty.shape == (sd.tokenizer.model_max_length, 32)
    np.testing.assert_allclose(empty.astype(np.float32), sd.encode_prompts([""])[0].numpy(), rtol=2e-3, atol=2e-3)
    # the model's CFG-dropout latents are the stored file's, exactly
    assert torch.equal(sd.empty_caption_latents, torch.from_numpy(empty).float())


def test_training_reads_the_stored_latents(stage, sd):
    root, _, _ = stage
    ds = TextImageDataset(local=str(root / "out"), precomputed_latents=True, resolution=32, batch_size=2,
                          shuffle=False)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    side = _latent_side(sd.vae, 32)
    assert batch[IMAGE_LATENTS].shape == (2, 4, side, side) and batch[CAPTION_LATENTS].shape == (2, 16, 32)
    stored = StreamingDataset.__getitem__(ds, 0)
    assert torch.equal(batch[IMAGE_LATENTS][0], torch.from_numpy(stored["latents_32"].astype(np.float32)))
    loss = sd.loss(sd(batch), batch)
    assert torch.isfinite(loss)


def test_attribution_and_jpeg_bytes_are_copied_and_bad_images_skipped(stage, sd):
    root, inputs, stats = stage
    out = dict(iter_mds(str(root / "out")))
    for key, sample in out.items():
        for column in schema.ATTRIBUTION_COLUMNS:
            assert sample[column] == inputs[key][column], (key, column)
        image = sample[schema.IMAGE]
        assert image.fp.getvalue() == inputs[key][schema.IMAGE], f"{key}: JPEG was re-encoded"
    assert stats["jpeg_copied"] == N - len(CORRUPT) and stats["jpeg_reencoded"] == 0
    counts = part_counts(str(root / "out"))
    assert counts["skipped"] == {"undecodable_image": len(CORRUPT)}
    assert counts["skipped_per_license"] == {"CC0": 1}  # the corrupt index 4 has licence ["CC-BY", "CC0", ...][4 % 3]

    manifest = json.loads((root / "out" / schema.MANIFEST_FILE).read_text())
    flags = manifest["flags"]
    assert manifest["stage"] == "precompute_latents" and manifest["counts"]["written"] == N - len(CORRUPT)
    assert flags["scaling_factor"] == pytest.approx(0.18215) and flags["resolutions"] == list(RESOLUTIONS)
    assert flags["storage_dtype"] == "float16" and flags["vae"].endswith("models0")
    sides = [_latent_side(sd.vae, r) for r in RESOLUTIONS]
    assert flags["array_shapes"] == {"latents_16": [4, sides[0], sides[0]], "latents_32": [4, sides[1], sides[1]],
                                     "caption_latents": [16, 32]}


def test_kill_then_resume_matches_an_uninterrupted_run(tmp_path, stage, models_dir):
    root, inputs, _ = stage
    out = tmp_path / "out"
    run_killed("data_prep.precompute_latents", 6, _argv(root / "in", out, models_dir))
    assert any(p.name.startswith("_tmp_") for p in out.iterdir()), "the kill should land mid-part"
    published = part_counts(str(out))
    assert 0 < published["written"] < N - len(CORRUPT)

    stats = main(_argv(root / "in", out, models_dir))
    assert stats["written_this_run"] + published["written"] == N - len(CORRUPT)
    keys = [k for k, _ in iter_mds(str(out))]
    assert len(keys) == len(set(keys)) == N - len(CORRUPT)
    reference = dict(iter_mds(str(root / "out")))
    for key, sample in iter_mds(str(out)):
        for column in ("latents_16", "latents_32", schema.CAPTION_LATENTS):
            np.testing.assert_allclose(sample[column], reference[key][column], rtol=2e-3, atol=2e-3)


def test_drop_image_and_fp32(tmp_path, stage, models_dir):
    root, _, _ = stage
    main(_argv(root / "in", tmp_path / "out", models_dir, "--drop-image", "--dtype", "fp32"))
    columns = read_columns(str(tmp_path / "out"))
    assert schema.IMAGE not in columns and "license" in columns and columns["latents_32"] == "ndarray"
    key, sample = next(iter_mds(str(tmp_path / "out")))
    assert sample["latents_32"].dtype == np.float32
    assert np.load(tmp_path / "out" / schema.EMPTY_CAPTION_LATENTS_FILE).dtype == np.float32
    reference = dict(iter_mds(str(root / "out")))[key]
    np.testing.assert_allclose(sample["latents_32"], reference["latents_32"], rtol=2e-3, atol=2e-3)


def test_bad_inputs_fail_with_one_clear_line(tmp_path, stage, models_dir, capsys):
    root, _, _ = stage
    no_caption = tmp_path / "no_caption"
    write_inputs(no_caption, 2)
    with pytest.raises(SystemExit, match="has no column 'blip2_caption'"):
        main(_argv(no_caption, tmp_path / "o1", models_dir))
    with pytest.raises(SystemExit, match=r"missing.*index\.json not found"):
        main(_argv(tmp_path / "missing", tmp_path / "o2", models_dir))
    with pytest.raises(SystemExit, match=r"model\.vae: no folder at .*nowhere"):
        main(_argv(root / "in", tmp_path / "o3", models_dir) + ["--vae", str(tmp_path / "nowhere")])
    # resuming with other settings would mix two kinds of latents in one dataset
    with pytest.raises(SystemExit, match=r"out was made from other inputs \(flags resolutions differ"):
        main(_argv(root / "in", root / "out", models_dir) + ["--resolutions", "16"])
    # ... and so would resuming from a changed input (issue 16 defect 3), before any model is loaded
    write_inputs(tmp_path / "changed", N, seed=7, caption_column=schema.BLIP2_CAPTION)
    with pytest.raises(SystemExit, match=r"out was made from other inputs \(input content differ"):
        main(_argv(tmp_path / "changed", root / "out", models_dir))
    assert SETTINGS_FILE in {p.name for p in (root / "out").iterdir()}


def test_two_ranks_split_the_work_and_rank0_merges(tmp_path, stage, models_dir, monkeypatch):
    """Ranks run one after the other in this process (barrier stubbed): each writes only its own block of
    the input, and rank 0's merge covers both ranks' parts."""
    import data_prep.precompute_latents as stage_module
    import data_prep.stage_loop

    root, _, _ = stage
    monkeypatch.setattr(data_prep.stage_loop, "barrier", lambda: None)
    written = {}
    for rank in (1, 0):
        monkeypatch.setattr(stage_module, "get_rank_world", lambda rank=rank: (rank, 2))
        written[rank] = main(_argv(root / "in", tmp_path / "out", models_dir))["written_this_run"]
    assert written[1] + written[0] == N - len(CORRUPT) and written[1] > 0 and written[0] > 0
    assert {p.name[:5] for p in (tmp_path / "out").iterdir() if p.name.startswith("r")} == {"r0000", "r0001"}
    keys = [k for k, _ in iter_mds(str(tmp_path / "out"))]
    assert len(keys) == len(set(keys)) == N - len(CORRUPT)


def test_resume_with_models_changed_under_the_same_path_is_refused(tmp_path, stage, models_dir):
    import shutil

    from diffusers import AutoencoderKL

    root, _, _ = stage
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    main(_argv(root / "in", tmp_path / "out", models) + ["--resolutions", "16", "--part-size", "100"])
    vae = AutoencoderKL.from_pretrained(models / "vae")
    vae.register_to_config(scaling_factor=0.5)  # another VAE, saved where the first one was
    vae.save_pretrained(models / "vae")
    with pytest.raises(SystemExit, match="records models with other scaling_factor"):
        main(_argv(root / "in", tmp_path / "out", models) + ["--resolutions", "16", "--part-size", "100"])

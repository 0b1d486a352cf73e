"""Training on aspect-bucketed latents: one shape per batch, each sample once, exact resume (two ranks:
test_distributed.py)."""
import hashlib

import pytest
import torch

from diffusion.datasets.text_image import build_dataloader
from tests.diffusion.conftest import BUCKET_IMAGE_SIZES, BUCKET_IMAGES_EACH
from tests.diffusion.test_train import assert_resume_matches_uninterrupted_run

N = BUCKET_IMAGES_EACH * len(BUCKET_IMAGE_SIZES)


def _bucketed(latents, **extra):
    return {"dataset.local": latents, "dataset.aspect_buckets": True, "algorithms.ema": None, **extra}


def _fingerprint(latents: torch.Tensor) -> str:
    return hashlib.sha1(latents.numpy().tobytes()).hexdigest()


def test_an_epoch_has_batches_of_one_bucket_and_sees_every_sample_once(bucketed_latents):
    loader = build_dataloader(batch_size=8, local=bucketed_latents, resolution=32, precomputed_latents=True,
                              aspect_buckets=True, num_workers=0, shuffle=True, shuffle_seed=3)
    shapes, seen = [], []
    for batch in loader:
        shapes.append(tuple(batch["image_latents"].shape))
        seen += [_fingerprint(x) for x in batch["image_latents"]]
    assert set(shapes) == {(8, 4, 6, 10), (8, 4, 10, 6), (8, 4, 8, 8)}  # 24x40, 40x24, 32x32 px buckets
    assert len(seen) == len(set(seen)) == N
    assert shapes != sorted(shapes)  # buckets are interleaved, not one after another


def test_a_bucketed_dataset_is_refused_without_aspect_buckets(bucketed_latents):
    with pytest.raises(ValueError, match="set dataset.aspect_buckets: true"):
        build_dataloader(batch_size=8, local=bucketed_latents, resolution=32, precomputed_latents=True, num_workers=0)
    with pytest.raises(ValueError, match="needs dataset.precomputed_latents"):
        build_dataloader(batch_size=8, local=bucketed_latents, resolution=32, aspect_buckets=True, num_workers=0)


def test_bucketed_run_interrupted_mid_epoch_resumes_to_the_same_weights(demo_dir, bucketed_latents, tmp_path):
    # an epoch here is 6 batches: the resume lands mid-epoch, between buckets
    assert_resume_matches_uninterrupted_run(demo_dir, tmp_path, _bucketed(
        bucketed_latents, **{"trainer.seed": 11, "run_name": "bucket-resume"}), stop=2, total=4)

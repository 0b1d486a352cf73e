"""Aspect-ratio buckets: the bucket list, the choice per image, the crop, and batches of one bucket."""
import math

import pytest
from PIL import Image

from diffusion.datasets.buckets import SDXL_BUCKETS_1024, BucketCrop, bucket_sizes, bucket_streams, choose_bucket


@pytest.mark.parametrize("resolution", [256, 512, 1024])
def test_bucket_sides_are_multiples_of_64_with_area_near_the_resolution(resolution):
    sizes = bucket_sizes(resolution)
    assert (resolution, resolution) in sizes
    assert all(h % 64 == 0 and w % 64 == 0 for h, w in sizes)
    assert all(0.6 < h * w / resolution**2 < 1.3 for h, w in sizes)
    assert sizes == sorted(sizes, key=lambda hw: hw[1] / hw[0])
    assert {(w, h) for h, w in sizes} == set(sizes)  # every wide bucket has its tall twin
    if resolution == 1024:
        assert sizes == sorted(set(SDXL_BUCKETS_1024), key=lambda hw: (hw[1] / hw[0], hw[0] * hw[1]))


def test_each_image_goes_to_the_bucket_of_nearest_aspect_ratio():
    sizes = bucket_sizes(512)
    assert choose_bucket(1000, 1000, sizes) == (512, 512)
    assert choose_bucket(3000, 4000, sizes) == (448, 576)  # 4:3 -> 1.29
    assert choose_bucket(4000, 3000, sizes) == (576, 448)
    assert choose_bucket(100, 10_000, sizes) == (256, 1024)  # beyond the widest: the widest
    for height, width in [(480, 640), (1080, 1920), (720, 400)]:
        chosen = choose_bucket(height, width, sizes)
        distance = abs(math.log(chosen[1] / chosen[0]) - math.log(width / height))
        assert all(abs(math.log(w / h) - math.log(width / height)) >= distance - 1e-9 for h, w in sizes)
    with pytest.raises(ValueError, match="empty"):
        choose_bucket(0, 10, sizes)


@pytest.mark.parametrize("size,shape", [((640, 480), (448, 576)), ((480, 640), (576, 448)), ((300, 300), (512, 512))])
def test_bucket_crop_covers_the_bucket_and_centres_the_crop(size, shape):
    image = Image.new("RGB", size, "red")
    image.paste((0, 0, 255), (0, 0, size[0] // 10, size[1]))  # a blue band on the left edge
    pixels, (top, left) = BucketCrop(512)(image)
    assert tuple(pixels.shape) == (3, *shape)
    assert -1.0 <= pixels.min() and pixels.max() <= 1.0
    assert top >= 0 and left >= 0 and (top == 0 or left == 0)  # cropped along one side only
    assert pixels[2, :, 0].mean() > 0.5  # the left band survives: little of a 4:3 photo is cut away


def test_bucket_streams_leave_out_buckets_smaller_than_a_global_batch(tmp_path, caplog):
    from diffusion.datasets.buckets import write_buckets_file

    write_buckets_file(str(tmp_path), [32], 8, {"bucket_32x32": 40, "bucket_24x40": 9, "bucket_40x24": 16})
    streams = bucket_streams(None, str(tmp_path), 32, global_batch=16)
    assert [s["local"] for s in streams] == [str(tmp_path / "bucket_32x32"), str(tmp_path / "bucket_40x24")]
    assert "bucket_24x40" in caplog.text
    with pytest.raises(ValueError, match="no bucket"):
        bucket_streams(None, str(tmp_path), 32, global_batch=64)
    with pytest.raises(ValueError, match=r"latents for \[32\] only"):
        bucket_streams(None, str(tmp_path), 64, global_batch=8)
    with pytest.raises(ValueError, match="no buckets.json"):
        bucket_streams(None, str(tmp_path / "elsewhere"), 32, global_batch=8)

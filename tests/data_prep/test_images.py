import hashlib
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import ExifTags, Image

from data_prep.images import ImageConfig, ImageSkip, configure_pillow, process_image, target_size


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def noise_jpeg(width: int, height: int) -> bytes:
    return encode(Image.effect_noise((width, height), 60).convert("RGB"), quality=90)


def png_declaring(width: int, height: int, pixel_data: bytes | None = None) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's signature)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64) if pixel_data is None else pixel_data
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_large_jpeg_is_shrunk_on_its_short_side_with_hash_of_original_bytes():
    data = noise_jpeg(1800, 1200)
    out = process_image(data, ImageConfig(max_side=512))
    assert out.image.mode == "RGB"
    assert out.size == (768, 512)
    assert (out.orig_width, out.orig_height) == (1800, 1200)
    assert out.sha256 == hashlib.sha256(data).hexdigest()


def test_small_image_is_never_upscaled():
    out = process_image(noise_jpeg(300, 200), ImageConfig(max_side=1024))
    assert out.size == (300, 200)


def test_draft_decoding_matches_full_decoding_closely():
    # A smooth gradient, so the two downscaling paths must agree to within JPEG noise.
    x = np.linspace(0, 255, 2400, dtype=np.float32)
    y = np.linspace(0, 255, 1600, dtype=np.float32)[:, None]
    arr = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    data = encode(Image.fromarray(arr), quality=95)
    drafted = process_image(data, ImageConfig(max_side=256, draft=True)).image
    full = process_image(data, ImageConfig(max_side=256, draft=False)).image
    assert drafted.size == full.size == (384, 256)
    diff = np.abs(np.asarray(drafted, np.int16) - np.asarray(full, np.int16))
    assert diff.mean() < 2.0


def test_exif_orientation_is_applied_before_sizing():
    # Stored landscape, left half red, right half blue; orientation 6 means "rotate 90 degrees clockwise".
    stored = Image.new("RGB", (400, 200), (255, 0, 0))
    stored.paste((0, 0, 255), (200, 0, 400, 200))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    out = process_image(encode(stored, exif=exif, quality=95), ImageConfig(max_side=100))
    assert (out.orig_width, out.orig_height) == (200, 400)
    assert out.size == (100, 200)
    top, bottom = out.image.getpixel((50, 20)), out.image.getpixel((50, 180))
    assert top[0] > 200 and top[2] < 60  # the stored left (red) side is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_transparent_pixels_become_white_and_gray_becomes_rgb():
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    out = process_image(encode(rgba, "PNG"))
    assert out.image.mode == "RGB" and out.image.getpixel((10, 10)) == (255, 255, 255)
    gray = process_image(encode(Image.new("L", (64, 64), 77), "PNG"))
    assert gray.image.mode == "RGB" and gray.image.getpixel((0, 0)) == (77, 77, 77)


def test_min_side_skips_small_images():
    with pytest.raises(ImageSkip) as info:
        process_image(noise_jpeg(300, 100), ImageConfig(min_side=128))
    assert info.value.reason == "too_small"


def _truncated_png() -> bytes:
    data = encode(Image.effect_noise((300, 300), 60), "PNG")
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: b"", "empty"),
        (lambda: b"<!doctype html><html><body>not found</body></html>", "not_an_image"),
        (lambda: noise_jpeg(400, 300)[:3000], "truncated"),
        (_truncated_png, "truncated"),
        (lambda: png_declaring(100_000, 100_000), "decompression_bomb"),  # Pillow's own error
        (lambda: png_declaring(12_000, 12_000), "decompression_bomb"),  # our header check
        (lambda: png_declaring(64, 64, b"\x78\x9c" + b"\xff" * 200), "corrupt"),  # valid header, bad zlib
    ],
    ids=["empty", "html", "truncated_jpeg", "truncated_png", "bomb_pillow", "bomb_header", "corrupt"],
)
def test_bad_inputs_are_skipped_with_their_reason(make, reason):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageSkip) as info:
            process_image(make())
    assert info.value.reason == reason


def test_configure_pillow_turns_the_bomb_warning_into_a_skip(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    with warnings.catch_warnings():
        configure_pillow(max_pixels=100)
        # 144 pixels: above Pillow's limit (warning) but below twice it (where Pillow itself raises).
        with pytest.raises(ImageSkip) as info:
            process_image(encode(Image.new("RGB", (12, 12)), "PNG"), ImageConfig(max_pixels=10**9))
    assert info.value.reason == "decompression_bomb"


@given(st.integers(1, 5000), st.integers(1, 5000), st.one_of(st.none(), st.integers(1, 2048)))
def test_target_size_caps_short_side_keeps_aspect_never_upscales(width, height, max_side):
    new_w, new_h = target_size(width, height, max_side)
    assert new_w <= width and new_h <= height
    short = min(width, height)
    expected_short = short if max_side is None else min(short, max_side)
    assert min(new_w, new_h) == expected_short
    if (new_w, new_h) != (width, height):
        # Rounding the long side may move the aspect by at most half a pixel of it.
        assert abs(new_w / new_h - width / height) <= 0.5 / min(new_w, new_h) * max(width / height, 1) + 1e-9

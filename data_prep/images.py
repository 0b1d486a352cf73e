"""Turn downloaded bytes into a checked RGB image, or a skip with a reason.

Pillow does the work: decode, EXIF orientation (``ImageOps.exif_transpose``), mode conversion and
resizing. What this module adds is the policy: which failures count as which reason, a pixel limit
checked from the header before any pixel is decoded, never upscaling, and JPEG draft decoding
(libjpeg's DCT scaling) so a 4000px photo headed for 1024px is not fully decoded first.

Reasons: ``empty``, ``not_an_image``, ``decompression_bomb``, ``truncated``, ``corrupt``,
``bad_exif``, ``too_small``, ``unsupported_mode``.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# Pillow's own default limit; it warns above this and raises above twice this.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class ImageConfig:
    max_side: int | None = 1024  # the SHORT side is shrunk to at most this; None keeps full size
    min_side: int = 0  # skip images whose short side is below this (checked on the original)
    max_pixels: int = DEFAULT_MAX_PIXELS  # width*height from the header; above it is a decompression bomb
    draft: bool = True  # let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still leaves 2x headroom
    resample: Image.Resampling = Image.Resampling.LANCZOS


@dataclass
class ProcessedImage:
    image: Image.Image  # RGB, short side <= max_side
    orig_width: int  # size of the source image as displayed, i.e. after EXIF rotation
    orig_height: int
    sha256: str  # of the original bytes, before any decoding

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


class ImageSkip(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def target_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """Size with the short side at most ``max_side``, aspect kept, never larger than the input."""
    short = min(width, height)
    if max_side is None or short <= max_side:
        return width, height
    scale = max_side / short
    if width <= height:
        return max_side, max(1, round(height * scale))
    return max(1, round(width * scale)), max_side


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageSkip("not_an_image", str(exc)) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives as an exception only where warnings are set to error (fetch's CLI does);
        # otherwise our own header check below catches the same images.
        raise ImageSkip("decompression_bomb", str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - plugins raise SyntaxError, struct.error, ValueError, ...
        raise ImageSkip("corrupt", f"{type(exc).__name__}: {exc}") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageSkip("decompression_bomb", f"{width}x{height} > {max_pixels} pixels")
    if width <= 0 or height <= 0:
        raise ImageSkip("corrupt", f"size {width}x{height}")
    return img


def _decode_skip(exc: Exception) -> ImageSkip:
    """Name the reason for an exception raised while Pillow decodes pixels or metadata."""
    message = str(exc)
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageSkip("decompression_bomb", message)
    if isinstance(exc, OSError) and "truncated" in message:
        return ImageSkip("truncated", message)
    if isinstance(exc, ValueError) and "too large" in message:
        # PNG text chunks that inflate past Pillow's limit are a zip bomb of their own.
        return ImageSkip("decompression_bomb", message)
    return ImageSkip("corrupt", f"{type(exc).__name__}: {message}")


def _load(img: Image.Image) -> None:
    try:
        img.load()
    except Exception as exc:  # noqa: BLE001 - plugins raise OSError, SyntaxError, struct.error, ...
        raise _decode_skip(exc) from exc


def configure_pillow(max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Process-wide: make Pillow's own bomb limit ours and its DecompressionBombWarning an error.

    For CLIs that own their process; the library functions also check ``max_pixels`` themselves.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparent pixels laid on white (a plain convert would turn them black)."""
    if img.mode == "RGB":
        return img
    try:
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageSkip("unsupported_mode", f"cannot convert {img.mode} to RGB: {exc}") from exc


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """Baseline JPEG bytes of an RGB image, with no metadata: Pillow writes EXIF (GPS included), XMP and ICC
    only when asked, but carries a source JPEG's comment (COM) marker over unless told not to."""
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, comment=b"")
    return out.getvalue()


def process_image(data: bytes, config: ImageConfig | None = None) -> ProcessedImage:
    """Decode, orient, convert to RGB and shrink ``data``; raises ``ImageSkip`` naming why not."""
    config = config or ImageConfig()
    if not data:
        raise ImageSkip("empty", "zero bytes")
    digest = sha256_hex(data)
    img = _open(data, config.max_pixels)

    # EXIF orientation 5-8 swap the axes; knowing that up front lets us check sizes before decoding.
    # (For PNG this may decode the image, since eXIf can follow the pixel data.)
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except OSError as exc:
        raise _decode_skip(exc) from exc
    except Exception as exc:  # noqa: BLE001 - malformed EXIF blocks raise from several layers
        raise ImageSkip("bad_exif", f"{type(exc).__name__}: {exc}") from exc
    width, height = img.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if min(width, height) < config.min_side:
        raise ImageSkip("too_small", f"{width}x{height}, short side < {config.min_side}")

    if config.draft and config.max_side is not None and img.format == "JPEG":
        # Request twice the final size so the Lanczos pass still has real pixels to average.
        headroom = min(1.0, 2 * config.max_side / min(img.size))
        img.draft(None, (math.ceil(img.size[0] * headroom), math.ceil(img.size[1] * headroom)))
    _load(img)
    try:
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of an already upright image
    except Exception as exc:  # noqa: BLE001
        raise ImageSkip("bad_exif", f"{type(exc).__name__}: {exc}") from exc
    img = to_rgb(img)
    # Sized from the original, since draft decoding may already have shrunk the image part way.
    new_size = target_size(width, height, config.max_side)
    if new_size != img.size:
        img = img.resize(new_size, config.resample)
    return ProcessedImage(image=img, orig_width=width, orig_height=height, sha256=digest)

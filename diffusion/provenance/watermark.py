"""Invisible watermark carrying a 32-bit model id: DWT-DCT-SVD on the luma channel (the `invisible-watermark` package).

Payload: 48 bits = the model id (4 bytes, `model_id`) + a 16-bit check derived from it, so a decoder can tell a
real mark from noise without knowing which model to expect (a random image passes the check with p = 2^-16).

Why not SDXL's exact setting (method `dwtDct`, scales [0, 36, 36], i.e. the U chroma channel): measured on
photos it does not survive JPEG quality 75 (bit accuracy ~0.5, chance; JPEG subsamples and coarsely quantises
chroma). The same package's `dwtDctSvd` method on the luma channel (scales [36, 0, 0]) survives JPEG q75 and a
0.5x resize at PSNR ~43 dB (benchmarks/watermark_robustness.py measures both).

What we write by hand, and why: the package's embedders (a) put the DWT detail bands back in swapped order
(`idwt2((cA, (cV, cH, cD)))` after `dwt2 -> (cA, (cH, cV, cD))`), which transposes the image's fine detail and costs
~10 dB PSNR on textured images, and (b) loop over 4x4 blocks in Python (several times slower than vectorised:
benchmarks/watermark_robustness.py times both; a lot for a 30k-prompt x 8-scale eval). `embed` and `decode` do the
same maths (the SVD of a block's DCT has the block's own singular values, so nudging or reading the largest one
in either domain is the same) on all blocks at once, with the bands in order. The mark stays the package's: anyone
with `invisible-watermark` reads it with `WatermarkDecoder('bits', 48).decode(bgr, 'dwtDctSvd', scales=[36, 0, 0])`
(a test checks this).

Size limits: the package refuses images under 256x256 pixels (65,536), where 48 bits get too few 8x8 blocks to
average over. Smaller images (the 32px CPU demo) are not watermarked; the manifest records why. After a 0.5x resize
the decoder also tries the image upscaled 2x, which puts the blocks back on the grid they were embedded on.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

PAYLOAD_BITS = 48
ID_BYTES = 4
SCALES = [36, 0, 0]  # Y, U, V quantisation steps: luma only
BLOCK = 4  # 4x4 blocks of the level-1 DWT approximation = 8x8 pixels
MIN_PIXELS = 256 * 256  # invisible-watermark's own lower bound (WatermarkEncoder.encode)
METHOD = "invisible-watermark dwtDctSvd, luma, scale 36, 48 bits (32-bit model id + 16-bit check)"
DECODE_ZOOMS = (1, 2)  # as is, then 2x up (undoes a 0.5x resize)


def payload_bits(model_id: str) -> np.ndarray:
    raw = bytes.fromhex(model_id)
    if len(raw) != ID_BYTES:
        raise ValueError(f"model id {model_id!r} is not {ID_BYTES} bytes of hex")
    check = hashlib.sha256(b"commoncanvas-watermark" + raw).digest()[:2]
    return np.unpackbits(np.frombuffer(raw + check, dtype=np.uint8)).astype(np.uint8)


def id_from_bits(bits: np.ndarray) -> str | None:
    """The model id when the 16-bit check holds, else None."""
    raw = np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes()
    model_id = raw[:ID_BYTES].hex()
    return model_id if np.array_equal(payload_bits(model_id), np.asarray(bits, dtype=np.uint8)) else None


def too_small(height: int, width: int) -> str | None:
    """Why an image cannot carry the mark, or None."""
    if height * width < MIN_PIXELS:
        return f"image {width}x{height} is below the watermark's minimum of {MIN_PIXELS:,} pixels (256x256)"
    return None


def _blocks(frame: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    rows, cols = frame.shape[0] // BLOCK, frame.shape[1] // BLOCK
    view = frame[:rows * BLOCK, :cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK).transpose(0, 2, 1, 3)
    return view.reshape(-1, BLOCK, BLOCK), (rows, cols)


def embed(rgb: np.ndarray, model_id: str) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> the same image carrying `model_id`. Raises ValueError when the image is too small."""
    import cv2
    import pywt

    height, width = rgb.shape[:2]
    reason = too_small(height, width)
    if reason:
        raise ValueError(reason)
    bits = payload_bits(model_id)
    yuv = cv2.cvtColor(np.ascontiguousarray(rgb[:, :, ::-1], dtype=np.float32), cv2.COLOR_BGR2YUV)
    h4, w4 = height // 4 * 4, width // 4 * 4
    approx, details = pywt.dwt2(yuv[:h4, :w4, 0], "haar")
    blocks, (rows, cols) = _blocks(approx)
    u, s, vt = np.linalg.svd(blocks)
    wanted = bits[np.arange(len(blocks)) % PAYLOAD_BITS]  # block k (row-major) carries bit k mod 48, as the package
    scale = SCALES[0]
    s[:, 0] = (s[:, 0] // scale + 0.25 + 0.5 * wanted) * scale
    blocks = u @ (s[:, :, None] * vt)
    approx[:rows * BLOCK, :cols * BLOCK] = blocks.reshape(rows, cols, BLOCK, BLOCK).transpose(0, 2, 1, 3).reshape(
        rows * BLOCK, cols * BLOCK)
    yuv[:h4, :w4, 0] = pywt.idwt2((approx, details), "haar")  # detail bands in the order dwt2 gave them
    bgr = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)
    return np.clip(np.round(bgr[:, :, ::-1]), 0, 255).astype(np.uint8)


@dataclasses.dataclass
class Decoded:
    model_id: str | None  # None: no valid mark found
    reads: list  # [(zoom, bits)] for each zoom tried; empty when the image is too small for any
    zoom: int | None  # the zoom the valid mark was found at

    def bit_accuracy(self, model_id: str) -> float:
        """Best share, over the zooms tried, of `model_id`'s 48 payload bits read back (0 when nothing was read)."""
        expected = payload_bits(model_id)
        return max((float(np.mean(bits == expected)) for _, bits in self.reads), default=0.0)


def _read_bits(rgb: np.ndarray) -> np.ndarray:
    """The package's EmbedDwtDctSvd.decode, on all blocks at once: a block votes 1 when its largest singular value
    sits in the upper half of its quantisation step; each bit is the majority of its blocks' votes."""
    import cv2
    import pywt

    yuv = cv2.cvtColor(np.ascontiguousarray(rgb[:, :, ::-1], dtype=np.float32), cv2.COLOR_BGR2YUV)
    h4, w4 = rgb.shape[0] // 4 * 4, rgb.shape[1] // 4 * 4
    approx, _ = pywt.dwt2(yuv[:h4, :w4, 0], "haar")
    blocks, _ = _blocks(approx)
    largest = np.linalg.svd(blocks, compute_uv=False)[:, 0]
    votes = (largest % SCALES[0]) > SCALES[0] * 0.5
    which = np.arange(len(blocks)) % PAYLOAD_BITS
    share = np.bincount(which, weights=votes, minlength=PAYLOAD_BITS) / np.bincount(which, minlength=PAYLOAD_BITS)
    return (share * 255 > 127).astype(np.uint8)  # the package's threshold


def decode(rgb: np.ndarray) -> Decoded:
    """Reads the mark as is and 2x upscaled; the first read whose check holds wins."""
    from PIL import Image

    reads = []
    for zoom in DECODE_ZOOMS:
        height, width = rgb.shape[0] * zoom, rgb.shape[1] * zoom
        if too_small(height, width):
            continue
        image = rgb if zoom == 1 else np.asarray(Image.fromarray(rgb).resize((width, height), Image.BICUBIC))
        bits = _read_bits(image)
        reads.append((zoom, bits))
        model_id = id_from_bits(bits)
        if model_id:
            return Decoded(model_id, reads, zoom)
    return Decoded(None, reads, None)

"""Bit accuracy of the provenance watermark (diffusion.provenance.watermark) after JPEG q75 and a 0.5x resize.

For each image kind and size, the mark of several random model ids is embedded, the image is edited, and the
48 payload bits are read back (diffusion.provenance.watermark.decode: as is, then 2x up). Reports the mean bit
accuracy, the share of images whose model id is recovered (the 16-bit check holds), the PSNR of the mark, and,
side by side in the same run, the embedding and decoding times against the package's own per-block loops
(imwatermark EmbedDwtDctSvd.encode / .decode, same maths; our decode of an unmarked image tries two zooms). Also SDXL's setting (dwtDct on chroma) for comparison.
Writes benchmarks/results/watermark_robustness.{json,md}.

    python -m benchmarks.watermark_robustness [--sizes 256 512 1024] [--ids 8] [--out benchmarks/results]

Image kinds: a photograph shipped with matplotlib (grace_hopper.jpg), the CPU demo's flat-colour shapes drawn at
full size (diffusion.demo.shapes), and uniform noise (a worst case: no natural-image statistics).
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarks.report import write_result
from diffusion.provenance import watermark

EDITS = ("none", "jpeg75", "half", "half+jpeg75")


def photo(size: int) -> np.ndarray:
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    return np.asarray(Image.open(path).convert("RGB").crop((0, 0, 512, 512)).resize((size, size), Image.BICUBIC))


def shapes(size: int, seed: int = 0) -> np.ndarray:
    import random

    from diffusion.demo.shapes import draw

    return np.asarray(draw("red", "circle", "blue", size, random.Random(seed)).convert("RGB"))


def noise(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


KINDS = {"photo": photo, "shapes": shapes, "noise": noise}


def edit(rgb: np.ndarray, name: str) -> np.ndarray:
    def jpeg(a):
        buffer = io.BytesIO()
        Image.fromarray(a).save(buffer, format="JPEG", quality=75)
        return np.asarray(Image.open(buffer).convert("RGB"))

    def half(a):
        return np.asarray(Image.fromarray(a).resize((a.shape[1] // 2, a.shape[0] // 2), Image.BICUBIC))

    return {"none": lambda a: a, "jpeg75": jpeg, "half": half, "half+jpeg75": lambda a: jpeg(half(a))}[name](rgb)


def sdxl_setting_accuracy(rgb: np.ndarray, model_id: str, edit_name: str) -> float:
    """SDXL's pipeline setting through the package's public API: dwtDct, default scales (chroma)."""
    from imwatermark import WatermarkDecoder, WatermarkEncoder

    bits = watermark.payload_bits(model_id)
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", bits.tolist())
    marked = encoder.encode(np.ascontiguousarray(rgb[:, :, ::-1]), "dwtDct")[:, :, ::-1]
    edited = edit(np.clip(marked, 0, 255).astype(np.uint8), edit_name)
    if edit_name.startswith("half"):  # same 2x-up read as ours
        edited = np.asarray(Image.fromarray(edited).resize((rgb.shape[1], rgb.shape[0]), Image.BICUBIC))
    read = WatermarkDecoder("bits", watermark.PAYLOAD_BITS).decode(np.ascontiguousarray(edited[:, :, ::-1]), "dwtDct")
    return float(np.mean(np.asarray(read, dtype=np.uint8) == bits))


def timed_embeddings(rgb: np.ndarray, model_id: str) -> dict:
    from imwatermark.dwtDctSvd import EmbedDwtDctSvd

    start = time.perf_counter()
    watermark.embed(rgb, model_id)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    EmbedDwtDctSvd(watermark.payload_bits(model_id).tolist(), wmLen=watermark.PAYLOAD_BITS,
                   scales=watermark.SCALES).encode(np.ascontiguousarray(rgb[:, :, ::-1], dtype=np.float32))
    package = time.perf_counter() - start
    start = time.perf_counter()
    watermark.decode(rgb)
    decode = time.perf_counter() - start
    start = time.perf_counter()
    EmbedDwtDctSvd([], wmLen=watermark.PAYLOAD_BITS, scales=watermark.SCALES).decode(
        np.ascontiguousarray(rgb[:, :, ::-1], dtype=np.float32))
    package_decode = time.perf_counter() - start
    return {"embed_s": ours, "package_loop_embed_s": package, "decode_s": decode, "package_loop_decode_s": package_decode}


def run(sizes: list[int], n_ids: int, out: str) -> dict:
    rng = np.random.default_rng(0)
    ids = [bytes(rng.integers(0, 256, 4, dtype=np.uint8)).hex() for _ in range(n_ids)]
    rows = []
    jobs = [(kind, size) for kind in KINDS for size in sizes]
    for kind, size in tqdm(jobs, desc="watermark robustness", unit="case"):
        rgb = KINDS[kind](size)
        row = {"kind": kind, "size": size, "psnr_db": [], "timing": timed_embeddings(rgb, ids[0])}
        accuracy = {e: [] for e in EDITS}
        recovered = {e: 0 for e in EDITS}
        sdxl = {e: [] for e in ("jpeg75", "half")}
        for model_id in ids:
            marked = watermark.embed(rgb, model_id)
            row["psnr_db"].append(float(10 * np.log10(255 ** 2 / max(np.mean((marked.astype(float) - rgb) ** 2), 1e-12))))
            for name in EDITS:
                decoded = watermark.decode(edit(marked, name))
                accuracy[name].append(decoded.bit_accuracy(model_id))
                recovered[name] += decoded.model_id == model_id
            for name in sdxl:
                sdxl[name].append(sdxl_setting_accuracy(rgb, model_id, name))
        row["psnr_db"] = float(np.mean(row["psnr_db"]))
        row["bit_accuracy"] = {e: float(np.mean(v)) for e, v in accuracy.items()}
        row["id_recovered"] = {e: recovered[e] / n_ids for e in EDITS}
        row["sdxl_dwtdct_chroma_bit_accuracy"] = {e: float(np.mean(v)) for e, v in sdxl.items()}
        rows.append(row)
    result = {"ids_per_case": n_ids, "payload_bits": watermark.PAYLOAD_BITS, "method": watermark.METHOD,
              "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores (timings: a shared "
                         "machine, indicative only)", "rows": rows}
    write_result(out, "watermark_robustness", result, markdown(result))
    return result


def markdown(result: dict) -> str:
    lines = [
        "# Provenance watermark: bit accuracy after edits",
        "",
        f"{result['method']}. Mean over {result['ids_per_case']} random model ids per case; 'id' = share whose model "
        "id decodes with a valid check. SDXL column: the package's dwtDct on chroma (SDXL's pipeline setting), same "
        f"payload. {result['machine']}.",
        "",
        "| image | size | PSNR dB | clean | JPEG q75 (id) | 0.5x resize (id) | 0.5x + JPEG q75 (id) | SDXL setting: JPEG q75 / 0.5x | embed s (package loop) | decode s (package loop) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        acc, ok, sdxl, t = r["bit_accuracy"], r["id_recovered"], r["sdxl_dwtdct_chroma_bit_accuracy"], r["timing"]
        lines.append(
            f"| {r['kind']} | {r['size']} | {r['psnr_db']:.1f} | {acc['none']:.3f} | {acc['jpeg75']:.3f} ({ok['jpeg75']:.2f}) "
            f"| {acc['half']:.3f} ({ok['half']:.2f}) | {acc['half+jpeg75']:.3f} ({ok['half+jpeg75']:.2f}) "
            f"| {sdxl['jpeg75']:.3f} / {sdxl['half']:.3f} | {t['embed_s']:.3f} ({t['package_loop_embed_s']:.3f}) "
            f"| {t['decode_s']:.3f} ({t['package_loop_decode_s']:.3f}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.watermark_robustness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024], help="square image sides (>= 256)")
    parser.add_argument("--ids", type=int, default=8, help="random model ids per case")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"), help="output folder")
    args = parser.parse_args(argv)
    if min(args.sizes) < 256 or args.ids < 1:
        print("error: --sizes must be at least 256 (the watermark's minimum) and --ids at least 1", file=sys.stderr)
        return 2
    print(markdown(run(args.sizes, args.ids, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

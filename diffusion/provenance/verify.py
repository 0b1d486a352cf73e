"""`python -m diffusion.provenance verify IMAGE... [--model FOLDER_OR_ID] [--trust-anchors CA.pem]`

One line per image:
    IMAGE: ok | FAIL (reason); model NAME id ID, split S, signer CN (trusted | untrusted), signature valid |
    invalid (codes) | no manifest; watermark ID (48/48 bits agree | disagree: n/48) | no watermark | not embedded

An image passes when whatever it carries is consistent: a manifest (if any) validates (an untrusted signer is
reported, not failed, unless --require-trusted), the watermark (if any) decodes to the manifest's model id, at
least one of the two is there, and with --model both name that model. Exit status 0 when every image passes,
1 when any fails, 2 on bad input (a missing file).
"""
from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np
from PIL import Image

from diffusion.provenance import read_provenance_record, watermark
from diffusion.provenance.manifest import TRAINED_ALGORITHMIC_MEDIA, read_manifest


def expected_model_id(model: str | None) -> str | None:
    """--model: 8 hex digits, or an exported folder (its provenance.json)."""
    if model is None:
        return None
    if re.fullmatch(r"[0-9a-fA-F]{8}", model):
        return model.lower()
    if os.path.isdir(model):
        model_id = read_provenance_record(model).get("model_id")
        if not model_id:
            raise FileNotFoundError(f"{model}: no provenance.json with a model_id (export it with diffusion.export)")
        return model_id
    raise FileNotFoundError(f"--model {model}: neither 8 hex digits nor an exported model folder")


def verify_image(path: str, expected: str | None = None, trust_anchors: str | None = None,
                 require_trusted: bool = False) -> tuple[bool, str]:
    """(passed, the line to print)."""
    report = read_manifest(path, trust_anchors)
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except OSError as exc:  # e.g. a PNG chunk whose CRC an edit broke: report the manifest anyway
        return False, f"{path}: FAIL (unreadable image: {str(exc).splitlines()[0]}); manifest {report.state}"
    decoded = watermark.decode(rgb)
    generation = report.generation or {}
    manifest_id = generation.get("model_id")
    problems, parts = [], []

    if report.state == "none":
        parts.append("no manifest")
    else:
        trusted = "trusted" if report.state == "Trusted" else "untrusted"
        parts.append(f"model {generation.get('model_name', '?')} id {manifest_id or '?'}")
        parts.append(f"split {generation.get('training_data', {}).get('split', '?')}")
        parts.append(f"signer {report.signer or '?'} ({trusted})")
        if report.signature_ok:
            parts.append("signature valid")
        else:
            codes = ", ".join(code for code, _ in report.failures if code != "signingCredential.untrusted")
            parts.append(f"signature INVALID ({codes or report.error or report.state})")
            problems.append(f"manifest fails validation: {codes or report.error or report.state}")
        if require_trusted and report.state != "Trusted":
            problems.append("signer not on the trust list")
        if report.source_type != TRAINED_ALGORITHMIC_MEDIA:
            problems.append("manifest does not declare trainedAlgorithmicMedia")
        if not report.generation:
            problems.append("manifest has no org.commoncanvas.generation assertion")

    reference = manifest_id or expected
    embedded = generation.get("watermark", {}).get("embedded")
    if decoded.model_id:
        if reference:
            agree = round(decoded.bit_accuracy(reference) * watermark.PAYLOAD_BITS)
            verdict = "agree" if decoded.model_id == reference else "disagree"
            parts.append(f"watermark {decoded.model_id} ({agree}/{watermark.PAYLOAD_BITS} bits {verdict})")
        else:
            parts.append(f"watermark {decoded.model_id}")
        if manifest_id and decoded.model_id != manifest_id:
            problems.append(f"watermark id {decoded.model_id} is not the manifest's {manifest_id}")
    elif embedded is False:
        parts.append(f"no watermark ({generation['watermark'].get('reason', 'not embedded')})")
    else:
        if reference and decoded.reads:
            agree = round(decoded.bit_accuracy(reference) * watermark.PAYLOAD_BITS)
            parts.append(f"no watermark ({agree}/{watermark.PAYLOAD_BITS} bits agree with {reference})")
        else:
            parts.append("no watermark" + ("" if decoded.reads else f" ({watermark.too_small(*rgb.shape[:2])})"))
        if embedded:
            problems.append("manifest says a watermark was embedded but none decodes")
    if report.state == "none" and not decoded.model_id:
        problems.append("no provenance found")
    if expected:
        found = {i for i in (manifest_id, decoded.model_id) if i}
        if found and found != {expected}:
            problems.append(f"made by model {'/'.join(sorted(found))}, not the expected {expected}")
    status = "ok" if not problems else f"FAIL ({'; '.join(problems)})"
    return not problems, f"{path}: {status}; " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.provenance verify", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="PNG or JPEG files")
    parser.add_argument("--model", help="expected model: an exported folder (its provenance.json) or the 8-hex-digit id")
    parser.add_argument("--trust-anchors", help="PEM file of CA certificates to trust as C2PA signers")
    parser.add_argument("--require-trusted", action="store_true", help="fail images whose signer is not trusted")
    args = parser.parse_args(argv)
    try:
        expected = expected_model_id(args.model)
        for path in args.images + ([args.trust_anchors] if args.trust_anchors else []):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no such file")
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for path in args.images:
        passed, line = verify_image(path, expected, args.trust_anchors, args.require_trusted)
        failed += not passed
        print(line)
    return 1 if failed else 0

"""Provenance on every generated image: an invisible watermark and a signed C2PA manifest.

    marker = Marker.for_model(ProvenanceConfig(sign_cert="chain.pem", sign_key="key.pem"), model, "out/model")
    marker.save(pil_image, "img.png", prompt=..., seed=...)     # watermark + manifest, written atomically
    python -m diffusion.provenance verify IMAGE...              # one line per image

Defaults (what `diffusion.generate`, `eval.generate_images` and the sample-image callback do):
  * the watermark (watermark.py) is always embedded, in images of at least 256x256 pixels; smaller ones are left
    unmarked and the manifest says why;
  * a C2PA manifest (manifest.py) is embedded when signing material is configured (`sign_cert` + `sign_key`);
    without it, images are watermarked only and a one-line notice says so once per process. `c2pa: true`
    makes the material required (a one-line error naming the missing setting); `c2pa: false` never signs;
  * `enabled: false` (`--no-provenance`) turns both off;
  * the prompt and the seed go into the manifest only with `record_prompt` / `record_seed`.
The model id is the first 4 bytes of a SHA-256 over the UNet's weights (`model_id`), the same for a checkpoint
and the pipeline exported from it (the export records it in provenance.json and the model card).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import sys
from typing import Optional

import numpy as np
from PIL import Image

from diffusion.provenance import manifest as c2pa_manifest
from diffusion.provenance import watermark

log = logging.getLogger(__name__)
PROVENANCE_FILE = "provenance.json"  # in an exported pipeline folder (diffusion.export)
YAML_NAMES = ("provenance.sign_cert", "provenance.sign_key", "provenance.signing_alg")
CLI_NAMES = ("--sign-cert", "--sign-key", "--signing-alg")


@dataclasses.dataclass
class ProvenanceConfig:
    """What generated images carry. yaml: a `provenance:` section with these keys; CLIs: the flags named."""

    enabled: bool = True
    """Watermark (and sign, see c2pa) every image written; false (--no-provenance): neither."""
    c2pa: Optional[bool] = None
    """None: sign a C2PA manifest when sign_cert and sign_key are set; true (--c2pa): require them; false: never."""
    sign_cert: Optional[str] = None
    """PEM certificate chain, signer first (--sign-cert)."""
    sign_key: Optional[str] = None
    """PEM private key of the signer certificate (--sign-key)."""
    signing_alg: str = "es256"
    """es256 | es384 | es512 | ps256 | ps384 | ps512 | ed25519 (--signing-alg)."""
    tsa_url: Optional[str] = None
    """RFC 3161 time-stamp authority to countersign with (network); None: no time stamp."""
    record_prompt: bool = False
    """Put the prompt (and negative prompt) into the manifest (--record-prompt)."""
    record_seed: bool = False
    """Put the seed into the manifest (--record-seed)."""


def model_id(unet) -> str:
    """8 hex digits: SHA-256 over the UNet's float32 weights in name order (any device or dtype gives the same
    id for the same values, so a checkpoint and its fp32/fp16 export agree when the values do)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:2 * watermark.ID_BYTES]


def read_provenance_record(folder: str) -> dict:
    from diffusion.inference import read_export_record

    return read_export_record(folder, PROVENANCE_FILE)


_noticed = set()


def _notice_once(message: str) -> None:
    if message not in _noticed:
        _noticed.add(message)
        print(f"notice: {message}", file=sys.stderr)


def prepare_signer(cfg: ProvenanceConfig | None, names: tuple[str, str, str] = YAML_NAMES):
    """The C2PA signer the config asks for, or None (with a one-line notice when signing was merely not set up).
    `names` are how the user spells sign_cert / sign_key / signing_alg where they configure it (yaml or flags)."""
    cfg = cfg or ProvenanceConfig()
    if not cfg.enabled or cfg.c2pa is False:
        return None
    if cfg.c2pa or cfg.sign_cert or cfg.sign_key:
        return c2pa_manifest.load_signer(cfg.sign_cert, cfg.sign_key, cfg.signing_alg, cfg.tsa_url, names)
    _notice_once(f"images get the invisible watermark but no C2PA manifest: set {names[0]} and {names[1]} to sign one")
    return None


class Marker:
    """Watermarks and signs images of one model; `save` writes them. A disabled config gives a plain writer."""

    def __init__(self, cfg: ProvenanceConfig | None, model_id: str, model_name: str, split: str | None = None,
                 license_terms: str | None = None, signer=None):
        """`signer`: from `prepare_signer(cfg)`, made before any slow model load so bad material fails first."""
        self.cfg = cfg or ProvenanceConfig()
        self.model_id, self.model_name = model_id, model_name
        self.split, self.license_terms = split, license_terms
        self.signer = signer if self.cfg.enabled else None

    @classmethod
    def for_model(cls, cfg: ProvenanceConfig | None, model, model_path: str, signer=None) -> "Marker":
        """Model id from the weights; name, split and license terms from an exported folder's records."""
        from diffusion.inference import read_export_record

        cfg = cfg or ProvenanceConfig()
        if not cfg.enabled:
            return cls(cfg, "", "")
        identity = model_id(model.unet)
        folder = model_path if os.path.isdir(model_path) else None
        record = read_provenance_record(folder) if folder else {}
        if record.get("model_id") and record["model_id"] != identity:
            log.warning("%s: weights hash to model id %s, not the %s its provenance.json records", model_path,
                        identity, record["model_id"])
        export = read_export_record(folder) if folder else {}
        name = record.get("model_name") or os.path.basename(os.path.normpath(model_path))
        return cls(cfg, identity, name, record.get("split") or export.get("split"), record.get("license_terms"),
                   signer)

    def generation_assertion(self, watermark_info: dict, prompt=None, negative_prompt=None, seed=None) -> dict:
        data = {
            "generator": c2pa_manifest.GENERATOR,
            "model_name": self.model_name,
            "model_id": self.model_id,
            "training_data": {
                "split": self.split or "not recorded (generated from a training checkpoint, not an export)",
                "license_terms": self.license_terms or "see the model card of the exported model",
            },
            "watermark": watermark_info,
        }
        if self.cfg.record_prompt and prompt is not None:
            data["prompt"] = prompt
            if negative_prompt:
                data["negative_prompt"] = negative_prompt
        if self.cfg.record_seed and seed is not None:
            data["seed"] = int(seed)
        return data

    def watermark(self, rgb: np.ndarray) -> tuple[np.ndarray, dict]:
        reason = watermark.too_small(*rgb.shape[:2])
        if reason:
            return rgb, {"embedded": False, "reason": reason}
        return watermark.embed(rgb, self.model_id), {"embedded": True, "method": watermark.METHOD,
                                                     "payload_model_id": self.model_id}

    def encode(self, image, path: str, prompt=None, negative_prompt=None, seed=None) -> bytes:
        """The file bytes for `path` (PNG or JPEG by extension): watermarked pixels, then the signed manifest."""
        ext = os.path.splitext(path)[1].lower()
        if ext not in c2pa_manifest.FORMATS:
            raise ValueError(f"{path}: provenance can only be written into {', '.join(c2pa_manifest.FORMATS)} files")
        rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
        info = None
        if self.cfg.enabled:
            rgb, info = self.watermark(rgb)
        buffer = io.BytesIO()
        if ext == ".png":
            Image.fromarray(rgb).save(buffer, format="PNG")
        else:
            Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
        data = buffer.getvalue()
        if self.signer is not None:
            mime = c2pa_manifest.FORMATS[ext]
            generation = self.generation_assertion(info, prompt, negative_prompt, seed)
            data = self.signer.sign(data, mime, c2pa_manifest.manifest_definition(
                generation, os.path.basename(path), mime))
        return data

    def save(self, image, path: str, prompt=None, negative_prompt=None, seed=None) -> str:
        """Writes atomically (temporary name, then rename): a killed run never leaves a half-written image."""
        data = self.encode(image, path, prompt, negative_prompt, seed)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return path

    def record(self) -> dict:
        """What generate.json / generation.json note about provenance (so a rerun with other settings is refused)."""
        if not self.cfg.enabled:
            return {"enabled": False}
        return {"enabled": True, "c2pa": self.signer is not None,
                "record_prompt": self.cfg.record_prompt, "record_seed": self.cfg.record_seed}


def export_record(unet, model_name: str, split: str, license_terms: str) -> dict:
    """provenance.json of an exported folder: the watermark id and what generation does by default."""
    return {
        "model_id": model_id(unet),
        "model_name": model_name,
        "split": split,
        "license_terms": license_terms,
        "watermark": {"method": watermark.METHOD, "min_pixels": watermark.MIN_PIXELS},
        "c2pa": {"assertion": c2pa_manifest.ASSERTION, "digital_source_type": c2pa_manifest.TRAINED_ALGORITHMIC_MEDIA,
                 "generator": c2pa_manifest.GENERATOR},
        "defaults": {
            "watermark": "always, on images of at least 256x256 pixels (--no-provenance turns it off)",
            "c2pa": "signed when a certificate chain and key are configured (--sign-cert/--sign-key, or "
                    "provenance.sign_cert/sign_key in an eval yaml); --c2pa makes them required",
            "record_prompt": False,
            "record_seed": False,
        },
        "verify": "python -m diffusion.provenance verify IMAGE... --model <this folder>",
    }


def add_cli_flags(parser) -> None:
    """The provenance flags diffusion.generate and eval.generate_images share."""
    group = parser.add_argument_group("provenance (watermark always; C2PA when signing material is set)")
    group.add_argument("--no-provenance", action="store_true", help="write images without watermark or manifest")
    group.add_argument("--c2pa", action="store_true", help="require a signed C2PA manifest (fail if no key/cert)")
    group.add_argument("--sign-cert", help="PEM certificate chain for the C2PA manifest, signer first")
    group.add_argument("--sign-key", help="PEM private key of the signing certificate")
    group.add_argument("--signing-alg", default="es256", choices=c2pa_manifest.ALGORITHMS)
    group.add_argument("--record-prompt", action="store_true", help="put the prompt into the manifest")
    group.add_argument("--record-seed", action="store_true", help="put the seed into the manifest")



def config_from_args(args) -> ProvenanceConfig:
    return ProvenanceConfig(enabled=not args.no_provenance, c2pa=True if args.c2pa else None, sign_cert=args.sign_cert,
                            sign_key=args.sign_key, signing_alg=args.signing_alg, record_prompt=args.record_prompt,
                            record_seed=args.record_seed)
